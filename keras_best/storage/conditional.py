"""Conditional writes of one object: what a lock held in a remote directory needs.

`remote.FsspecFS` has these methods. On S3 (s3fs) each is one conditional
request (`PutObject` with `If-None-Match: *` or `If-Match: <ETag>`,
`DeleteObject` with `If-Match`): the server decides, so two processes on two
machines can never both create the object. AWS S3, MinIO and moto's server
honour these conditions. `memory://` lives in one process: a thread lock
stands in for the server. Other stores (gs://, az://...) have none here
(`exclusive_writes` is False).

>>> from keras_best.storage import remote
>>> fs = remote.filesystem("memory://doctest-cond/lock")
>>> first = fs.create_exclusive("memory://doctest-cond/lock", b"a")
>>> fs.create_exclusive("memory://doctest-cond/lock", b"b") is None, fs.version("memory://doctest-cond/lock")[0]
(True, b'a')
>>> fs.remove_version("memory://doctest-cond/lock", first); fs.version("memory://doctest-cond/lock") is None
True
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

_MEMORY_LOCK = threading.Lock()  # memory:// is this process's: its conditions are checked under this lock


class ConditionalWrites:
    """The conditional writes of an fsspec file system (`self.fs`)."""

    fs: Any

    @property
    def exclusive_writes(self) -> bool:
        """Whether `create_exclusive` works on this file system (S3 through s3fs, `memory://`)."""
        return self._store in ("s3", "memory")

    @property
    def _store(self) -> str:
        module = type(self.fs).__module__
        return "s3" if module.startswith("s3fs") else "memory" if module.endswith(".memory") else module

    def create_exclusive(self, path: str, data: bytes, replacing: str | None = None) -> str | None:
        """Write the object `path` only if there is none (with `replacing`: only if it is still
        the version `replacing` that `version` gave), in one conditional request. Returns the
        new version, or `None` when the condition did not hold (then nothing was written)."""
        if self._store == "memory":
            with _MEMORY_LOCK:
                if (self.version(path) or (b"", None))[1] != replacing:
                    return None
                self.fs.pipe_file(path, data)
                return hashlib.md5(data).hexdigest()
        bucket, key, _ = self.fs.split_path(path)
        condition = {"IfMatch": replacing} if replacing else {"IfNoneMatch": "*"}
        try:
            return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        except (OSError, ValueError) as e:
            if (replacing and isinstance(e, FileNotFoundError)) or _precondition_failed(e):
                return None  # another object is there (replacing: it changed, or is gone)
            raise
        finally:
            self.fs.invalidate_cache(path)

    def version(self, path: str) -> tuple[bytes, str] | None:
        """The object `path`'s content and version, or `None` when there is none. The version
        is read first: `create_exclusive(..., replacing=it)` fails if the object changed since."""
        try:
            if self._store == "memory":
                data = self.fs.cat_file(path)
                return data, hashlib.md5(data).hexdigest()
            bucket, key, _ = self.fs.split_path(path)
            tag = self.fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
            return self.fs.cat_file(path), tag
        except FileNotFoundError:
            return None

    def remove_version(self, path: str, version: str) -> None:
        """Delete the object `path` if it is still the version `version` (else leave it)."""
        if self._store == "memory":
            with _MEMORY_LOCK:
                if (self.version(path) or (b"", None))[1] == version:
                    self.fs.rm_file(path)
            return
        bucket, key, _ = self.fs.split_path(path)
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            if not _precondition_failed(e) and (self.version(path) or (b"", None))[1] == version:
                self.fs.rm_file(path)  # a server without conditional deletes: checked, then deleted
        finally:
            self.fs.invalidate_cache(path)


def _precondition_failed(error: BaseException) -> bool:
    """Whether an S3 request failed on its condition (412; 409: a concurrent conditional write)."""
    response = getattr(error.__cause__, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return isinstance(error, FileExistsError) or status in (409, 412)


__all__ = ["ConditionalWrites"]
