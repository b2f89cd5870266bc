"""Orbax checkpoint directories: model-parallel saves, each process writing its own shards.

A save is a directory laid out as `keras.callbacks.OrbaxCheckpoint` writes
one step (`<name>/0/pytree`, `<name>/0/model_config`), so
`keras.models.load_model(name)` and `model.load_weights(name)` read it where
Keras reads Orbax directories. The values saved are the variables' own
(sharded) device arrays: nothing is gathered on one host.

The snapshot is `collective`: every process calls `start(path)` in the
training thread at the same temp path (`names.shared_tmp_path`), which starts
Orbax's async save (Orbax copies each process's shards to its host, then
writes them in its own thread, its `<step>.orbax-checkpoint-tmp` directory
renamed when all processes are done). The chief's writer then waits for that
commit (`write`) before keras-best renames the directory into place and
records it. A peer that stops answering fails the save after
`ORBAX_TIMEOUT_S` seconds (Orbax's barrier), instead of hanging.

Example:
    >>> engine = OrbaxEngine()  # doctest: +SKIP
    >>> snapshot = engine.snapshot(model)  # doctest: +SKIP
    >>> snapshot.start("runs/x/.kb-tmp-0123456789ab-best")  # every process  # doctest: +SKIP
    >>> snapshot.write("runs/x/.kb-tmp-0123456789ab-best")  # waits for the commit  # doctest: +SKIP
    >>> engine.load(model, "runs/x/best")  # onto the model's current layout  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from typing import Any

from keras_best.core.extras import install_hint
from keras_best.core.formats import ORBAX
from keras_best.engines.base import Engine, Snapshot
from keras_best.keras_adapter import layout
from keras_best.storage import files

STEP = "0"  # the one step inside each saved directory
GROUPS = ("trainable_variables", "non_trainable_variables")
ORBAX_TIMEOUT_S = int(os.environ.get("KERAS_BEST_ORBAX_TIMEOUT_S", "600"))


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


def _context(ocp: Any) -> Any:
    return ocp.Context(async_options=ocp.options.AsyncOptions(timeout_secs=ORBAX_TIMEOUT_S))


class OrbaxSnapshot(Snapshot):
    """The model's device arrays (no host copy of ours), saved by every process."""

    detached = True  # `write` only waits for Orbax's own thread
    collective = True  # every process calls `start` at the same path

    def __init__(self, engine: OrbaxEngine, payload: dict[str, Any]) -> None:
        self.engine, self.payload = engine, payload
        self._future: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def start(self, path: str) -> None:
        """Start Orbax's save of this process's shards into the directory `path`
        (every process, in the training thread, same `path`)."""
        self.engine.wait()  # the save before is done (Orbax holds one save's host copies)
        ocp = require_orbax()
        files.makedirs(path)
        with _context(ocp):  # Orbax wants absolute paths
            self._future = ocp.save_checkpointables_async(os.path.join(os.path.abspath(path), STEP), self.payload)
        self.payload = {}
        self.engine.pending = self

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

    def write(self, path: str) -> None:
        if self._future is None and self._error is None and self.payload:
            self.start(path)  # one process, no `start` yet (not called by the runner)
        self.wait()

    def release(self) -> None:
        self.payload = {}


class OrbaxEngine(Engine):
    """Orbax checkpoint directories (see the module docstring)."""

    format = ORBAX

    def __init__(self) -> None:
        require_orbax()  # a clear ImportError at construction
        self.pending: OrbaxSnapshot | None = None

    def snapshot(self, model: Any, stream: bool = False) -> Snapshot:
        payload: dict[str, Any] = {"pytree": {
            "trainable_variables": layout.state_tree(model.trainable_variables),
            "non_trainable_variables": layout.state_tree(model.non_trainable_variables),
        }}
        try:
            payload["model_config"] = layout.model_config(model)
        except Exception:  # noqa: BLE001 - a model without a config: load_weights still reads it
            pass
        return OrbaxSnapshot(self, payload)

    def wait(self) -> None:
        """Wait for this process's last save (its error is raised)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.wait()

    def weights_file(self, path: str) -> str:
        return path

    def load(self, model: Any, path: str, hint: str = "", skip_mismatch: bool = False,
             only: Any = None) -> list[Any]:
        if skip_mismatch or only is not None:
            raise ValueError("Partial restore (`skip_mismatch=`, `only=`) reads weights files; an Orbax "
                             "run restores whole models. Load it whole, then copy the layers you need.")
        load(model, path, hint)
        return []


def step_path(path: str) -> str:
    """The step directory of a saved `path` (a root holding one step, or the step itself)."""
    if files.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
        return path
    steps = sorted((n for n in files.listdir(path) if n.isdigit()), key=int) if files.isdir(path) else []
    if not steps:
        raise files.DamagedFileError(f"{path!r} holds no Orbax checkpoint step.")
    return os.path.join(path, steps[-1])


def load(model: Any, path: str, hint: str = "") -> None:
    """Load the weights saved at `path` onto `model`'s current layout: each array
    is read straight into the sharding of the model's variable (another mesh,
    one device), what the model does not hold is left on disk."""
    import jax

    ocp = require_orbax()
    try:
        step = step_path(os.path.abspath(path))
        with _context(ocp):
            saved = ocp.pytree_metadata(step, checkpointable_name="pytree").metadata
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable: a damaged save
        raise files.DamagedFileError(f"The Orbax checkpoint {path!r} cannot be read ({e!r}).{hint}") from e
    variables = {g: {v.path: v for v in getattr(model, g)} for g in GROUPS}
    abstract, missing = {}, []
    for group, tree in saved.items():
        mine = variables.get(group, {})
        leaves = layout.flat(tree)
        missing += [p for p in mine if p not in leaves]
        abstract[group] = _nest({
            p: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=mine[p].value.sharding) if p in mine
            else ocp.PLACEHOLDER for p, m in leaves.items()})
    missing += [p for g in GROUPS if g not in saved for p in variables[g]]
    if missing:
        raise ValueError(f"The Orbax checkpoint {path!r} does not hold the model's variables {missing[:5]}: "
                         "build the same model as in training before loading it.")
    with _context(ocp):
        restored = ocp.load_checkpointables(step, {"pytree": abstract})["pytree"]
    for group in GROUPS:
        values = layout.flat(restored.get(group, {}))
        for p, v in variables[group].items():
            v.assign(values[p])


def _nest(flat_tree: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for p, leaf in flat_tree.items():
        *head, last = p.split("/")
        node = tree
        for part in head:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree
