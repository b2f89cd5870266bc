"""Atomic file operations on local paths and on remote URLs.

Everything that touches the run directory goes through here, so the rules
(temp name in the same directory, flush + fsync, `os.replace`) live in one place.
Remote paths go through `remote.filesystem`: fsspec (`gs://` with gcsfs,
`s3://` with s3fs, `memory://`...) or, for schemes only TensorFlow knows
(`ram://`), `tf.io.gfile`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
import stat
import sys
import tempfile
from typing import Any, Callable, Iterator

from keras_best.core.names import (  # noqa: F401 - the run directory's names, used as files.X
    COMPLETE_MARKER,
    HISTORY_NAME,
    LAST_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    RESERVED_NAMES,
    STATE_PREFIX,
    TMP_PREFIX,
    basename,
    fspath,
    is_remote,
    is_tmp_name,
    join,
    name_problem,
    state_name,
    tmp_path,
)
from keras_best.storage import remote


class DamagedFileError(ValueError):
    """A file of the run cannot be read (truncated, corrupt); the message names
    it and says what to do."""


@contextlib.contextmanager
def _remote(path: str) -> Iterator[remote.RemoteFS]:
    """The file system of the remote `path`, its errors turned into Python ones."""
    fs = remote.filesystem(path)
    with fs.errors(path):
        yield fs


def exists(path: str) -> bool:
    if is_remote(path):
        with _remote(path) as fs:
            return fs.exists(path)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_remote(path):
        with _remote(path) as fs:
            return fs.isdir(path)
    return os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        with _remote(path) as fs:
            fs.makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    if is_remote(path):
        with _remote(path) as fs:
            return fs.listdir(path)
    return os.listdir(path)


def size(path: str) -> int:
    """Bytes in a file or a directory tree (local links are not followed)."""
    if is_remote(path):
        with _remote(path) as fs:
            if not fs.isdir(path):
                return fs.size(path)
            return sum(fs.size(_under(path, rel, n)) for rel, names in fs.walk(path) for n in names)
    if os.path.isdir(path) and not os.path.islink(path):
        return sum(os.lstat(os.path.join(root, f)).st_size for root, _, names in os.walk(path) for f in names)
    return os.lstat(path).st_size


def _under(top: str, rel: str, name: str = "") -> str:
    """`top`/`rel`/`name` on a remote path, without empty parts."""
    return "/".join(p for p in (top.rstrip("/"), rel, name) if p)


def fsync_path(path: str) -> None:
    """fsync a local file, or every file of a local directory tree."""
    if os.path.isdir(path):
        for root, _, names in os.walk(path):
            for n in names:
                _fsync_file(os.path.join(root, n))
            fsync_dir(root)
    else:
        _fsync_file(path)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durably(path: str, write: Callable[[str], None]) -> None:
    """Run `write(local_path)` so that a complete, fsynced file (or directory)
    ends up at `path`. `path` must not be read by anyone until renamed: it is a
    temp name. Remote paths are written locally and copied.

    The one place a written file is fsynced (once: `write_h5`,
    `write_new_file` and `archive.write_archive` leave it to this function).
    """
    if not is_remote(path):
        try:
            write(path)
            fsync_path(path)
        except BaseException:
            remove(path, missing_ok=True)  # never leave a partial file behind
            raise
        return
    local_dir = tempfile.mkdtemp(prefix="keras_best-")
    try:
        local = os.path.join(local_dir, basename(path))
        write(local)
        with _remote(path) as fs:
            _upload(fs, local, path)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def _upload(fs: remote.RemoteFS, local: str, path: str) -> None:
    if not os.path.isdir(local):
        fs.upload(local, path)
        return
    for root, _, names in os.walk(local):
        rel = os.path.relpath(root, local)
        target = _under(path, "" if rel == "." else rel.replace(os.sep, "/"))
        fs.makedirs(target)
        for n in names:
            fs.upload(os.path.join(root, n), f"{target}/{n}")
    # Written last: the directory is complete (see `_replace_remote_dir`).
    fs.write(_under(path, COMPLETE_MARKER), remote.MARKER_DATA)


def _replace_remote_dir(fs: remote.RemoteFS, src: str, dst: str) -> None:
    """Move the remote directory `src` over `dst`, safe to repeat after a crash.

    Remote directories cannot be renamed (object stores have no directories;
    `tf.io.gfile.rename` drops a `ram://` directory's content), so the files
    are copied. `src` holds `COMPLETE_MARKER` until the copy is complete: a
    crash while copying leaves it, and the journal's roll-forward copies
    again; a crash after leaves `src` without it, and only `src` is removed.
    """
    marker = _under(src, COMPLETE_MARKER)
    if fs.exists(marker):
        fs.rmtree(dst)
        for rel, names in list(fs.walk(src)):
            fs.makedirs(_under(dst, rel))
            for n in names:
                if rel or n != COMPLETE_MARKER:
                    fs.copy(_under(src, rel, n), _under(dst, rel, n))
        fs.remove(marker)
    fs.rmtree(src)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """Yield a local path with the content of `path` (for readers such as h5py
    that cannot open `gs://`, `ram://`...): `path` itself when it is local, else
    a temp copy removed afterwards."""
    if not is_remote(path):
        yield path
        return
    local_dir = tempfile.mkdtemp(prefix="keras_best-")
    try:
        local = os.path.join(local_dir, basename(path))
        with _remote(path) as fs:
            fs.download(path, local)
        yield local
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def load_weights(model: Any, path: str, hint: str = "") -> None:
    """`model.load_weights(path)` (from a local copy when `path` is remote),
    with a damaged file reported as `DamagedFileError` naming it (and `hint`:
    what to do instead)."""
    try:
        with local_copy(path) as local:
            model.load_weights(local)
    except FileNotFoundError:
        raise
    except (OSError, KeyError) as e:  # h5py: truncated or not HDF5; a missing group
        raise DamagedFileError(
            f"Cannot read {path}: the file is damaged or incomplete ({str(e)[:200]}).{hint}"
        ) from e


def open_own_file(path: str, flags: int) -> int:
    """`os.open(path, flags | O_CREAT)` for a file keras-best rewrites in place
    (the lock, the history): never through a symlink, and never a file that is
    not a plain file of its own (a hard link would change the file elsewhere)."""
    try:
        fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
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


def write_new_file(path: str, data: bytes | memoryview) -> None:
    """Create the local file `path` (never through a symlink, never over an
    existing file) holding `data` (`write_durably` fsyncs it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_h5(path: str, fill: Callable[[object], None]) -> None:
    """Write an HDF5 file at the local `path` (a new file, never through a
    symlink): `fill(h5py_file)` builds it (`write_durably` fsyncs it).

    h5py writes through `ErrorProofFile`, so a write error (full disk, quota,
    removed directory) never reaches HDF5: after a failed write, HDF5's state is
    corrupt ("Can't decrement id ref count", a SIGSEGV at a later close). The
    first error is kept, HDF5 is told every write succeeded, and the error is
    raised once the file is closed. Writes go straight to the file (no copy in
    memory).
    """
    fd = create_new_file(path)
    try:
        fill_h5(ErrorProofFile(fd), fill)
    finally:
        os.close(fd)


def create_new_file(path: str) -> int:
    """Open a new local file for reading and writing (never over an existing
    file, never through a symlink); the caller closes the descriptor."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)


def fill_h5(target: ErrorProofFile, fill: Callable[[object], None]) -> None:
    """Build an HDF5 file through `target` with `fill(h5py_file)`; raise the
    first write error once HDF5 has closed it."""
    import h5py

    with h5py.File(target, "w") as f:
        fill(f)
    if target.error is not None:
        raise target.error


# Large writes go to the file in pieces of WRITEBACK_BYTES, each handed to the
# disk at once (`start_writeback`): the disk writes one piece while the next is
# copied into the page cache, and the final fsync waits only for the last
# ones, where write-then-fsync would copy everything first and then wait for
# all of it. Smaller writes (HDF5's headers) are left to the fsync.
WRITEBACK_BYTES = 8 << 20
WRITEBACK_MIN_BYTES = 1 << 20
_SYNC_FILE_RANGE: list[Callable[[int, int, int, int], int] | None] = []


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing `nbytes` of `fd` at `offset` to disk without waiting for
    it (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`; elsewhere nothing).
    Durability still comes from the fsync that follows; errors are its to report."""
    if not _SYNC_FILE_RANGE:
        function = None
        if sys.platform.startswith("linux"):
            try:
                function = ctypes.CDLL(None, use_errno=True).sync_file_range  # releases the GIL
                function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                function.restype = ctypes.c_int
            except (OSError, AttributeError):
                function = None
        _SYNC_FILE_RANGE.append(function)
    function = _SYNC_FILE_RANGE[0]
    if function is not None:
        function(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


class ErrorProofFile(io.RawIOBase):
    """A file-like object over `fd` for h5py that never reports a write error
    to HDF5: the first one is kept in `error`, and later writes are dropped.

    Its position 0 is byte `base` of the file (an HDF5 file written inside
    another, e.g. a zip member). With `skip_writes` set, `write` only moves
    the position: for a writer (zipfile) handed bytes that are in place already.
    """

    def __init__(self, fd: int, base: int = 0) -> None:
        super().__init__()
        self.fd, self.base, self.pos, self.end = fd, base, 0, 0
        self.error: OSError | None = None
        self.skip_writes = False

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        size, offset = len(view), self.base + self.pos
        if self.error is None and not self.skip_writes:
            try:
                while view:
                    written = os.pwrite(self.fd, view[:WRITEBACK_BYTES], offset)
                    if written >= WRITEBACK_MIN_BYTES:
                        start_writeback(self.fd, offset, written)
                    view, offset = view[written:], offset + written
            except OSError as e:
                self.error = e
        self.pos += size
        self.end = max(self.end, self.pos)
        return size

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        size = max(0, min(len(buffer), self.end - self.pos))
        data = os.pread(self.fd, size, self.base + self.pos) if self.error is None else b""
        buffer[:size] = data + bytes(size - len(data))
        self.pos += size
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.end + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, self.base + size)
            except OSError as e:
                self.error = e
        self.end = size
        return size


def write_bytes_atomic(path: str, data: bytes, sync_dir: bool = True) -> None:
    """Write `data` to `path` atomically: temp file, fsync, rename (and fsync
    the directory, unless `sync_dir=False`: see `replace`)."""
    tmp = tmp_path(path)

    def _write(local: str) -> None:
        write_new_file(local, data)

    try:
        write_durably(tmp, _write)
        replace(tmp, path, sync_dir)
    except BaseException:
        remove(tmp, missing_ok=True)
        raise


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        with _remote(path) as fs:
            return fs.read(path)
    with open(path, "rb") as f:
        return f.read()


def replace(src: str, dst: str, sync_dir: bool = True) -> None:
    """Atomically move `src` over `dst` (a file, or a directory over a directory),
    then fsync the directory so that the move survives a crash. With
    `sync_dir=False` the move may be lost in a crash (either name then holds a
    complete file): for a rename that a durable journal would redo."""
    if is_remote(src):
        with _remote(src) as fs:
            if fs.isdir(src):
                _replace_remote_dir(fs, src.rstrip("/"), dst.rstrip("/"))
            else:
                fs.rename(src, dst)
        return
    if os.path.isdir(src) and os.path.isdir(dst):
        # os.replace cannot replace a non-empty directory: swap via a side name.
        old = tmp_path(dst)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    if sync_dir:
        fsync_dir(os.path.dirname(dst))


def remove(path: str, missing_ok: bool = False) -> None:
    """Delete a file or a directory tree."""
    if is_remote(path):
        with _remote(path) as fs:
            if not fs.exists(path):
                if missing_ok:
                    return
                raise FileNotFoundError(path)
            if fs.isdir(path):
                fs.rmtree(path)
            else:
                fs.remove(path)
        return
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def prepare_directory(directory: str) -> None:
    """Create the run directory and check that it is writable, or raise `ValueError`."""
    try:
        makedirs(directory)
    except OSError as e:
        raise ValueError(
            f"Cannot create the run directory {directory!r}: {e.strerror or e}. "
            "Choose a writable location for `filepath`."
        ) from e
    if is_remote(directory):
        return
    probe = join(directory, tmp_path("probe"))
    try:
        with open(probe, "wb"):
            pass
        remove(probe)
    except OSError as e:
        raise ValueError(
            f"The run directory {directory!r} is not writable: {e.strerror or e}. "
            "Choose a writable location for `filepath`."
        ) from e
