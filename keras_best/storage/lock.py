"""One writer per run directory: an advisory lock file held while a run writes.

The file exists only while a run holds it: `release()` removes it before
unlocking, and `acquire()` checks after locking that the file it locked is
still the one in the directory (else it was removed by a releasing holder
in between, and it tries again), so two writers can never both hold it.

The kernel drops the lock when the process dies (even by SIGKILL), so a crash
never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Callable

from keras_best.storage.files import LOCK_NAME, open_own_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None


# Locks this process holds, by real path of the directory.
_HELD: dict[str, DirectoryLock] = {}


class RunDirectoryLocked(RuntimeError):
    """Another tracker is writing the same run directory."""


class DirectoryLock:
    """An exclusive, non-blocking lock on `directory` (local paths only).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> a = DirectoryLock(d); a.acquire()
    >>> b = DirectoryLock(d); b.acquire()  # same process: the newer one takes over
    >>> a.stolen, b.held
    (True, True)
    >>> b.release()

    Another process gets `RunDirectoryLocked` while the lock is held.
    """

    def __init__(self, directory: str, on_takeover: Callable[[], None] | None = None) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = None
        self.stolen = False
        self.on_takeover = on_takeover  # called on this lock's owner before a newer tracker takes it

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None or fcntl is None:
            return
        if self.stolen:
            raise RunDirectoryLocked(
                f"A newer keras-best tracker in this process took over {self.directory!r}; "
                "this one can no longer write there. Use the newer tracker."
            )
        key = os.path.realpath(self.directory)
        other = _HELD.get(key)
        if other is not None and other is not self and other.held:
            # Same process (a re-run notebook cell, a retried script): the newest
            # tracker takes over, once the older one's writes are done; the
            # older one is refused from now on.
            self._fd = other.hand_over()
            _HELD[key] = self
            return
        for _ in range(100):
            fd = open_own_file(self.path, os.O_RDWR)  # its content is rewritten
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirectoryLocked(
                    f"Another keras-best tracker ({holder}) is writing the run directory "
                    f"{self.directory!r}. Two runs must not write one directory: stop the other "
                    "run, or give this one another `filepath` directory."
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # locked a file its releasing holder had just removed: again
        else:  # pragma: no cover - a hundred releases in a row in between
            raise RunDirectoryLocked(f"Could not take the lock of {self.directory!r}: it kept changing.")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._fd = fd
        _HELD[key] = self

    def hand_over(self) -> int:
        """Give the held lock's descriptor to a newer lock of this process on
        the same directory (after `on_takeover`); this one is refused from now on."""
        if self.on_takeover is not None:
            self.on_takeover()
        fd, self._fd, self.stolen = self._fd, None, True
        assert fd is not None, "hand_over() of a lock not held"
        return fd

    def stale(self) -> bool:
        """True when the held lock file is no longer the one in the directory
        (the directory was removed, and maybe created again)."""
        if self._fd is None:
            return False
        return not _same_file(self._fd, self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):  # removed while locked: see the module docstring
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
            if _HELD.get(os.path.realpath(self.directory)) is self:
                del _HELD[os.path.realpath(self.directory)]

    def __del__(self) -> None:  # pragma: no cover - best effort at GC
        try:
            self.release()
        except Exception:  # noqa: BLE001
            pass


def _same_file(fd: int, path: str) -> bool:
    """Whether `path` (not followed if a link) is the file open as `fd`."""
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')}"
    except (OSError, ValueError):
        return "unknown process"
