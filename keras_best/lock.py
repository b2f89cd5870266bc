"""One writer per run directory: an advisory lock file held while a run writes.

The kernel drops the lock when the process dies (even by SIGKILL), so a crash
never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from typing import Callable

from keras_best.files import LOCK_NAME

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
        if other is not None and other is not self and other._fd is not None:
            # Same process (a re-run notebook cell, a retried script): the newest
            # tracker takes over, once the older one's writes are done; the
            # older one is refused from now on.
            if other.on_takeover is not None:
                other.on_takeover()
            self._fd, other._fd, other.stolen = other._fd, None, True
            _HELD[key] = self
            return
        fd = _open_lock_file(self.path)
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
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._fd = fd
        _HELD[key] = self

    def stale(self) -> bool:
        """True when the held lock file is no longer the one in the directory
        (the directory was removed, and maybe created again)."""
        if self._fd is None:
            return False
        try:
            return os.fstat(self._fd).st_ino != os.stat(self.path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
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


def _open_lock_file(path: str) -> int:
    """Open (or create) the lock file, never through a symlink and never a file
    linked from elsewhere: its content is rewritten."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise OSError(e.errno, f"{path} is a symbolic link; keras-best does not follow it (it would "
                                   "overwrite the file it points to). Remove it, then start again.") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise OSError(errno.EPERM, f"{path} is not a plain file of its own (it has {info.st_nlink} links); "
                                   "keras-best does not write through it. Remove it, then start again.")
    return fd


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')}"
    except (OSError, ValueError):
        return "unknown process"
