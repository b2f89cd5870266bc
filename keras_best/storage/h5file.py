"""HDF5 files that survive write errors: `write_h5`, `ErrorProofFile`, `fill_h5`.

After a failed write HDF5's state is corrupt ("Can't decrement id ref count",
a SIGSEGV at a later close), so h5py writes through `ErrorProofFile`, which
never reports a write error to HDF5: the first one is kept and raised once the
file is closed. Large writes are handed to the disk piece by piece
(`start_writeback`).
"""

from __future__ import annotations

import ctypes
import io
import os
import sys
from typing import Callable


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
