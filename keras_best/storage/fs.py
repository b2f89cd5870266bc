"""One file-system interface for the run directory: `filesystem(path)` gives
a `LocalFS` for local paths and a `RemoteFiles` (over `remote.filesystem`:
fsspec or `tf.io.gfile`) for URLs. `keras_best.storage.files` calls these; the
rules (temp name in the same directory, flush + fsync, atomic rename) hold on both.

>>> type(filesystem("/tmp/run")).__name__, type(filesystem("memory://b/run")).__name__
('LocalFS', 'RemoteFiles')
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Callable, Iterator, Mapping

from keras_best.core.names import COMPLETE_MARKER, basename, is_leftover, is_remote, tmp_path
from keras_best.storage import remote, staging


class FileSystem:
    """What the run directory needs of a file system. Paths are full paths or URLs."""

    object_store = False  # a PUT replaces an object whole; no positional writes, no cheap rename

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def isdir(self, path: str) -> bool:
        raise NotImplementedError

    def makedirs(self, path: str) -> None:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def size(self, path: str) -> int:
        """Bytes in a file or a directory tree (local links are not followed)."""
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def write_durably(self, path: str, write: Callable[[str], None], straight: str | None = None) -> str:
        """See `files.write_durably`."""
        raise NotImplementedError

    def local_copy(self, path: str) -> contextlib.AbstractContextManager[str]:
        """See `files.local_copy`."""
        raise NotImplementedError

    def replace(self, src: str, dst: str, sync_dir: bool = True) -> None:
        """See `files.replace`."""
        raise NotImplementedError

    def remove(self, path: str, missing_ok: bool = False) -> None:
        """Delete a file or a directory tree."""
        raise NotImplementedError

    def remove_file(self, path: str) -> None:
        """Delete `path`, known to be a file or nothing (nothing there is no error)."""
        self.remove(path, missing_ok=True)

    def probe_writable(self, directory: str) -> None:
        """Raise `OSError` when files cannot be created in `directory` (a remote
        one is not probed: its first write tells)."""

    def remove_leftovers(self, directory: str, doomed: frozenset[str] = frozenset()) -> None:
        """Remove what a killed writer of `directory` leaves outside its files
        (temp files are `journal.remove_tmp_files`'s): the local staging
        folders of processes that are gone (`staging.remove_stale`), and for a
        remote directory the unfinished uploads of its temp names and of the
        names in `doomed` (uploaded straight to names no record names)."""
        staging.remove_stale()


class LocalFS(FileSystem):
    """Local paths: `os`, with fsync of files and directories."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def size(self, path: str) -> int:
        if os.path.isdir(path) and not os.path.islink(path):
            return sum(os.lstat(os.path.join(root, f)).st_size for root, _, names in os.walk(path) for f in names)
        return os.lstat(path).st_size

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_durably(self, path: str, write: Callable[[str], None], straight: str | None = None) -> str:
        try:
            write(path)
            fsync_path(path)
        except BaseException:
            self.remove(path, missing_ok=True)  # never leave a partial file behind
            raise
        return path

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        yield path

    def replace(self, src: str, dst: str, sync_dir: bool = True) -> None:
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

    def remove(self, path: str, missing_ok: bool = False) -> None:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def probe_writable(self, directory: str) -> None:
        probe = os.path.join(directory, tmp_path("probe"))
        with open(probe, "wb"):
            pass
        self.remove(probe)


class RemoteFiles(FileSystem):
    """URLs: through `remote.filesystem(url)` (fsspec or `tf.io.gfile`), its errors turned into Python ones.
    Files are written locally and uploaded; directories are copied (see `replace`)."""

    def __init__(self, path: str) -> None:
        self.fs = remote.filesystem(path, storage_options(path))

    def exists(self, path: str) -> bool:
        with self.fs.errors(path):
            return self.fs.exists(path)

    def isdir(self, path: str) -> bool:
        with self.fs.errors(path):
            return self.fs.isdir(path)

    def makedirs(self, path: str) -> None:
        with self.fs.errors(path):
            self.fs.makedirs(path)

    def listdir(self, path: str) -> list[str]:
        with self.fs.errors(path):
            return self.fs.listdir(path)

    def size(self, path: str) -> int:
        fs = self.fs
        with fs.errors(path):
            if not fs.isdir(path):
                return fs.size(path)
            return sum(fs.size(_under(path, rel, n)) for rel, names in fs.walk(path) for n in names)

    @property
    def object_store(self) -> bool:  # type: ignore[override]
        return self.fs.object_store

    def read_bytes(self, path: str) -> bytes:
        with self.fs.errors(path):
            return self.fs.read(path)

    def put(self, path: str, data: bytes) -> None:
        """One request that replaces the object `path` whole (on an object store: atomic)."""
        with self.fs.errors(path):
            self.fs.write(path, data)

    def write_durably(self, path: str, write: Callable[[str], None], straight: str | None = None) -> str:
        with staging.scratch() as local_dir:
            local = os.path.join(local_dir, basename(path))
            write(local)
            if straight is not None and os.path.isfile(local):  # a file: no copy later (see `uploads`)
                path = straight
            with self.fs.errors(path):
                self._upload(local, path)
        return path

    def _upload(self, local: str, path: str) -> None:
        fs = self.fs
        if not os.path.isdir(local):
            fs.upload(local, path)
            return
        for root, _, names in os.walk(local):
            rel = os.path.relpath(root, local)
            target = _under(path, "" if rel == "." else rel.replace(os.sep, "/"))
            fs.makedirs(target)
            for n in names:
                fs.upload(os.path.join(root, n), f"{target}/{n}")
        # Written last: the directory is complete (see `_replace_dir`).
        fs.write(_under(path, COMPLETE_MARKER), remote.MARKER_DATA)

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        with staging.scratch() as local_dir:
            local = os.path.join(local_dir, basename(path))
            with self.fs.errors(path):
                self.fs.download(path, local)
            yield local

    def replace(self, src: str, dst: str, sync_dir: bool = True) -> None:
        fs = self.fs
        with fs.errors(src):
            if fs.object_store:  # a file's keys are known: no listing unless it is not there
                try:
                    fs.rename(src, dst)
                    return
                except FileNotFoundError:
                    if not fs.isdir(src):
                        raise
            elif not fs.isdir(src):
                fs.rename(src, dst)
                return
            self._replace_dir(src.rstrip("/"), dst.rstrip("/"))

    def _replace_dir(self, src: str, dst: str) -> None:
        """Move the remote directory `src` over `dst`, safe to repeat after a crash.

        Remote directories cannot be renamed (object stores have no directories;
        `tf.io.gfile.rename` drops a `ram://` directory's content), so the files
        are copied. `src` holds `COMPLETE_MARKER` until the copy is complete: a
        crash while copying leaves it, and the journal's roll-forward copies
        again; a crash after leaves `src` without it, and only `src` is removed.
        """
        fs, marker = self.fs, _under(src, COMPLETE_MARKER)
        if fs.exists(marker):
            fs.rmtree(dst)
            for rel, names in list(fs.walk(src)):
                fs.makedirs(_under(dst, rel))
                for n in names:
                    if rel or n != COMPLETE_MARKER:
                        fs.copy(_under(src, rel, n), _under(dst, rel, n))
            fs.remove(marker)
        fs.rmtree(src)

    def remove_file(self, path: str) -> None:
        if not self.fs.object_store:
            self.remove(path, missing_ok=True)
            return
        with self.fs.errors(path):
            try:
                self.fs.remove(path)  # one DELETE of a known key, no lookup first
            except FileNotFoundError:
                pass

    def remove_leftovers(self, directory: str, doomed: frozenset[str] = frozenset()) -> None:
        super().remove_leftovers(directory)
        with self.fs.errors(directory):
            self.fs.abort_uploads(directory, lambda name: is_leftover(name) or name in doomed)

    def remove(self, path: str, missing_ok: bool = False) -> None:
        fs = self.fs
        with fs.errors(path):
            kind = fs.kind(path) if fs.object_store else None  # one HEAD for a file, no listing
            if kind == "file":
                fs.remove(path)
                return
            if not fs.exists(path):
                if missing_ok:
                    return
                raise FileNotFoundError(path)
            if fs.isdir(path):
                fs.rmtree(path)
            else:
                fs.remove(path)


_LOCAL = LocalFS()
_OPTIONS: dict[str, dict[str, Any]] = {}  # URL prefix -> fsspec storage_options (see `configure`)


def filesystem(path: str) -> FileSystem:
    """The file system of `path`: local, or the remote one its scheme names
    (with the options `configure` gave for it)."""
    return RemoteFiles(path) if is_remote(path) else _LOCAL


def configure(url: str, options: Mapping[str, Any] | None) -> None:
    """Use `options` (fsspec's `storage_options`: `endpoint_url`, `key`,
    `secret`, `profile`, `token`...) for the remote `url` and every path under
    it, in this process, until configured again. The one place a URL gets its
    options: each file operation asks `storage_options(path)`. `None` changes
    nothing; options for a local path are a `ValueError`.

    >>> configure("memory://doctest/run", {"skip_instance_cache": False})
    >>> storage_options("memory://doctest/run/best.weights.h5"), storage_options("memory://doctest/run2")
    ({'skip_instance_cache': False}, {})
    """
    if options is None:
        return
    if not is_remote(url):
        raise ValueError("`storage_options` are for remote URLs (s3://, gs://, az://...): a local path needs "
                         f"none. Remove them, or give a remote URL. Received: {url!r}")
    _OPTIONS[url.rstrip("/")] = dict(options)


def storage_options(path: str) -> dict[str, Any]:
    """The options of the longest configured prefix of `path` (`{}` if none)."""
    path = path.rstrip("/")
    prefixes = [p for p in _OPTIONS if path == p or path.startswith(p + "/")]
    return dict(_OPTIONS[max(prefixes, key=len)]) if prefixes else {}


def reach(directory: str, create: bool = True) -> None:
    """Reach a remote run directory's store once (`remote.FsspecFS.reach`):
    a `ValueError` saying what to fix when it cannot be used."""
    if is_remote(directory):
        RemoteFiles(directory).fs.reach(directory, create)


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
