"""Host arrays reused from one save to the next.

A fresh host copy of a large model costs the training thread page faults (a
134 MB model: about 33,000 pages, tens of ms) on top of the copy itself. A
run's `HostBuffers` keeps the arrays of copies nobody needs any more and
hands them to the next copy of a variable of the same shape and dtype, so
the training thread copies into memory already mapped.

Every array it hands out is held by one or more holders (a best file's
snapshot, the training state of the same update, and on a worker of several
processes the best weights kept for `restore_best_weights`), each of which calls `release` once when done; the
array is reused only when all of them have. A holder that never releases
(a dropped job, an error) costs no memory: the pool keeps no reference to a
held array, which is freed as usual once nothing uses it.

Free arrays are kept up to `limit` bytes. A run (`keras_best.runner.run`) allows one
set of what one update copies (weights, optimizer variables) and, before it
copies, waits until the arrays still held (`held_bytes`, a set the writer has
not written yet) leave room for the next set within its budget
(`max_host_memory`; by default one set): the host holds at most one set,
written and then reused, however far the disk falls behind. A budget below
one set takes no copy at all (`Streamed`: each variable is read while the
file is written, in the training thread).

Example:
    >>> buffers = HostBuffers()
    >>> buffers.allow(1 << 20)  # keep up to 1 MiB of free arrays
    >>> first = [np.zeros(3)]
    >>> buffers.hold(first)  # a snapshot copied into it
    >>> buffers.release(first)  # written: free again
    >>> buffers.free_for([np.ones(3)])[0] is first[0]  # the next copy of that shape goes there
    True
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Iterable, Mapping

import numpy as np

from keras_best.keras_adapter.host import HostValue, read_into


def _key(shape: Any, dtype: Any) -> tuple[tuple[int, ...], str] | None:
    try:
        return tuple(int(d) for d in shape), str(np.dtype(dtype))
    except (TypeError, ValueError):  # unknown dimensions, a dtype NumPy does not know
        return None


class HostBuffers:
    """Free host arrays by shape and dtype, and who still holds the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._free_bytes = 0
        self._holds: dict[int, tuple[weakref.ref, int]] = {}
        self.limit = 0  # bytes of free arrays kept at most
        self.reused_bytes = 0  # handed out again by `free_for`, since the start

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def held_bytes(self) -> int:
        """The bytes of the arrays still held (and alive): copies not written yet."""
        with self._lock:
            return sum(a.nbytes for a in (ref() for ref, _ in self._holds.values()) if a is not None)

    def free_for(self, variables: Iterable[Any]) -> list[np.ndarray | None]:
        """A free array for each variable (its shape and dtype), or `None`;
        the caller copies into it and then `hold`s it."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for v in variables:
                key = _key(getattr(v, "shape", None), getattr(v, "dtype", None))
                stack = self._free.get(key) if key is not None else None
                if stack:
                    a = stack.pop()
                    self._free_bytes -= a.nbytes
                    self.reused_bytes += a.nbytes
                    out.append(a)
                else:
                    out.append(None)
        return out

    def hold(self, arrays: Iterable[np.ndarray]) -> None:
        """One more holder for each of `arrays` (each calls `release` once)."""
        with self._lock:
            for a in arrays:
                if not isinstance(a, np.ndarray) or not a.flags.owndata:
                    continue  # a view or a foreign object: never reused
                ref, count = self._holds.get(id(a), (None, 0))
                if ref is None or ref() is not a:
                    ref, count = weakref.ref(a), 0
                self._holds[id(a)] = (ref, count + 1)

    def release(self, arrays: Iterable[np.ndarray]) -> None:
        """One holder of each of `arrays` is done; an array no one holds any
        more is kept for reuse (within `limit`)."""
        with self._lock:
            for a in arrays:
                ref, count = self._holds.get(id(a), (None, 0))
                if ref is None or ref() is not a:
                    continue  # not held through this pool
                if count > 1:
                    self._holds[id(a)] = (ref, count - 1)
                    continue
                del self._holds[id(a)]
                key = _key(a.shape, a.dtype)
                if key is not None and a.flags.writeable and self._free_bytes + a.nbytes <= self.limit:
                    self._free.setdefault(key, []).append(a)
                    self._free_bytes += a.nbytes
            if len(self._holds) > 4096:  # arrays dropped unreleased: forget their entries
                self._holds = {k: v for k, v in self._holds.items() if v[0]() is not None}

    def forget(self, arrays: Iterable[np.ndarray]) -> None:
        """Never reuse `arrays` (handed to a backend, which may keep them as
        the memory of its variables: JAX on CPU does)."""
        with self._lock:
            for a in arrays:
                entry = self._holds.get(id(a))
                if entry is not None and entry[0]() is a:
                    del self._holds[id(a)]

    def copies(self, variables: list[Any], reuse: Mapping[int, np.ndarray] | None = None) -> list[np.ndarray]:
        """One held host copy of each variable: the array of `reuse` (a
        snapshot's `by_variable`) when it has one, else a copy into a free
        array (see `keras_adapter.host.read_into`)."""
        reuse = reuse or {}
        missing = [v for v in variables if id(v) not in reuse]
        read = dict(zip(map(id, missing), read_into(missing, self.free_for(missing)))) if missing else {}
        arrays = [reuse[id(v)] if id(v) in reuse else read[id(v)] for v in variables]
        self.hold(arrays)
        return arrays

    def allow(self, nbytes: int) -> None:
        """Keep up to `nbytes` of free arrays (one update's copies)."""
        self.limit = max(self.limit, nbytes)

    def clear(self) -> None:
        """Drop every free array (the run is over)."""
        with self._lock:
            self._free.clear()
            self._free_bytes = 0
            self.limit = 0


class Streamed:
    """Where `HostBuffers` lends host copies, `Streamed` lends none: each
    "copy" is a `HostValue`, read when the file is written (in the training
    thread), one variable at a time. The budget `max_host_memory=0`."""

    limit = free_bytes = held_bytes = 0

    def copies(self, variables: list[Any], reuse: Mapping[int, np.ndarray] | None = None) -> list[HostValue]:
        return [HostValue(v) for v in variables]

    def hold(self, arrays: Iterable[Any]) -> None:
        pass

    def release(self, arrays: Iterable[Any]) -> None:
        pass
