"""The file systems behind remote paths, used only by `fs`.

Two implementations of one set of methods: `fsspec` (chosen whenever
it is installed and knows the scheme: `gs://` with gcsfs, `s3://` with s3fs,
`memory://`...) and TensorFlow's `tf.io.gfile` (for schemes only TensorFlow
knows, such as `ram://`, and when fsspec is not installed). Their errors come
out as `FileNotFoundError`, `PermissionError` or `OSError` naming the path.

Both have: `errors(path)` (a context that turns the implementation's errors
into Python ones), `exists`, `isdir`, `makedirs`, `listdir` (names in a
directory), `walk` (relative directory, file names), `read`, `write` (one
object, not atomic by itself), `upload`, `download`, `copy` (over `dst`),
`rename` (on object stores a copy then a delete: `dst` appears whole or not
at all), `remove` (one file), `rmtree` (nothing there is no error), `size`
(one file) and `abort_uploads` (unfinished multipart uploads under a
directory). Every path is a full URL.

>>> filesystem("memory://bucket/run").name
'fsspec'
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Callable, Iterator

MARKER_DATA = b"1"  # not empty: ram:// does not keep empty files


class FsspecFS:
    """A file system of fsspec (`fsspec.core.url_to_fs`)."""

    name = "fsspec"

    def __init__(self, url: str) -> None:
        import fsspec

        self.fs, _ = fsspec.core.url_to_fs(url)
        self.exists, self.isdir = self.fs.exists, self.fs.isdir  # as they are

    @contextlib.contextmanager
    def errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as e:
            raise FileNotFoundError(f"No such file or directory ({path})") from e
        except PermissionError as e:
            raise PermissionError(
                f"Permission denied ({path}): {e}. Check the credentials of the file system "
                f"({type(self.fs).__name__}) and the access rights of the bucket or directory."
            ) from e
        except OSError as e:
            message = f"{e.strerror or e} ({path})"
            raise (OSError(e.errno, message) if e.errno else OSError(message)) from e
        except Exception as e:  # noqa: BLE001 - gcsfs, s3fs... raise their own HTTP errors
            raise OSError(f"{type(e).__name__}: {e} ({path})") from e

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]

    def walk(self, path: str) -> Iterator[tuple[str, list[str]]]:
        import fsspec.core

        top = fsspec.core.strip_protocol(path)
        for root, _, names in self.fs.walk(path):
            yield root[len(top):].strip("/"), list(names)

    def read(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def write(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def upload(self, local: str, path: str) -> None:
        self.fs.put_file(local, path)

    def download(self, path: str, local: str) -> None:
        self.fs.get_file(path, local)

    def copy(self, src: str, dst: str) -> None:
        self.fs.cp_file(src, dst)

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.isfile(src):
            raise FileNotFoundError(src)
        self.fs.mv(src, dst)

    def remove(self, path: str) -> None:
        self.fs.rm_file(path)

    def rmtree(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    def abort_uploads(self, directory: str, doomed: Callable[[str], bool]) -> list[str]:
        """Abort the unfinished multipart uploads (on S3, through s3fs) of the
        keys under `directory` whose first name there is `doomed`; return those
        keys. Other file systems: nothing to do. An upload a kill interrupted
        is not in a listing, and S3 keeps (and bills) its parts until aborted."""
        if not type(self.fs).__module__.startswith("s3fs"):
            return []
        bucket, key, _ = self.fs.split_path(directory)
        prefix = f"{key.strip('/')}/" if key.strip("/") else ""
        aborted, markers = [], {}
        while True:
            page = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
            for upload in page.get("Uploads", []):
                name = upload["Key"][len(prefix):].split("/", 1)[0]
                if upload["Key"].startswith(prefix) and doomed(name):
                    self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"],
                                    UploadId=upload["UploadId"])
                    aborted.append(upload["Key"])
            if not page.get("IsTruncated"):
                return aborted
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


class GfileFS:
    """TensorFlow's `tf.io.gfile`."""

    name = "tf.io.gfile"

    def __init__(self) -> None:
        import tensorflow as tf

        self.gfile, self.tf_errors = tf.io.gfile, tf.errors
        self.exists, self.isdir, self.makedirs = tf.io.gfile.exists, tf.io.gfile.isdir, tf.io.gfile.makedirs

    @contextlib.contextmanager
    def errors(self, path: str) -> Iterator[None]:
        tf_errors = self.tf_errors
        try:
            yield
        except tf_errors.UnimplementedError as e:
            scheme = str(path).split("://", 1)[0]
            raise ValueError(
                f"No file system for '{scheme}://' paths: fsspec does not know the scheme and TensorFlow "
                f"cannot reach it ({e.message}). {_HOW_TO_REACH} Received: {path}"
            ) from None
        except tf_errors.NotFoundError as e:
            raise FileNotFoundError(f"{e.message or 'not found'} ({path})") from e
        except tf_errors.PermissionDeniedError as e:
            raise PermissionError(f"{e.message} ({path})") from e
        except tf_errors.OpError as e:
            raise OSError(f"{e.message} ({path})") from e

    def listdir(self, path: str) -> list[str]:
        return [n.rstrip("/") for n in self.gfile.listdir(path)]

    def walk(self, path: str) -> Iterator[tuple[str, list[str]]]:
        for root, _, names in self.gfile.walk(path):
            yield root[len(path):].strip("/"), list(names)

    def read(self, path: str) -> bytes:
        with self.gfile.GFile(path, "rb") as f:
            return f.read()

    def write(self, path: str, data: bytes) -> None:
        with self.gfile.GFile(path, "wb") as f:
            f.write(data)

    def upload(self, local: str, path: str) -> None:
        self.gfile.copy(local, path, overwrite=True)

    def download(self, path: str, local: str) -> None:
        self.gfile.copy(path, local, overwrite=True)

    copy = upload

    def rename(self, src: str, dst: str) -> None:
        self.gfile.rename(src, dst, overwrite=True)

    def remove(self, path: str) -> None:
        self.gfile.remove(path)

    def rmtree(self, path: str) -> None:
        """`tf.io.gfile.rmtree`, where nothing there is not an error.

        On `ram://`, `exists`/`listdir` also match names that merely start with
        `path` (`export-1` sees `export-10`'s content) and `rmtree` fails there
        with NotFound: then finish by hand. Every name deleted here is `path` +
        "/" + a child, so no other entry is touched.
        """
        gfile, not_found = self.gfile, self.tf_errors.NotFoundError
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

    def size(self, path: str) -> int:
        return int(self.gfile.stat(path).length)

    def abort_uploads(self, directory: str, doomed: Callable[[str], bool]) -> list[str]:
        return []  # tf.io.gfile has no API for them


_HOW_TO_REACH = (
    "Install fsspec (pip install 'keras-best[remote]') and the package for the scheme: gcsfs for gs://, "
    "s3fs for s3://, adlfs for az://; or use TensorFlow's tf.io.gfile (gs:// and ram:// are built in, "
    "s3:// and hdfs:// need `pip install tensorflow-io`, imported before use)."
)


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def filesystem(path: str) -> FsspecFS | GfileFS:
    """The file system for the remote `path`: fsspec's when it knows the
    scheme and its package is installed, else TensorFlow's, else a
    `ValueError` that says what to install."""
    scheme = path.split("://", 1)[0]
    missing = None
    has_fsspec = importlib.util.find_spec("fsspec") is not None
    if has_fsspec:
        import fsspec

        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as e:  # fsspec knows the scheme; its package is missing
            from fsspec.registry import known_implementations

            package = known_implementations.get(scheme, {}).get("class", "").split(".")[0]
            missing = (f"install {package} for {scheme}:// paths: pip install {package}"
                       if package and package != "fsspec" else str(e))
        except ValueError:  # "Protocol not known"
            pass
        else:
            return FsspecFS(path)
    if _tensorflow_installed():
        return GfileFS()
    if missing:
        raise ValueError(f"fsspec knows {scheme}:// paths but cannot reach them here: {missing}. "
                         f"Received: {path}")
    why = ": fsspec does not know the scheme, and TensorFlow is not installed" if has_fsspec else " is installed"
    raise ValueError(f"No file system for '{scheme}://' paths{why}. {_HOW_TO_REACH} Received: {path}")
