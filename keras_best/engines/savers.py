"""How to write a model: weights, full `.keras` model, or SavedModel export.

A saver is told what to write and where; it decides nothing. Each `write`
produces a complete file (or directory) at a local path, which the writer
then fsyncs and renames into place.

Saving is split in two so that training never waits for the disk:
`saver.snapshot(model)` runs in the training thread and returns an object
whose `write(path)` writes the file. When the snapshot is `detached` (it holds
host copies of the variables and no reference to live Keras state) the writer
may call `write` in its background thread; otherwise the tracker calls it at
once, in the training thread.

Which formats are written in the background:
- `.weights.h5`: yes. The snapshot costs one host copy of each variable, as
  cheap as `[v.numpy() for v in model.weights]`; the file is written with plain
  h5py in the layout `model.save_weights` uses (see `h5_layout`). A model
  whose layout cannot be captured falls back to `model.save_weights` in the
  training thread, with a warning; so does, silently, a model class that
  overrides `save_weights` (its own method is called).
- `.keras`: yes. The snapshot adds the model's config and metadata JSON to
  the host copies of the `.weights.h5` snapshot (the archive's
  `model.weights.h5` member has the same layout); the zip file is written
  with zipfile and h5py (see `archive`). A model that cannot be captured so
  (an object saving assets, such as a `StringLookup`, or any capture error)
  falls back to `model.save` in the training thread, with a warning; so do,
  silently, a model class that overrides `save` and legacy `.h5` full-model
  files.
- SavedModel export: yes on TensorFlow, outside a distribution strategy: a
  twin of the model (cloned on the host CPU once, its endpoint traced once)
  takes the host copies and writes the export in the writer thread (see
  `SavedModelSaver`); otherwise `model.export` in the training thread.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

from keras_best.core.formats import EXPORT_WEIGHTS_NAME, FORMATS, KERAS, SAVEDMODEL, WEIGHTS, resolve_format  # noqa: F401
from keras_best.storage.buffers import HostBuffers


class Snapshot:
    """What a saver captured of a model; `write(path)` writes it to a local path.

    `detached` snapshots hold host copies only (no live Keras state), so their
    `write` may run in a background thread, after training has moved on.
    """

    detached: bool = False

    def write(self, path: str) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Done with this snapshot, written or not (its host copies may be reused)."""


class LiveSnapshot(Snapshot):
    """Not detached: `write` saves the live model, so it must run at once."""

    def __init__(self, saver: Saver, model: Any) -> None:
        self.saver, self.model = saver, model

    def write(self, path: str) -> None:
        self.saver.write(self.model, path)


class Saver:
    """Writes `model` in one format to a local path."""

    format: str = ""

    def snapshot(self, model: Any) -> Snapshot:
        """Capture `model` in the calling (training) thread; see `Snapshot`."""
        return LiveSnapshot(self, model)

    def write(self, model: Any, path: str) -> None:
        raise NotImplementedError


class _SaveWeights(Saver):
    format = WEIGHTS

    def write(self, model: Any, path: str) -> None:
        model.save_weights(path)


class WeightsSaver(Saver):
    """`.weights.h5` files, written from host copies (see `h5_layout`)."""

    format = WEIGHTS

    def __init__(self, buffers: HostBuffers | None = None) -> None:
        from keras_best.keras_adapter.h5_layout import WeightsWriter

        self._weights = WeightsWriter(buffers=buffers)

    def snapshot(self, model: Any) -> Snapshot:
        import keras

        if type(model).save_weights is not keras.Model.save_weights:
            return LiveSnapshot(_SaveWeights(), model)  # the model's own save_weights
        snap = self._weights.snapshot(model)
        return LiveSnapshot(_SaveWeights(), model) if snap is None else snap

    def write(self, model: Any, path: str) -> None:
        self.snapshot(model).write(path)


class _Save(Saver):
    format = KERAS

    def write(self, model: Any, path: str) -> None:
        model.save(path)


class KerasSaver(Saver):
    """`.keras` archives, written from host copies (see `archive`); legacy
    `.h5` full-model files (`legacy_h5=True`) with `model.save`."""

    format = KERAS

    def __init__(self, legacy_h5: bool = False, buffers: HostBuffers | None = None) -> None:
        from keras_best.engines.archive import ArchiveWriter

        self._legacy_h5 = legacy_h5
        self._archive = ArchiveWriter(buffers)

    def snapshot(self, model: Any) -> Snapshot:
        import keras

        if self._legacy_h5 or type(model).save is not keras.Model.save:
            return LiveSnapshot(_Save(), model)  # legacy format, or the model's own save
        snap = self._archive.snapshot(model)
        return LiveSnapshot(_Save(), model) if snap is None else snap

    def write(self, model: Any, path: str) -> None:
        if not path.endswith(".keras"):
            model.save(path)
            return
        self.snapshot(model).write(path)


class SavedModelSaver(Saver):
    """SavedModel exports with the Keras weights beside them.

    On the TensorFlow backend, outside a distribution strategy, an export is
    written from host copies in the background: a twin of the model (a clone
    on the host CPU, its `serve` endpoint traced once) takes the snapshot's
    weights in the writer thread and writes the SavedModel there, so the
    training thread waits only for the host copies. A model that cannot be
    cloned so (no `get_config`, a clone whose variables differ, any error) is
    exported with `model.export` in the training thread, with one warning
    saying why; so is, silently, a model class that overrides `export`.
    """

    format = SAVEDMODEL

    def __init__(self, buffers: HostBuffers | None = None) -> None:
        from keras_best.keras_adapter.h5_layout import WeightsWriter

        self._weights = WeightsWriter(buffers=buffers)
        self._twin: _Twin | None = None
        self._refused: int | None = None  # id of a model exported in the training thread

    def snapshot(self, model: Any) -> Snapshot:
        twin = self._twin_of(model)
        weights = self._weights.snapshot(model) if twin is not None else None
        if weights is None or any(id(v) not in weights.by_variable for v in model.weights):
            return LiveSnapshot(self, model)
        return ExportSnapshot(twin, [weights.by_variable[id(v)] for v in model.weights], weights)

    def write(self, model: Any, path: str) -> None:
        model.export(path, format="tf_saved_model", verbose=False)
        model.save_weights(os.path.join(path, EXPORT_WEIGHTS_NAME))

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


class _Twin:
    """A clone of a model on the host CPU with its `serve` endpoint traced
    once; `export(path, arrays)` writes a SavedModel with those weights, in
    any one thread at a time."""

    def __init__(self, model: Any) -> None:
        import keras
        import tensorflow as tf

        from keras_best.keras_adapter.h5_layout import export_signature

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


class ExportSnapshot(Snapshot):
    """A SavedModel export as host copies: written by the model's twin."""

    detached = True

    def __init__(self, twin: _Twin, arrays: list[Any], weights: Any) -> None:
        self.twin, self.arrays, self.weights = twin, arrays, weights

    @property
    def by_variable(self) -> dict[int, Any]:
        return self.weights.by_variable

    def write(self, path: str) -> None:
        try:
            self.twin.export(path, self.arrays)
            self.weights.write(os.path.join(path, EXPORT_WEIGHTS_NAME))
        finally:
            self.release()

    def release(self) -> None:
        self.arrays = []
        self.weights.release()


def saver_for(fmt: str, filepath: str = "", buffers: HostBuffers | None = None) -> Saver:
    """The saver of format `fmt` for files named like `filepath`; its
    snapshots copy into (and are held in) `buffers` when given."""
    if fmt == KERAS:
        return KerasSaver(legacy_h5=str(filepath).endswith(".h5"), buffers=buffers)
    if fmt == WEIGHTS:
        return WeightsSaver(buffers)
    return SavedModelSaver(buffers)


def weights_file(path: str, fmt: str) -> str:
    """The file inside a saved `path` that `model.load_weights` reads."""
    if fmt == SAVEDMODEL:
        return path.rstrip("/") + "/" + EXPORT_WEIGHTS_NAME
    return path
