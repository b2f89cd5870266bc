"""Atomic file operations on local paths and on `tf.io.gfile` remote paths.

Everything that touches the run directory goes through here, so the rules
(temp name in the same directory, flush + fsync, `os.replace`) live in one place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import re
import shutil
import stat
import sys
import tempfile
import uuid
from typing import Callable, Iterator

TMP_PREFIX = ".kb-tmp-"
COMPLETE_MARKER = ".kb-complete"
_TMP_RE = re.compile(r"^\.kb-tmp-[0-9a-f]{12}-")

# The names a run directory's own bookkeeping uses: never a saved model's name.
MANIFEST_NAME = "keras_best.json"
HISTORY_NAME = "keras_best_history.jsonl"
LOCK_NAME = ".keras_best.lock"
LAST_NAME = "keras_best_last.h5"
RESERVED_NAMES = (MANIFEST_NAME, HISTORY_NAME, LOCK_NAME, LAST_NAME)


class DamagedFileError(ValueError):
    """A file of the run cannot be read (truncated, corrupt); the message names
    it and says what to do."""


def is_remote(path: str) -> bool:
    """True for `gs://`, `s3://`, `ram://`... (anything with a scheme but `file://`)."""
    return "://" in str(path) and not str(path).startswith("file://")


def _gfile():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ValueError(
            "Remote paths (gs://, s3://, ram://...) are reached through TensorFlow's tf.io.gfile, and "
            "TensorFlow is not installed. Install it (pip install 'keras-best[tensorflow]'), or use a "
            "local path."
        ) from e
    return tf.io.gfile


def tf_errors():
    import tensorflow as tf

    return tf.errors


def join(directory: str, name: str) -> str:
    if is_remote(directory):
        return directory.rstrip("/") + "/" + name
    return os.path.join(directory, name)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def exists(path: str) -> bool:
    if is_remote(path):
        with _remote_errors(path):
            return _gfile().exists(path)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        with _remote_errors(path):
            _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def _remote_errors(path: str) -> Iterator[None]:
    """TensorFlow's errors for a remote path, as Python ones that say what to do:
    `ValueError` for a scheme TensorFlow cannot reach, `OSError` for the rest."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.UnimplementedError as e:
        scheme = str(path).split("://", 1)[0]
        raise ValueError(
            f"TensorFlow has no file system for '{scheme}://' paths ({e.message}). "
            "gs:// and ram:// are built in; s3:// and hdfs:// need "
            "`pip install tensorflow-io`, imported before use (`import tensorflow_io`). "
            f"Received: {path}"
        ) from None
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(f"{e.message or 'not found'} ({path})") from e
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(f"{e.message} ({path})") from e
    except tf.errors.OpError as e:
        raise OSError(f"{e.message} ({path})") from e


def listdir(path: str) -> list[str]:
    if is_remote(path):
        with _remote_errors(path):
            return [n.rstrip("/") for n in _gfile().listdir(path)]
    return os.listdir(path)


def tmp_path(final_path: str) -> str:
    """A fresh temp name beside `final_path` that keeps its suffix.

    `best.weights.h5` -> `.kb-tmp-1a2b3c4d5e6f-best.weights.h5`: the same
    directory (so `os.replace` is atomic) and the same ending (Keras checks it).
    """
    directory, name = final_path[: len(final_path) - len(basename(final_path))], basename(final_path)
    return f"{directory}{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"


def is_tmp_name(name: str) -> bool:
    return bool(_TMP_RE.match(name))


def name_problem(name: object, reserved: tuple[str, ...] = RESERVED_NAMES) -> str | None:
    """Why `name` is not a plain file name inside a run directory (`None` if it is).

    A plain name has no directory part (no separator, not `.` or `..`, not
    absolute, not empty) and is neither a temp name nor one of `reserved`.

    >>> name_problem("best.weights.h5") is None, name_problem("../x"), name_problem("keras_best.json")
    (True, 'it has a directory part', 'it is the name of keras_best.json')
    """
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it names a directory"
    if "\0" in name or any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep)) or os.path.isabs(name):
        return "it has a directory part"
    if name.startswith(TMP_PREFIX):
        return "it is a temp file name"
    if name in reserved:
        return f"it is the name of {name}"
    return None


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
        with _remote_errors(path):
            _copy_to_remote(local, path)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def _copy_to_remote(local: str, remote: str) -> None:
    gfile = _gfile()
    if os.path.isdir(local):
        for root, _, names in os.walk(local):
            rel = os.path.relpath(root, local)
            target = remote if rel == "." else remote.rstrip("/") + "/" + rel.replace(os.sep, "/")
            gfile.makedirs(target)
            for n in names:
                gfile.copy(os.path.join(root, n), target + "/" + n, overwrite=True)
        # Written last: the directory is complete (see `_replace_remote_dir`).
        with gfile.GFile(remote.rstrip("/") + "/" + COMPLETE_MARKER, "wb") as f:
            f.write(b"1")  # not empty: ram:// does not keep empty files
    else:
        gfile.copy(local, remote, overwrite=True)


def _replace_remote_dir(src: str, dst: str) -> None:
    """Move the remote directory `src` over `dst`, safe to repeat after a crash.

    `tf.io.gfile.rename` cannot be trusted with directories (on `ram://` it
    drops their content; object stores have no directory rename), so the
    files are copied. `src` holds `COMPLETE_MARKER` until the copy is
    complete: a crash while copying leaves it, and the journal's roll-forward
    copies again; a crash after leaves `src` without it, and only `src` is
    removed.
    """
    gfile = _gfile()
    if gfile.exists(src + "/" + COMPLETE_MARKER):
        _rmtree_remote(dst)
        for root, _, names in gfile.walk(src):
            target = dst + root[len(src):]
            gfile.makedirs(target)
            for n in names:
                if not (root == src and n == COMPLETE_MARKER):
                    gfile.copy(root + "/" + n, target + "/" + n, overwrite=True)
        gfile.remove(src + "/" + COMPLETE_MARKER)
    _rmtree_remote(src)


def _rmtree_remote(path: str) -> None:
    """`tf.io.gfile.rmtree`, where nothing there is not an error.

    On `ram://`, `exists`/`listdir` also match names that merely start with
    `path` (`export-1` sees `export-10`'s content) and `rmtree` fails there
    with NotFound: then finish by hand. Every name deleted here is `path` +
    "/" + a child, so no other entry is touched.
    """
    gfile, not_found = _gfile(), tf_errors().NotFoundError
    try:
        gfile.rmtree(path)
        return
    except not_found:
        pass
    try:
        tree = list(gfile.walk(path, topdown=False))
    except not_found:
        tree = []
    for root, dirs, names in tree:
        for name in names + dirs:
            try:
                gfile.remove(root + "/" + name)
            except not_found:
                pass
    try:
        gfile.remove(path)
    except not_found:
        pass


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
        with _remote_errors(path):
            _gfile().copy(path, local, overwrite=True)
        yield local
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def load_weights(model: object, path: str, hint: str = "") -> None:
    """`model.load_weights(path)`, with a damaged file reported as
    `DamagedFileError` naming it (and `hint`: what to do instead)."""
    try:
        model.load_weights(path)
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
        with _remote_errors(path), _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def replace(src: str, dst: str, sync_dir: bool = True) -> None:
    """Atomically move `src` over `dst` (a file, or a directory over a directory),
    then fsync the directory so that the move survives a crash. With
    `sync_dir=False` the move may be lost in a crash (either name then holds a
    complete file): for a rename that a durable journal would redo."""
    if is_remote(src):
        gfile = _gfile()
        with _remote_errors(src):
            if gfile.isdir(src):
                _replace_remote_dir(src.rstrip("/"), dst.rstrip("/"))
            else:
                gfile.rename(src, dst, overwrite=True)
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
        gfile = _gfile()
        with _remote_errors(path):
            if not gfile.exists(path):
                if missing_ok:
                    return
                raise FileNotFoundError(path)
            if gfile.isdir(path):
                _rmtree_remote(path)
            else:
                gfile.remove(path)
        return
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
