"""SavedModel exports, with the Keras weights beside them.

On the TensorFlow backend, outside a distribution strategy, an export is
written from host copies in the background: a twin of the model (a clone on
the host CPU, its `serve` endpoint traced once) takes the snapshot's weights
in the writer thread and writes the SavedModel there, so the training thread
waits only for the host copies. A model that cannot be cloned so (no
`get_config`, a clone whose variables differ, any error) is exported with
`model.export` in the training thread, with one warning saying why; so is,
silently, a model class that overrides `export`.

Example:
    >>> snapshot = SavedModelEngine().snapshot(model)  # doctest: +SKIP
    >>> snapshot.write("export")  # in any thread when `snapshot.detached`  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

from keras_best.core.formats import EXPORT_WEIGHTS_NAME, SAVEDMODEL
from keras_best.engines.base import Engine, LiveSnapshot, Snapshot
from keras_best.engines.weights_h5 import OnWeights, WeightsSnapshot, WeightsWriter
from keras_best.keras_adapter.h5_layout import export_signature
from keras_best.storage.buffers import HostBuffers


def export(model: Any, path: str) -> None:
    """Export the live `model` at the local `path`: `model.export` then its
    weights as `EXPORT_WEIGHTS_NAME` inside the export (in the calling thread)."""
    model.export(path, format="tf_saved_model", verbose=False)
    model.save_weights(os.path.join(path, EXPORT_WEIGHTS_NAME))


class SavedModelEngine(Engine):
    """SavedModel exports, in the background where a twin of the model can
    write them (see the module docstring)."""

    format = SAVEDMODEL

    def __init__(self, buffers: HostBuffers | None = None) -> None:
        self._weights = WeightsWriter(buffers=buffers)
        self._twin: _Twin | None = None
        self._refused: int | None = None  # id of a model exported in the training thread

    def snapshot(self, model: Any, stream: bool = False) -> Snapshot:
        twin = None if stream else self._twin_of(model)  # streamed: `model.export`, no host copy
        weights = self._weights.snapshot(model) if twin is not None else None
        if weights is None or any(id(v) not in weights.by_variable for v in model.weights):
            return LiveSnapshot(model, export)
        return ExportSnapshot(twin, [weights.by_variable[id(v)] for v in model.weights], weights)

    def weights_file(self, path: str) -> str:
        return path.rstrip("/") + "/" + EXPORT_WEIGHTS_NAME

    def _twin_of(self, model: Any) -> _Twin | None:
        import keras

        if self._refused == id(model) or keras.backend.backend() != "tensorflow":
            return None
        if type(model).export is not keras.Model.export:
            return None  # the model's own export
        import tensorflow as tf

        if tf.distribute.has_strategy():
            return None  # every worker takes part in the export (see `distribute`)
        if self._twin is not None and self._twin.fits(model):
            return self._twin
        try:
            self._twin = _Twin(model)
        except Exception as e:  # noqa: BLE001 - any reason: export the live model, and say why
            self._twin, self._refused = None, id(model)
            warnings.warn(
                f"keras-best exports this model with `model.export` in the training thread (a twin "
                f"for background exports could not be made: {e!r}); SavedModel exports are not in "
                "the background for it. Give the model a `get_config()`, or pass "
                "export_at_finish=True to export once, at the end.",
                stacklevel=5,
            )
            return None
        return self._twin


class ExportSnapshot(OnWeights):
    """A SavedModel export as host copies: written by the model's twin (its
    `arrays` are the weights' own copies, in `model.weights` order)."""

    def __init__(self, twin: _Twin, arrays: list[Any], weights: WeightsSnapshot) -> None:
        super().__init__(weights)
        self.twin, self.arrays = twin, arrays

    def write(self, path: str) -> None:
        try:
            self.twin.export(path, self.arrays)
            self.weights.write(os.path.join(path, EXPORT_WEIGHTS_NAME))
        finally:
            self.release()

    def release(self) -> None:
        self.arrays = []
        super().release()


class _Twin:
    """A clone of a model on the host CPU with its `serve` endpoint traced
    once; `export(path, arrays)` writes a SavedModel with those weights, in
    any one thread at a time."""

    def __init__(self, model: Any) -> None:
        import keras
        import tensorflow as tf

        with tf.device("/CPU:0"):
            twin = keras.models.clone_model(model)
            if not twin.built and model.get_build_config():
                twin.build_from_config(model.get_build_config())
        self.shapes = _shapes(model)
        if _shapes(twin) != self.shapes:
            raise ValueError("its clone does not have the same variables")
        self.model, self.source = twin, model
        self.archive = keras.export.ExportArchive()
        self.archive.track_and_add_endpoint("serve", twin, export_signature(model))
        self._lock = threading.Lock()

    def fits(self, model: Any) -> bool:
        return self.source is model and _shapes(model) == self.shapes

    def export(self, path: str, arrays: list[Any]) -> None:
        with self._lock:
            self.model.set_weights(arrays)
            self.archive.write_out(path, verbose=False)


def _shapes(model: Any) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(v.shape), str(v.dtype)) for v in model.weights]
