"""A lock across processes and machines held as one object of a remote directory.

The lock object (JSON: its owner and when it expires) is created with a
conditional write (`conditional.ConditionalWrites.create_exclusive`): of two
processes creating it, the store lets exactly one succeed. The holder renews
it in the background every third of its lease; one that dies stops renewing,
and once the lease has run out (by the waiter's clock: machines' clocks must
agree to well within the lease) a waiter takes it over, again with one
conditional write that fails if the object changed since it was read. The
holder releases it by deleting it, only if it is still its own.

>>> lock = ObjectLock("memory://doctest-lock/.lock", timeout=5)
>>> with lock:
...     held = lock.held
>>> held, lock.held
(True, False)
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from typing import Any

from keras_best.storage import fs

LEASE_S = 60.0  # how long a lock stays valid without renewal (renewed every third of it)


class ObjectLock:
    """An exclusive lock held as the object `path` (a remote URL on a store with
    conditional writes: `remote.FsspecFS.exclusive_writes`).

    Args:
        path: the lock object's URL.
        timeout: seconds `acquire` waits for another holder before `TimeoutError`.
        lease: seconds the lock stays valid after its holder's last renewal.
    """

    def __init__(self, path: str, timeout: float, lease: float = LEASE_S) -> None:
        self.path, self.timeout, self.lease = path, timeout, lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._version: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False  # set when a renewal found the lock taken over (the holder stalled a whole lease)

    @property
    def held(self) -> bool:
        return self._version is not None

    def acquire(self) -> None:
        """Take the lock: create it, or take over one whose lease ran out; wait up to `timeout`."""
        store = fs.RemoteFiles(self.path).fs
        deadline, holder = time.monotonic() + self.timeout, None
        while True:
            with store.errors(self.path):
                version = store.create_exclusive(self.path, self._body())
                if version is None and (seen := store.version(self.path)) is not None:
                    holder = _read(seen[0])
                    if holder.get("expires", 0.0) < time.time():  # stale: its holder stopped renewing
                        version = store.create_exclusive(self.path, self._body(), replacing=seen[1])
            if version is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"The lock {self.path} is held by {holder.get('owner', '?') if holder else '?'} "
                                   f"(it expires unless renewed in {_left(holder):.0f} s).")
            time.sleep(random.uniform(0.05, 0.25))  # noqa: S311 - jitter, not security
        self._version, self.lost = version, False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, args=(store,), daemon=True, name="keras-best-lock")
        self._renewer.start()

    def release(self) -> None:
        """Delete the lock object, if it is still this holder's."""
        if self._version is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        version, self._version = self._version, None
        store = fs.RemoteFiles(self.path).fs
        with store.errors(self.path):
            store.remove_version(self.path, version)

    def __enter__(self) -> ObjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.lease}).encode()

    def _renew(self, store: Any) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                version = store.create_exclusive(self.path, self._body(), replacing=self._version)
            except Exception:  # noqa: BLE001 - the store is unreachable for now: try again
                continue
            if version is None:
                self.lost = True
                return
            self._version = version


def supported(url: str) -> bool:
    """Whether an `ObjectLock` can live under the remote `url`: an s3:// (through s3fs) or
    memory:// URL, whose store has conditional writes (other schemes: no file system built)."""
    scheme = url.split("://", 1)[0]
    return scheme in ("s3", "s3a", "memory") and bool(getattr(fs.RemoteFiles(url).fs, "exclusive_writes", False))


def _read(data: bytes) -> dict[str, Any]:
    """The lock object's content; unreadable: expired (a lock object is written whole)."""
    try:
        body = json.loads(data.decode("utf-8"))
        return body if isinstance(body, dict) and isinstance(body.get("expires"), (int, float)) else {}
    except ValueError:
        return {}


def _left(holder: dict[str, Any] | None) -> float:
    """Seconds left of a holder's lease."""
    return max(0.0, float((holder or {}).get("expires", 0.0)) - time.time())


__all__ = ["LEASE_S", "ObjectLock", "supported"]
