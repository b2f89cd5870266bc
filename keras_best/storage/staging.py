"""Local staging folders that a kill does not leak.

Files of a remote run directory are written locally and then uploaded (h5py
and Keras write local files only), and remote files are read through local
copies. Each process stages under one folder of its own,
`<temp dir>/keras_best-staging/<pid>-<token>/`, holding an advisory lock on
its `owner.lock` file for as long as it lives (the kernel drops the lock when
the process dies, even by SIGKILL). A process that is killed leaves its
folder; `remove_stale()`, run by the next start in any run directory (with
the start's removal of temp files), removes every folder whose lock is free.

>>> with scratch() as d:
...     os.path.basename(os.path.dirname(os.path.dirname(d))) == ROOT_NAME
True
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock; stale folders are not found
    fcntl = None

ROOT_NAME = "keras_best-staging"
OWNER = "owner.lock"
UNOWNED_AFTER_S = 600  # a folder still without its lock file this long after it was made is stale

_lock = threading.Lock()
_own: tuple[int, str, int | None] | None = None  # (pid, folder, descriptor of its locked owner.lock)


def root() -> str:
    """The folder that holds every process's staging folder."""
    return os.path.join(tempfile.gettempdir(), ROOT_NAME)


def own_folder() -> str:
    """This process's staging folder (made, and locked, at the first call)."""
    global _own
    with _lock:
        if _own is None or _own[0] != os.getpid():  # a forked child gets its own
            os.makedirs(root(), exist_ok=True)
            folder = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root())
            fd = None
            if fcntl is not None:
                # Locked before it takes its name: a lock file seen by
                # `remove_stale` is always held by a live owner or by none.
                pending = os.path.join(folder, OWNER + ".new")
                fd = os.open(pending, os.O_WRONLY | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.replace(pending, os.path.join(folder, OWNER))
            if _own is None:
                atexit.register(_remove_own)
            _own = (os.getpid(), folder, fd)
        return _own[1]


def mkdtemp() -> str:
    """A new folder under this process's staging folder (the caller removes it)."""
    return tempfile.mkdtemp(prefix="keras_best-", dir=own_folder())


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """A new staging folder, removed afterwards."""
    folder = mkdtemp()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale() -> list[str]:
    """Remove the staging folders of processes that are gone; return their paths."""
    if fcntl is None:
        return []
    try:
        names = os.listdir(root())
    except OSError:
        return []
    mine = _own[1] if _own is not None and _own[0] == os.getpid() else None
    removed = []
    for name in names:
        folder = os.path.join(root(), name)
        if folder != mine and os.path.isdir(folder) and _stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _stale(folder: str) -> bool:
    """Whether the owner of `folder` is gone (its lock is free)."""
    try:
        fd = os.open(os.path.join(folder, OWNER), os.O_RDONLY)
    except FileNotFoundError:  # being made right now, or its maker died before locking it
        try:
            return time.time() - os.stat(folder).st_mtime > UNOWNED_AFTER_S
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its process is alive
    finally:
        os.close(fd)  # also lets go of the lock taken just now
    return True


def _remove_own() -> None:
    """At exit: this process's staging folder goes (its files are gone already)."""
    own = _own
    if own is not None and own[0] == os.getpid():
        shutil.rmtree(own[1], ignore_errors=True)
        if own[2] is not None:
            os.close(own[2])
