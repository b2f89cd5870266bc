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
directory). fsspec's also has `create_exclusive` (`conditional.py`). Every path is a full URL.

>>> filesystem("memory://bucket/run").name
'fsspec'
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Callable, Iterator, Mapping

from keras_best.storage.conditional import ConditionalWrites

MARKER_DATA = b"1"  # not empty: ram:// does not keep empty files
# Object stores (scheme://bucket/key..., no directories): a PUT replaces an object whole or
# not at all (readers see the old object or the new one), and a rename is a copy then a delete.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


class FsspecFS(ConditionalWrites):
    """A file system of fsspec (`fsspec.core.url_to_fs`); its conditional writes: `ConditionalWrites`."""

    name = "fsspec"

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        try:  # fsspec keeps one instance per (class, options): built once, reused
            self.fs, _ = fsspec.core.url_to_fs(url, **(options or {}))
        except TypeError as e:  # an argument the file system does not take
            raise ValueError(f"`storage_options` has an argument the file system of {url} does not take: {e}. "
                             "The names are the file system's own (s3fs.S3FileSystem, gcsfs.GCSFileSystem...).") from e
        self.exists, self.isdir = self.fs.exists, self.fs.isdir  # as they are

    @property
    def object_store(self) -> bool:
        """Whether this is an object store (`OBJECT_STORES`): `write` is then atomic."""
        protocol = self.fs.protocol
        return bool(OBJECT_STORES.intersection((protocol,) if isinstance(protocol, str) else protocol))

    def reach(self, path: str, create: bool = True) -> None:
        """Reach the store of the directory `path` once, before training: the
        bucket of an object store (one request: it exists, the credentials
        work; never created), or else the directory, created (`create`). A
        `ValueError` says what to fix."""
        scheme, rest = path.split("://", 1)
        try:
            if scheme in OBJECT_STORES:
                self.fs.info(rest.split("/", 1)[0])
            elif create:
                self.fs.makedirs(path, exist_ok=True)
        except Exception as e:  # noqa: BLE001 - each store raises its own
            raise ValueError(unreachable(path, e)) from e

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
            if "Credential" in type(e).__name__:  # botocore's NoCredentialsError...: say where they go
                raise PermissionError(unreachable(path, e)) from e
            raise OSError(f"{type(e).__name__}: {e} ({path})") from e

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def kind(self, path: str) -> str | None:
        """"file", "directory" or `None` (nothing there)."""
        try:
            return self.fs.info(path).get("type")
        except FileNotFoundError:
            return None

    def listdir(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)  # the store's listing, not a cached one: other processes write there too
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
        if self.object_store:  # two known keys: a copy (FileNotFoundError when `src` is none) and a delete
            self.fs.cp_file(src, dst)
            self.fs.rm_file(src)
            return
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
    object_store = False  # not known: written as any file system
    exclusive_writes = False  # no conditional writes

    def __init__(self, missing: str | None = None) -> None:
        import tensorflow as tf

        self.gfile, self.tf_errors = tf.io.gfile, tf.errors
        self.missing = missing  # what fsspec would need for the scheme, when it knows it
        self.exists, self.isdir, self.makedirs = tf.io.gfile.exists, tf.io.gfile.isdir, tf.io.gfile.makedirs

    @contextlib.contextmanager
    def errors(self, path: str) -> Iterator[None]:
        tf_errors = self.tf_errors
        try:
            yield
        except tf_errors.UnimplementedError as e:
            scheme = str(path).split("://", 1)[0]
            if self.missing:
                raise ValueError(f"fsspec knows {scheme}:// paths but cannot reach them here: {self.missing} "
                                 f"(TensorFlow cannot either: {e.message}). Received: {path}") from None
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

    def reach(self, path: str, create: bool = True) -> None:
        """See `FsspecFS.reach` (here: the directory is created, or nothing)."""
        if create:
            with self.errors(path):
                self.makedirs(path)

    def abort_uploads(self, directory: str, doomed: Callable[[str], bool]) -> list[str]:
        return []  # tf.io.gfile has no API for them


_HOW_TO_REACH = (
    "Install fsspec (pip install 'keras-best[remote]') and the package for the scheme: gcsfs for gs://, "
    "s3fs for s3://, adlfs for az://; or use TensorFlow's tf.io.gfile (gs:// and ram:// are built in, "
    "s3:// and hdfs:// need `pip install tensorflow-io`, imported before use)."
)


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def filesystem(path: str, options: Mapping[str, Any] | None = None) -> FsspecFS | GfileFS:
    """The file system for the remote `path`: fsspec's when it knows the
    scheme and its package is installed (built with `options`, fsspec's
    `storage_options`), else TensorFlow's, else a `ValueError` that says what
    to install."""
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
            return FsspecFS(path, options)
    if options:
        why = missing or (f"fsspec does not know {scheme}:// paths. " if has_fsspec else "fsspec is not installed. "
                          ) + _HOW_TO_REACH
        raise ValueError(f"`storage_options` are the arguments of fsspec's file system for {scheme}:// paths, "
                         f"and there is none here: {why.rstrip('.')}. Received: {path}")
    if _tensorflow_installed():
        return GfileFS(missing)
    if missing:
        raise ValueError(f"fsspec knows {scheme}:// paths but cannot reach them here: {missing}. "
                         f"Received: {path}")
    why = ": fsspec does not know the scheme, and TensorFlow is not installed" if has_fsspec else " is installed"
    raise ValueError(f"No file system for '{scheme}://' paths{why}. {_HOW_TO_REACH} Received: {path}")


_CREDENTIALS = {
    "s3": "Pass storage_options={'key': ..., 'secret': ...} or {'profile': ...} (and 'endpoint_url' for an "
          "S3-compatible server), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; "
          "AWS_ENDPOINT_URL for the endpoint).",
    "gs": "Pass storage_options={'token': '/path/to/key.json'} (or {'token': 'anon'} for a public bucket), or "
          "set GOOGLE_APPLICATION_CREDENTIALS to a service account's key file (or run "
          "`gcloud auth application-default login`).",
    "az": "Pass storage_options={'account_name': ..., 'account_key': ...} (or 'connection_string'), or set "
          "AZURE_STORAGE_CONNECTION_STRING.",
}
_CREDENTIALS.update(s3a=_CREDENTIALS["s3"], gcs=_CREDENTIALS["gs"], abfs=_CREDENTIALS["az"],
                    abfss=_CREDENTIALS["az"])


def unreachable(path: str, error: BaseException) -> str:
    """What went wrong when `reach(path)` failed, and the fix.

    >>> print(unreachable("s3://nope/run", FileNotFoundError("nope")))
    The bucket 'nope' of s3://nope/run does not exist (FileNotFoundError: nope). Create it first, or correct the name in the path.
    """
    scheme, rest = path.split("://", 1)
    what = f"{type(error).__name__}: {error}"
    credentials = _CREDENTIALS.get(scheme, "Pass the file system's credentials in `storage_options=`.")
    if isinstance(error, FileNotFoundError) and scheme in OBJECT_STORES:
        return (f"The bucket {rest.split('/', 1)[0]!r} of {path} does not exist ({what}). Create it first, or "
                "correct the name in the path.")
    if "Credential" in type(error).__name__:  # botocore's NoCredentialsError, google.auth's DefaultCredentialsError...
        return f"No credentials for {path} ({what}). {credentials}"
    if isinstance(error, PermissionError):
        return f"Access to {path} was refused ({what}). Check the credentials and the bucket's access rights. {credentials}"
    endpoint = (" (storage_options={'endpoint_url': ...} or AWS_ENDPOINT_URL for an S3-compatible server)"
                if scheme in ("s3", "s3a") else "")
    return f"Cannot reach {path} ({what}). Check the address of the store{endpoint} and the network. {credentials}"
