"""`.keras` archives written from host snapshots (`engines.keras_archive`), pinned against the
installed Keras: the same members, config and metadata as `model.save`, the
same datasets in `model.weights.h5`, and stock `keras.models.load_model`
gives back the weights, predictions and optimizer state. Runs on every backend.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import warnings
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_best import BestWeightsTracker
from keras_best.engines import engine_for, keras_archive
from keras_best.engines.keras_archive import KerasEngine
from keras_best.engines.weights_h5 import WeightsWriter
from keras_best.keras_adapter import h5_layout
from keras_best.storage import files
from tests.test_h5_layout import tree

X = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
Y = np.random.default_rng(1).normal(size=(16, 1)).astype("float32")


@contextlib.contextmanager
def policy(name):
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


@keras.saving.register_keras_serializable(package="keras_best_test")
class Block(keras.layers.Layer):
    """Layers as an attribute and in a list, and a variable of its own."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units, activation="relu")
        self.stack = [keras.layers.Dense(units), keras.layers.BatchNormalization()]

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x, training=False):
        x = self.inner(x)
        for layer in self.stack:
            x = layer(x, training=training)
        return x * self.scale

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="keras_best_test")
class Subclassed(keras.Model):
    def __init__(self, units=5, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.block = Block(units)
        self.head = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.head(self.block(x, training=training))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def sequential():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                             keras.layers.Dense(1)])


def functional():
    inp = keras.Input((6,))
    shared = keras.layers.Dense(4, name="shared")
    a = shared(inp)
    b = shared(keras.layers.Dense(6)(a))  # the same layer twice: saved once
    return keras.Model(inp, keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))


def nested():
    inp = keras.Input((6,))
    inner = keras.Sequential([keras.Input((6,)), Block(3), keras.layers.Dense(6)], name="inner")
    return keras.Model(inp, keras.layers.Dense(1)(Block(4)(inner(inp))))


def subclassed():
    model = Subclassed(5)
    model(X[:2])
    return model


def compiled(build):
    def make():
        model = build()
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        model.fit(X, Y, epochs=2, batch_size=8, verbose=0)  # optimizer built, slots non-zero
        return model

    return make


def mixed_precision():
    with policy("mixed_float16"):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                                  keras.layers.Dense(1, dtype="float32")])
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")  # LossScaleOptimizer
        model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    return model


BUILDERS = {
    "sequential-batchnorm": sequential,
    "functional": functional,
    "nested": nested,
    "subclassed": subclassed,
    "sequential-compiled": compiled(sequential),
    "functional-compiled": compiled(functional),
    "nested-compiled": compiled(nested),
    "subclassed-compiled": compiled(subclassed),
    "mixed-precision": mixed_precision,
}


@functools.cache
def original(name):
    return BUILDERS[name]()


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32).astype(v.dtype))  # variances > 0


def state(model):
    """Every variable the archive holds, as host arrays (model, then optimizer)."""
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.weights) + (list(optimizer.variables) if optimizer is not None else [])
    return [ops.convert_to_numpy(v) for v in variables]


def members(path):
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every CRC right
        return {i.filename: (i.compress_type, i.external_attr, zf.read(i.filename)) for i in zf.infolist()}, \
            [i.filename for i in zf.infolist()]


def write(model, path):
    snapshot = KerasEngine().snapshot(model)
    assert isinstance(snapshot, keras_archive.ArchiveSnapshot) and snapshot.detached
    snapshot.write(path)


# ----------------------------------------------------------------- round trips
def same(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_stock_load_model_gives_back_weights_predictions_and_optimizer(tmp_path, name):
    model = original(name)
    randomize(model, 1)
    if getattr(model, "optimizer", None) is not None:
        model.optimizer.iterations.assign(7)
    ours, theirs = str(tmp_path / "ours.keras"), str(tmp_path / "keras.keras")
    write(model, ours)
    model.save(theirs)
    with warnings.catch_warnings():
        # Keras does not load a LossScaleOptimizer's slots from its own files either.
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        loaded, reference = keras.models.load_model(ours), keras.models.load_model(theirs)
    assert same(state(loaded), state(reference))  # what Keras gives back from its own file
    assert same([ops.convert_to_numpy(v) for v in loaded.weights], [ops.convert_to_numpy(v) for v in model.weights])
    if name != "mixed-precision":
        assert same(state(loaded), state(model))  # optimizer slots included
    assert np.array_equal(ops.convert_to_numpy(model(X, training=False)),
                          ops.convert_to_numpy(loaded(X, training=False)))
    if getattr(model, "optimizer", None) is not None:
        assert type(loaded.optimizer) is type(reference.optimizer)
        if name != "mixed-precision":
            assert int(ops.convert_to_numpy(loaded.optimizer.iterations)) == 7


@pytest.mark.parametrize("name", list(BUILDERS))
def test_archive_is_the_one_model_save_writes(tmp_path, name):
    model = original(name)
    randomize(model, 2)
    ours, theirs = str(tmp_path / "ours.keras"), str(tmp_path / "keras.keras")
    write(model, ours)
    model.save(theirs)
    (ours_members, ours_order), (theirs_members, theirs_order) = members(ours), members(theirs)
    metadata, config, weights = h5_layout.archive_names()
    assert ours_order == theirs_order == [metadata, config, weights]
    for name_ in ours_order:  # stored, not compressed; the same permissions
        assert ours_members[name_][:2] == theirs_members[name_][:2] == (zipfile.ZIP_STORED, 0o600 << 16)
    assert json.loads(ours_members[config][2]) == json.loads(theirs_members[config][2])
    ours_meta, theirs_meta = json.loads(ours_members[metadata][2]), json.loads(theirs_members[metadata][2])
    assert ours_meta.pop("date_saved") and theirs_meta.pop("date_saved")
    assert ours_meta == theirs_meta == {"keras_version": keras.__version__}
    for label, data in (("ours", ours_members[weights][2]), ("theirs", theirs_members[weights][2])):
        (tmp_path / f"{label}.weights.h5").write_bytes(data)
    assert tree(str(tmp_path / "ours.weights.h5")) == tree(str(tmp_path / "theirs.weights.h5"))


def test_the_weights_member_has_the_layout_of_save_weights(tmp_path):
    model = original("subclassed-compiled")
    path = str(tmp_path / "m.keras")
    write(model, path)
    with zipfile.ZipFile(path) as zf:
        (tmp_path / "member.weights.h5").write_bytes(zf.read(h5_layout.archive_names()[2]))
    model.save_weights(str(tmp_path / "keras.weights.h5"))
    assert tree(str(tmp_path / "member.weights.h5")) == tree(str(tmp_path / "keras.weights.h5"))


def test_a_snapshot_holds_the_values_of_its_moment(tmp_path):
    model = sequential()
    randomize(model, 3)
    before = state(model)
    snapshot = KerasEngine().snapshot(model)
    randomize(model, 4)  # training goes on before the file is written
    path = str(tmp_path / "m.keras")
    thread = threading.Thread(target=snapshot.write, args=(path,))  # as the background writer does
    thread.start()
    thread.join()
    assert all(np.array_equal(a, b) for a, b in zip(state(keras.models.load_model(path)), before))


# ------------------------------------------------------------------ fallbacks
@keras.saving.register_keras_serializable(package="keras_best_test")
class Words(keras.layers.Layer):
    """Saves its words as an asset file (as `StringLookup` saves an adapted vocabulary)."""

    def __init__(self, words=(), **kwargs):
        super().__init__(**kwargs)
        self.words = list(words)

    def call(self, x):
        return x

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, "words.txt"), "w") as f:
            f.write("\n".join(self.words))

    def load_assets(self, dir_path):
        with open(os.path.join(dir_path, "words.txt")) as f:
            self.words = f.read().split("\n")


def test_a_model_with_assets_is_saved_with_model_save_and_one_warning(tmp_path):
    model = keras.Sequential([keras.Input((2,)), Words(["a", "b"], name="words"), keras.layers.Dense(1)])
    saver = KerasEngine()
    with pytest.warns(UserWarning, match=r"`model.save` in the training thread .*Words at 'layers/words' saves "
                                         r"assets"):
        snapshot = saver.snapshot(model)
    assert not snapshot.detached
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert not saver.snapshot(model).detached
    path = str(tmp_path / "m.keras")
    snapshot.write(path)
    with zipfile.ZipFile(path) as zf:
        assert "assets/layers/words/words.txt" in zf.namelist()
    assert keras.models.load_model(path).get_layer("words").words == ["a", "b"]
    # The weights alone need no assets: still written from host copies.
    assert WeightsWriter().snapshot(model) is not None


def test_a_config_that_cannot_be_serialized_falls_back_with_a_warning(tmp_path, monkeypatch):
    def broken(model):
        raise TypeError("simulated: get_config failed")

    monkeypatch.setattr(h5_layout, "model_json", broken)
    model = sequential()
    with pytest.warns(UserWarning, match=r"`model.save` in the training thread .*config could not be "
                                         r"serialized.*simulated"):
        snapshot = KerasEngine().snapshot(model)
    assert not snapshot.detached
    monkeypatch.undo()
    snapshot.write(str(tmp_path / "m.keras"))  # model.save, Keras's own way
    assert keras.models.load_model(str(tmp_path / "m.keras")).count_params() == model.count_params()


def test_a_model_that_overrides_save_and_legacy_h5_files_use_model_save(tmp_path):
    calls = []

    class Custom(keras.Sequential):
        def save(self, filepath, *args, **kwargs):
            calls.append(filepath)
            super().save(filepath, *args, **kwargs)

    model = Custom([keras.Input((3,)), keras.layers.Dense(2)])
    snapshot = KerasEngine().snapshot(model)
    assert not snapshot.detached
    snapshot.write(str(tmp_path / "m.keras"))
    assert calls == [str(tmp_path / "m.keras")]
    assert not engine_for("keras", "best.h5").snapshot(sequential()).detached


# ------------------------------------------------------------ the tracker
def test_the_tracker_writes_keras_files_in_the_background(tmp_path, monkeypatch):
    model = sequential()
    randomize(model, 5)
    at_update = state(model)
    tracker = BestWeightsTracker(model, str(tmp_path / "best.keras"), verbose=0)
    gate, started = threading.Event(), threading.Event()
    real = keras_archive.write_archive

    def slow(*args, **kwargs):  # a slow disk, in the writer thread
        started.set()
        assert gate.wait(60)
        assert threading.current_thread() is not threading.main_thread()
        real(*args, **kwargs)

    monkeypatch.setattr(keras_archive, "write_archive", slow)
    tracker.update(0, {"val_loss": 1.0})  # returns while the archive is being written
    assert started.wait(60)
    randomize(model, 6)  # training goes on
    assert not any(n.endswith("best.keras") for n in os.listdir(tmp_path))
    gate.set()
    tracker.finish()
    assert [n for n in os.listdir(tmp_path) if files.is_tmp_name(n)] == []
    loaded = keras.models.load_model(str(tmp_path / "best.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(state(loaded), at_update))
