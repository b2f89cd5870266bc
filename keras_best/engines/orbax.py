"""Orbax checkpoint directories: model-parallel saves, each process writing its own shards.

A save is a directory laid out as `keras.callbacks.OrbaxCheckpoint` writes
one step (`<name>/0/pytree`, `<name>/0/model_config`), so
`keras.models.load_model(name)` and `model.load_weights(name)` read it where
Keras reads Orbax directories. The values saved are the variables' own
(sharded) device arrays: nothing is gathered on one host.

The snapshot is `collective`: every process calls `start(path)` in the
training thread at the same temp path (`names.shared_tmp_path`), which starts
Orbax's async save (`keras_best.storage.orbax.AsyncSave`). The chief's writer
then waits for that commit (`write`) before keras-best renames the directory
into place and records it. A peer that stops answering fails the save after
`ORBAX_TIMEOUT_S` seconds (Orbax's barrier), instead of hanging.

Example:
    >>> engine = OrbaxEngine()  # doctest: +SKIP
    >>> snapshot = engine.snapshot(model)  # doctest: +SKIP
    >>> snapshot.start("runs/x/.kb-tmp-0123456789ab-best")  # every process  # doctest: +SKIP
    >>> snapshot.write("runs/x/.kb-tmp-0123456789ab-best")  # waits for the commit  # doctest: +SKIP
    >>> engine.load(model, "runs/x/best")  # onto the model's current layout  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from keras_best.core.formats import ORBAX
from keras_best.engines.base import Engine, Snapshot
from keras_best.keras_adapter import layout
from keras_best.storage import orbax
from keras_best.storage.orbax import AsyncSave, require_orbax

GROUPS = ("trainable_variables", "non_trainable_variables")


class OrbaxSnapshot(Snapshot):
    """The model's device arrays (no host copy of ours), saved by every process."""

    detached = True  # `write` only waits for Orbax's own thread
    collective = True  # every process calls `start` at the same path

    def __init__(self, payload: dict[str, Any]) -> None:
        self.save = AsyncSave(payload)

    def start(self, path: str) -> None:
        """Start Orbax's save of this process's shards into the directory `path`
        (every process, in the training thread, same `path`)."""
        self.save.start(path)

    def write(self, path: str) -> None:
        if not self.save.started and self.save.payload:
            self.start(path)  # one process, no `start` yet (not called by the runner)
        self.save.wait()

    def release(self) -> None:
        self.save.payload = {}


class OrbaxEngine(Engine):
    """Orbax checkpoint directories (see the module docstring)."""

    format = ORBAX

    def __init__(self) -> None:
        require_orbax()  # a clear ImportError at construction

    def snapshot(self, model: Any, stream: bool = False) -> Snapshot:
        payload: dict[str, Any] = {"pytree": {
            "trainable_variables": layout.state_tree(model.trainable_variables),
            "non_trainable_variables": layout.state_tree(model.non_trainable_variables),
        }}
        try:
            payload["model_config"] = layout.model_config(model)
        except Exception:  # noqa: BLE001 - a model without a config: load_weights still reads it
            pass
        return OrbaxSnapshot(payload)

    def wait(self) -> None:
        """Wait for this process's last Orbax save (its error is raised)."""
        orbax.wait_pending()

    def weights_file(self, path: str) -> str:
        return path

    def load(self, model: Any, path: str, hint: str = "", skip_mismatch: bool = False,
             only: Any = None) -> list[Any]:
        if skip_mismatch or only is not None:
            raise ValueError("Partial restore (`skip_mismatch=`, `only=`) reads weights files; an Orbax "
                             "run restores whole models. Load it whole, then copy the layers you need.")
        load(model, path, hint)
        return []


def load(model: Any, path: str, hint: str = "") -> None:
    """Load the weights saved at `path` onto `model`'s current layout: each array
    is read straight into the sharding of the model's variable (another mesh,
    one device), what the model does not hold is left on disk."""
    import jax

    step, saved = orbax.metadata(path, hint)
    variables = {g: {v.path: v for v in getattr(model, g)} for g in GROUPS}
    abstract, missing = {}, []
    for group, tree in saved.items():
        mine = variables.get(group, {})
        leaves = layout.flat(tree)
        missing += [p for p in mine if p not in leaves]
        abstract[group] = orbax.nest({
            p: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=mine[p].value.sharding) if p in mine
            else orbax.placeholder() for p, m in leaves.items()})
    missing += [p for g in GROUPS if g not in saved for p in variables[g]]
    if missing:
        raise ValueError(f"The Orbax checkpoint {path!r} does not hold the model's variables {missing[:5]}: "
                         "build the same model as in training before loading it.")
    restored = orbax.restore(step, abstract)
    for group in GROUPS:
        values = layout.flat(restored.get(group, {}))
        for p, v in variables[group].items():
            v.assign(values[p])
