"""Orbax I/O every process of a job takes part in: async saves of device arrays, restores onto given shardings.

Used by the Orbax storage engine (`keras_best.engines.orbax`: kept bests) and
by the sharded training state (`keras_best.training_state.sharded`). A save
is a directory holding one Orbax step (`<path>/0`), as
`keras.callbacks.OrbaxCheckpoint` writes one.

`AsyncSave(payload).start(path)` is called by every process, in the training
thread, at the same `path`: Orbax copies each process's shards to its host,
then writes them in its own thread; its `<step>.orbax-checkpoint-tmp`
directory is renamed when every process is done. A process runs one Orbax
save at a time (`start` waits for the one before: Orbax holds one save's host
copies); `wait_pending()` waits for this process's last one. A peer that stops
answering fails the save after `ORBAX_TIMEOUT_S` seconds (Orbax's barrier),
instead of hanging.

Example:
    >>> save = AsyncSave({"pytree": {"w": array}})  # doctest: +SKIP
    >>> save.start("runs/x/.kb-tmp-0123456789ab-best")  # every process  # doctest: +SKIP
    >>> save.wait()  # committed by all processes (raises their error)  # doctest: +SKIP
    >>> restore(step_path("runs/x/best"), {"w": jax.ShapeDtypeStruct(...)})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from typing import Any

from keras_best.core.extras import install_hint
from keras_best.storage import files

STEP = "0"  # the one step inside each saved directory
ORBAX_TIMEOUT_S = int(os.environ.get("KERAS_BEST_ORBAX_TIMEOUT_S", "600"))

_pending: list[AsyncSave] = []  # this process's last started save (at most one)
_pending_lock = threading.Lock()


def require_orbax() -> Any:
    """`orbax.checkpoint.v1`, or an `ImportError` saying how to install it."""
    try:
        import orbax.checkpoint as oc
    except ImportError as e:
        raise ImportError(
            'save_format="orbax" (a model-parallel run, or a filepath without a file extension) saves '
            'through orbax-checkpoint, which is not installed. Install it: pip install "keras-best[orbax]" '
            f"({install_hint('orbax', 'orbax-checkpoint')})."
        ) from e
    return oc.v1


def context(ocp: Any, saving: bool = False) -> Any:
    """Orbax's context with keras-best's timeout for its barriers. A save
    writes its arrays uncompressed: Orbax's default (ZSTD) holds compressed
    copies besides the host copy and takes CPU from training (0.5 GB of
    weights: peak extra memory 2.4x -> 1.1x of the save, written 40% sooner)."""
    options: dict[str, Any] = {}
    if saving:
        options["array_options"] = ocp.options.ArrayOptions(
            saving=ocp.options.ArrayOptions.Saving(use_compression=False))
    return ocp.Context(async_options=ocp.options.AsyncOptions(timeout_secs=ORBAX_TIMEOUT_S), **options)


class AsyncSave:
    """One Orbax save of `payload` (`{checkpointable name: tree of device arrays}`), started by every process."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self._future: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._future is not None or self._error is not None

    def start(self, path: str) -> None:
        """Start Orbax's save of this process's shards into the directory `path`
        (every process, in the training thread, same `path`)."""
        wait_pending()  # the save before is done
        ocp = require_orbax()
        files.makedirs(path)
        with context(ocp, saving=True):  # Orbax wants absolute paths
            self._future = ocp.save_checkpointables_async(os.path.join(os.path.abspath(path), STEP), self.payload)
        self.payload = {}
        with _pending_lock:
            _pending[:] = [self]

    def wait(self) -> None:
        """Wait until Orbax committed this save (all processes wrote); raise its error."""
        with self._lock:
            future, self._future = self._future, None
            if future is not None:
                try:
                    future.result()
                except BaseException as e:  # noqa: BLE001 - kept for every waiter
                    self._error = e
        if self._error is not None:
            raise OSError(f"The Orbax save failed: {self._error!r}") from self._error


def wait_pending() -> None:
    """Wait for this process's last Orbax save (its error is raised)."""
    with _pending_lock:
        pending = _pending[:]
        _pending.clear()
    for save in pending:
        save.wait()


def step_path(path: str) -> str:
    """The step directory of a saved `path` (a root holding one step, or the step itself)."""
    if files.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
        return path
    steps = sorted((n for n in files.listdir(path) if n.isdigit()), key=int) if files.isdir(path) else []
    if not steps:
        raise files.DamagedFileError(f"{path!r} holds no Orbax checkpoint step.")
    return os.path.join(path, steps[-1])


def metadata(path: str, hint: str = "") -> tuple[str, Any]:
    """(the step directory, the metadata tree of its "pytree") of the save at `path`;
    a `DamagedFileError` when it cannot be read."""
    ocp = require_orbax()
    try:
        step = step_path(os.path.abspath(path))
        with context(ocp):
            return step, ocp.pytree_metadata(step, checkpointable_name="pytree").metadata
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable: a damaged save
        raise files.DamagedFileError(f"The Orbax checkpoint {path!r} cannot be read ({e!r}).{hint}") from e


def placeholder() -> Any:
    """What `restore` leaves on disk (a leaf not asked for)."""
    return require_orbax().PLACEHOLDER


def restore(step: str, abstract: dict[str, Any]) -> dict[str, Any]:
    """The "pytree" of the step directory `step`, each leaf read onto the sharding of its
    `jax.ShapeDtypeStruct` in `abstract` (every process calls it; `placeholder()` leaves stay on disk)."""
    ocp = require_orbax()
    with context(ocp):
        return ocp.load_checkpointables(step, {"pytree": abstract})["pytree"]


def nest(flat_tree: dict[str, Any]) -> dict[str, Any]:
    """`{"a/b": leaf}` -> `{"a": {"b": leaf}}`."""
    tree: dict[str, Any] = {}
    for p, leaf in flat_tree.items():
        *head, last = p.split("/")
        node = tree
        for part in head:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree
