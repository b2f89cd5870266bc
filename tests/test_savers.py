"""What gets saved, read back with stock Keras / TensorFlow loaders."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_best import BestWeightsTracker, load_best
from keras_best.core import formats
from keras_best.engines import engine_for
from keras_best.engines.savedmodel import ExportSnapshot
from tests.conftest import make_model, perturb, run_json, weights_equal


# -------------------------------------------------------------- resolve_format
@pytest.mark.parametrize(
    "filepath,save_format,expected",
    [
        ("best.weights.h5", None, "weights"),
        ("runs/{epoch:02d}.weights.h5", None, "weights"),
        ("best.keras", None, "keras"),
        ("export/best", "savedmodel", "savedmodel"),
        ("export/best", "tf", "savedmodel"),
        ("best.weights.h5", "weights", "weights"),
        ("best.weights.h5", "h5", "weights"),
        ("best.keras", "keras", "keras"),
        ("best", None, "orbax"),  # no file extension: an Orbax checkpoint directory
        ("best-{epoch:03d}-{val_loss:.4f}", None, "orbax"),
        ("best", "orbax", "orbax"),
    ],
)
def test_resolve_format(filepath, save_format, expected):
    assert formats.resolve_format(filepath, save_format) == expected


@pytest.mark.parametrize(
    "filepath,save_format,match",
    [
        ("best.h5", None, r"End it in `\.weights\.h5` \(weights\), `\.keras`.*Received: filepath=best\.h5"),
        ("best.keras", "orbax", r'save_format="orbax" saves each kept best as an Orbax checkpoint directory'),
        ("best.weights", None, r"Received: filepath=best\.weights$"),
        ("best.h5", "weights", r"The filename must end in `\.weights\.h5`. Received: filepath=best\.h5"),
        (
            "best.weights.h5",
            "savedmodel",
            r'save_format="savedmodel" writes a directory.*Received: filepath=',
        ),
        ("best.keras", "savedmodel", r"without `\.weights\.h5`/`\.keras`"),
        ("best.weights.h5", "keras", r"The filename must end in `\.keras`"),
        ("best.weights.h5", "onnx", r"`save_format` must be one of .*Received: save_format='onnx'"),
    ],
)
def test_resolve_format_errors(filepath, save_format, match):
    with pytest.raises(ValueError, match=match):
        formats.resolve_format(filepath, save_format)


def test_weights_file():
    assert engine_for("weights").weights_file("d/best.weights.h5") == "d/best.weights.h5"
    assert engine_for("savedmodel").weights_file("d/export/") == "d/export/" + formats.EXPORT_WEIGHTS_NAME


# ---------------------------------------------------- engines, stock loaders
def test_weights_saver_round_trip(tmp_path):
    model = make_model()
    path = str(tmp_path / "w.weights.h5")
    engine_for("weights").snapshot(model).write(path)
    fresh = make_model(seed=9)
    fresh.load_weights(path)
    assert weights_equal(fresh, model)


def test_keras_saver_round_trip(tmp_path):
    model = make_model()
    path = str(tmp_path / "m.keras")
    engine_for("keras").snapshot(model).write(path)
    loaded = keras.models.load_model(path)
    assert weights_equal(loaded, model)


# ---------------------------------------------------- tracker round trips
def _drive(tracker, model, values, seed0=100):
    """Give the model new weights each epoch; return the weights per epoch."""
    per_epoch = []
    for epoch, v in enumerate(values):
        perturb(model, seed0 + epoch)
        per_epoch.append(model.get_weights())
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    return per_epoch


def _equal(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_weights_file_holds_the_best_epoch(tmp_path):
    model = make_model()
    path = str(tmp_path / "best.weights.h5")
    tracker = BestWeightsTracker(model, path, verbose=0)
    per_epoch = _drive(tracker, model, [0.5, 0.3, 0.4, 0.35])
    assert tracker.best_epoch == 1 and tracker.best_path == path
    fresh = make_model(seed=9)
    fresh.load_weights(path)  # stock Keras
    assert _equal(fresh.get_weights(), per_epoch[1])
    assert not _equal(model.get_weights(), per_epoch[1])  # the model moved on


def test_keras_file_holds_the_best_epoch(tmp_path):
    model = make_model()
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    path = str(tmp_path / "best.keras")
    tracker = BestWeightsTracker(model, path, verbose=0)
    per_epoch = _drive(tracker, model, [0.5, 0.6, 0.2, 0.3])
    loaded = keras.models.load_model(path)  # stock Keras
    assert _equal(loaded.get_weights(), per_epoch[2])
    assert loaded.loss == "mse"  # a full model: compile config included
    fresh = make_model(seed=9)
    rec = load_best(fresh, str(tmp_path))
    assert rec.epoch == 2 and _equal(fresh.get_weights(), per_epoch[2])


def _serve(path, x):
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    (out,) = fn(**{next(iter(fn.structured_input_signature[1])): tf.constant(x)}).values()
    return out.numpy()


def test_savedmodel_holds_the_best_epoch(tmp_path):
    model = make_model()
    path = str(tmp_path / "export")
    tracker = BestWeightsTracker(model, path, save_format="savedmodel", verbose=0)
    per_epoch = _drive(tracker, model, [0.5, 0.3, 0.4])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    model.set_weights(per_epoch[1])
    np.testing.assert_allclose(_serve(path, x), model.predict(x, verbose=0), rtol=1e-6)
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    np.testing.assert_allclose(layer(x), model.predict(x, verbose=0), rtol=1e-6)
    fresh = make_model(seed=9)
    rec = load_best(fresh, str(tmp_path))
    assert rec.epoch == 1 and _equal(fresh.get_weights(), per_epoch[1])


def test_export_at_finish_exports_once_from_the_best(tmp_path):
    model = make_model()
    path = str(tmp_path / "export")
    tracker = BestWeightsTracker(model, path, save_format="savedmodel", export_at_finish=True, verbose=0)
    for epoch, v in enumerate([0.5, 0.3, 0.4]):
        perturb(model, 100 + epoch)
        if epoch == 1:
            best = model.get_weights()
        tracker.update(epoch, {"val_loss": v})
        assert not os.path.exists(path)  # no export while training
    last = model.get_weights()
    tracker.finish()
    assert _equal(model.get_weights(), last)  # finish() leaves the model as it was
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    model.set_weights(best)
    np.testing.assert_allclose(_serve(path, x), model.predict(x, verbose=0), rtol=1e-6)
    data = run_json(tmp_path)
    assert data["export"] == "export" and data["best"]["epoch"] == 1
    fresh = make_model(seed=9)
    assert load_best(fresh, str(tmp_path)).epoch == 1 and _equal(fresh.get_weights(), best)


def test_export_at_finish_needs_savedmodel(tmp_path):
    with pytest.raises(ValueError, match=r'`export_at_finish=True` needs save_format="savedmodel"'):
        BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), export_at_finish=True)


# ------------------------------------------------- SavedModel in the background
@keras.saving.register_keras_serializable(package="keras_best_tests")
class Block(keras.layers.Layer):
    """A custom layer with a config (clonable)."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return keras.ops.relu(self.dense(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class NoConfig(keras.Model):
    """A subclassed model with no get_config: cannot be cloned."""

    def __init__(self, flag):
        super().__init__()
        self.flag = flag
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def _export_models():
    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(5)(inputs))
    functional = keras.Model(inputs, keras.layers.Dense(2)(Block()(hidden)))
    nested = keras.Sequential([keras.Input((4,)), keras.Sequential([keras.layers.Dense(3), Block(2)])])
    return {"sequential": make_model(), "functional-batchnorm-custom": functional, "nested": nested}


@pytest.mark.parametrize("name", ["sequential", "functional-batchnorm-custom", "nested"])
def test_background_exports_serve_their_own_epoch_like_model_export(tmp_path, name):
    model = _export_models()[name]
    model.compile(keras.optimizers.Adam(), "mse")
    template = str(tmp_path / "export-{epoch}")
    tracker = BestWeightsTracker(model, template, save_format="savedmodel", keep_top_k=2, verbose=0)
    assert isinstance(tracker._run.engine.snapshot(model), ExportSnapshot)  # written by the writer
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    per_epoch = []
    for epoch, v in enumerate([0.5, 0.3, 0.4, 0.2]):
        perturb(model, 100 + epoch)
        per_epoch.append(model.get_weights())
        tracker.update(epoch, {"val_loss": v})
        tracker.flush()
    assert tracker._run.buffers.reused_bytes > 0  # later exports copy into the host arrays of earlier ones
    tracker.finish()
    kept = {r["epoch"]: r["path"] for r in run_json(tmp_path)["kept"]}
    assert sorted(kept) == [1, 3]
    for epoch, rel in kept.items():
        model.set_weights(per_epoch[epoch])
        expected = model.predict(x, verbose=0)
        reference = str(tmp_path / f"reference-{epoch}")
        model.export(reference, format="tf_saved_model", verbose=False)  # Keras's own, same weights
        np.testing.assert_allclose(_serve(str(tmp_path / rel), x), expected, rtol=1e-6)
        np.testing.assert_allclose(_serve(str(tmp_path / rel), x), _serve(reference, x), rtol=1e-6)
        ours, theirs = tf.saved_model.load(str(tmp_path / rel)), tf.saved_model.load(reference)
        assert sorted(ours.signatures) == sorted(theirs.signatures)
        assert (ours.signatures["serving_default"].structured_input_signature
                == theirs.signatures["serving_default"].structured_input_signature)
        layer = keras.layers.TFSMLayer(str(tmp_path / rel), call_endpoint="serve")
        np.testing.assert_allclose(layer(x), expected, rtol=1e-6)
    fresh = _export_models()[name]
    assert load_best(fresh, str(tmp_path)).epoch == 3 and _equal(fresh.get_weights(), per_epoch[3])


def test_a_model_without_config_is_exported_in_the_training_thread_with_one_warning(tmp_path):
    model = NoConfig(flag=True)
    model(np.zeros((1, 4), "float32"))
    path = str(tmp_path / "export")
    tracker = BestWeightsTracker(model, path, save_format="savedmodel", verbose=0)
    with pytest.warns(UserWarning, match=r"exports this model with `model.export` in the training thread") as seen:
        per_epoch = _drive(tracker, model, [0.5, 0.3, 0.4])
    assert len([w for w in seen if "training thread" in str(w.message)]) == 1
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    model.set_weights(per_epoch[1])
    np.testing.assert_allclose(_serve(path, x), model.predict(x, verbose=0), rtol=1e-6)
