"""Atomic file operations on local paths and on remote URLs.

Everything that touches the run directory goes through here, so the rules
(temp name in the same directory, flush + fsync, `os.replace`) live in one place.
Each operation goes to `fs.filesystem(path)`: `LocalFS`, or for remote paths
fsspec (`gs://` with gcsfs, `s3://` with s3fs, `memory://`...) or, for schemes
only TensorFlow knows (`ram://`), `tf.io.gfile`. HDF5 files are written by
`keras_best.storage.h5file` (re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import zipfile
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
    history_part_name,
    is_remote,
    is_set_name,
    is_shard_of,
    is_tmp_name,
    join,
    name_problem,
    shard_name,
    state_name,
    tmp_path,
)
from keras_best.keras_adapter import h5_layout
from keras_best.storage import staging
from keras_best.storage.fs import configure, filesystem, fsync_dir, fsync_path, reach  # noqa: F401 - used as files.X
from keras_best.storage.h5file import (  # noqa: F401 - used as files.X
    WRITEBACK_BYTES,
    ErrorProofFile,
    create_new_file,
    fill_h5,
    start_writeback,
    write_h5,
)


class DamagedFileError(ValueError):
    """A file of the run cannot be read (truncated, corrupt); the message names
    it and says what to do."""


def exists(path: str) -> bool:
    return filesystem(path).exists(path)


def isdir(path: str) -> bool:
    return filesystem(path).isdir(path)


def makedirs(path: str) -> None:
    filesystem(path).makedirs(path)


def listdir(path: str) -> list[str]:
    return filesystem(path).listdir(path)


def size(path: str) -> int:
    """Bytes in a file or a directory tree (local links are not followed)."""
    return filesystem(path).size(path)


def members(directory: str, name: str) -> list[str]:
    """The files of the saved `name` in `directory`: `[name]`, or for a sharded
    set's index (`*.weights.json`) its shards on disk, then the index last (so
    that deleting them in this order never leaves shards without their index).

    The one rule of "the files of a name": the journal's deletes, the summary's
    sizes and the loaders use it.
    """
    if not is_set_name(name) or is_tmp_name(name):
        return [name]
    try:
        shards = sorted(n for n in listdir(directory) if is_shard_of(n, name))
    except FileNotFoundError:
        shards = []
    return shards + [name]


def write_durably(path: str, write: Callable[[str], None], straight: str | None = None) -> str:
    """Run `write(local_path)` so that a complete, fsynced file (or directory)
    ends up at `path`. `path` must not be read by anyone until renamed: it is a
    temp name. Remote paths are written locally and copied. With `straight`,
    a remote file (not a directory) is uploaded there instead of to `path`
    (`keras_best.storage.uploads`). Returns where it went.

    The one place a written file is fsynced (once: `write_h5`,
    `write_new_file` and `archive.write_archive` leave it to this function).
    """
    return filesystem(path).write_durably(path, write, straight)


def local_copy(path: str) -> contextlib.AbstractContextManager[str]:
    """A context giving a local path with the content of `path` (for readers
    such as h5py that cannot open `gs://`, `ram://`...): `path` itself when it
    is local, else a temp copy removed afterwards."""
    return filesystem(path).local_copy(path)


def load_weights(model: Any, path: str, hint: str = "", model_only: bool = False) -> None:
    """`model.load_weights(path)` (from a local copy when `path` is remote),
    with a damaged file reported as `DamagedFileError` naming it (and `hint`:
    what to do instead). `model_only`: leave the optimizer's variables as
    they are (`h5_layout.load_weights`)."""
    with reading(path, hint) as local:
        if model_only:
            h5_layout.load_weights(model, local, model_only=True)
        else:
            model.load_weights(local)


@contextlib.contextmanager
def reading(path: str, hint: str = "") -> Iterator[str]:
    """A local path that reads as the saved `path` does (see `_readable`), a
    damaged file reported as `DamagedFileError` naming it (and `hint`)."""
    with _damaged_as_error(path, hint), _readable(path) as local:
        yield local


def _readable(path: str) -> contextlib.AbstractContextManager[str]:
    """A local path that reads as `path` does: a sharded set's view (`_set_view`), or `local_copy`."""
    return _set_view(path) if is_set_name(basename(path)) else local_copy(path)


def check_readable(path: str, hint: str = "") -> None:
    """Read all of the weights file `path` (every dataset of an HDF5 file,
    every member of a `.keras` archive), one piece at a time, keeping none:
    a damaged file raises `DamagedFileError` as `load_weights` would."""
    import h5py

    def read(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            obj[()]

    with reading(path, hint) as local:
        if is_set_name(basename(local)):  # a sharded set: every shard its index names
            folder = os.path.dirname(local)
            for shard in sorted(n for n in os.listdir(folder) if is_shard_of(n, basename(local))):
                with h5py.File(os.path.join(folder, shard), "r") as f:
                    f.visititems(read)
        elif zipfile.is_zipfile(local):
            with zipfile.ZipFile(local) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise OSError(f"the archive's member {bad!r} is corrupt")
        else:
            with h5py.File(local, "r") as f:
                f.visititems(read)


@contextlib.contextmanager
def _damaged_as_error(path: str, hint: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, KeyError, zipfile.BadZipFile) as e:  # h5py: truncated or not HDF5; a missing group
        raise DamagedFileError(
            f"Cannot read {path}: the file is damaged or incomplete ({str(e)[:200]}).{hint}"
        ) from e


@contextlib.contextmanager
def _set_view(path: str) -> Any:
    """A local directory in which the sharded set whose index is `path` reads
    as Keras reads a set: its index and shards under their final names.

    `path` may be the index's temp name while its transaction is pending: the
    set's shards then carry the same temp token (`.kb-tmp-<token>-<shard>`)
    until each is renamed. The shards are the ones the index names, and each
    must be a shard name of the set (no other file is ever read through it).
    """
    import json

    name = basename(path)
    directory = path[: len(path) - len(name)].rstrip("/") or "."
    token = name[: len(TMP_PREFIX) + 13] if is_tmp_name(name) else ""
    final = name[len(token):]
    if not token and not is_remote(path):
        yield path
        return
    index = read_bytes(path)
    try:
        listed = json.loads(index.decode("utf-8"))["weight_map"].values()
        shards = {s for v in listed for s in (v if isinstance(v, list) else [v])}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise OSError(f"not a sharded weights index ({e})") from e
    if not all(isinstance(s, str) and is_shard_of(s, final) for s in shards):
        raise OSError(f"the index names files that are not shards of {final}: {sorted(map(str, shards))}")
    with staging.scratch() as scratch:
        with open(os.path.join(scratch, final), "wb") as f:
            f.write(index)
        for shard in shards:
            src = join(directory, token + shard) if token and exists(join(directory, token + shard)) else (
                join(directory, shard))
            if is_remote(src):
                with open(os.path.join(scratch, shard), "wb") as f:
                    f.write(read_bytes(src))
            else:
                os.symlink(os.path.abspath(src), os.path.join(scratch, shard))
        yield os.path.join(scratch, final)


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


def write_bytes_atomic(path: str, data: bytes, sync_dir: bool = True) -> None:
    """Write `data` to `path` atomically: temp file, fsync, rename (and fsync
    the directory, unless `sync_dir=False`: see `replace`). On an object store,
    one PUT: it replaces the object whole or not at all."""
    fs = filesystem(path)
    if fs.object_store:
        fs.put(path, data)
        return
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
    return filesystem(path).read_bytes(path)


def replace(src: str, dst: str, sync_dir: bool = True) -> None:
    """Atomically move `src` over `dst` (a file, or a directory over a directory),
    then fsync the directory so that the move survives a crash. With
    `sync_dir=False` the move may be lost in a crash (either name then holds a
    complete file): for a rename that a durable journal would redo."""
    filesystem(src).replace(src, dst, sync_dir)


def remove(path: str, missing_ok: bool = False) -> None:
    """Delete a file or a directory tree."""
    filesystem(path).remove(path, missing_ok)


def remove_file(path: str) -> None:
    """Delete `path`, known to be a file or nothing (on an object store: one request)."""
    filesystem(path).remove_file(path)


def remove_leftovers(directory: str, doomed: frozenset[str] = frozenset()) -> None:
    """Remove what a killed writer of `directory` left outside it: unfinished
    uploads of its temp names (and of `doomed` names), local staging folders
    (`fs.FileSystem.remove_leftovers`)."""
    filesystem(directory).remove_leftovers(directory, doomed)


def prepare_directory(directory: str, storage_options: Any = None, create: bool = True) -> None:
    """Use `storage_options` for the run directory (`fs.configure`), reach its
    store once (a remote one: `fs.reach`, the bucket checked, never created),
    and unless `create=False` create it and check that it is writable; or
    raise `ValueError` saying what to fix."""
    configure(directory, storage_options)
    if is_remote(directory) or not create:
        try:
            return reach(directory, create)
        except OSError as e:  # tf.io.gfile's (fsspec's come as ValueError, with the fix)
            raise ValueError(f"Cannot reach the run directory {directory!r}: {e.strerror or e}.") from e
    try:
        makedirs(directory)
    except OSError as e:
        raise ValueError(
            f"Cannot create the run directory {directory!r}: {e.strerror or e}. "
            "Choose a writable location for `filepath`."
        ) from e
    try:
        filesystem(directory).probe_writable(directory)
    except OSError as e:
        raise ValueError(
            f"The run directory {directory!r} is not writable: {e.strerror or e}. "
            "Choose a writable location for `filepath`."
        ) from e
