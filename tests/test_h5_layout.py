"""`h5_layout` and the `.weights.h5` engine pinned against the installed Keras:
the files written from host copies have the groups, attributes and datasets of `model.save_weights`,
and stock `model.load_weights` reads them back exactly."""

from __future__ import annotations

import contextlib
import functools

import h5py
import keras
import numpy as np
import pytest

from keras_best.engines.weights_h5 import WeightsEngine, WeightsWriter
from keras_best.keras_adapter import h5_layout, host
from keras_best.storage import files, h5file

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


class Block(keras.layers.Layer):
    """A layer holding layers: as an attribute, in a list, and its own variable."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(units, activation="relu")
        self.stack = [keras.layers.Dense(units), keras.layers.BatchNormalization()]

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x, training=False):
        x = self.inner(x)
        for layer in self.stack:
            x = layer(x, training=training)
        return x * self.scale


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.block = Block(5)
        self.head = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.head(self.block(x, training=training))


def sequential():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                             keras.layers.Dense(1)])


def functional():
    inp = keras.Input((6,))
    shared = keras.layers.Dense(4, name="shared")
    a = shared(inp)
    b = shared(keras.layers.Dense(6)(a))  # the same layer twice: saved once
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([a, b, Block(3)(inp)]))
    return keras.Model(inp, out)


def deep():
    """Many small variables: read in one batch (host.BatchReader)."""
    layers = []
    for _ in range(6):
        layers += [keras.layers.Dense(4), keras.layers.BatchNormalization()]
    return keras.Sequential([keras.Input((6,))] + layers + [keras.layers.Dense(1)])


def subclassed():
    model = Subclassed()
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


def bfloat16():
    with policy("bfloat16"):
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(1)])


BUILDERS = {
    "sequential": sequential,
    "functional": functional,
    "subclassed": subclassed,
    "sequential-compiled": compiled(sequential),
    "functional-compiled": compiled(functional),
    "subclassed-compiled": compiled(subclassed),
    "deep-compiled": compiled(deep),
    "mixed-precision": mixed_precision,
    "bfloat16": bfloat16,
}


@functools.cache
def original(name):
    """One model per kind for the whole module (compiling and fitting is slow);
    each test gives it new weights."""
    return BUILDERS[name]()


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype(np.float32).astype(v.dtype))


def tree(path):
    """Every group and dataset of an h5 file: attributes, dtype, shape, bytes."""
    out = {}

    def attrs(obj):
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in obj.attrs.items()}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = ("dataset", obj.dtype.str, obj.shape, obj[()].tobytes(), attrs(obj))
        else:
            out[name] = ("group", attrs(obj))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        out["/"] = ("group", attrs(f))
    return out


def save_weights(model, path):
    """`model.save_weights(path)` through the engine, from host copies."""
    snapshot = WeightsEngine().snapshot(model)
    assert snapshot.detached  # not model.save_weights
    snapshot.write(path)


def arrays(snapshot):
    """Every array a snapshot writes, in file order."""
    return [a for _, _, entries in snapshot.groups for _, a in entries]


def all_state(model):
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.weights) + (list(optimizer.variables) if optimizer is not None else [])
    return [v.numpy() for v in variables]


def fresh_like(name, model):
    plain = {"sequential": sequential, "functional": functional, "subclassed": subclassed, "deep": deep}
    fresh = plain[name.replace("-compiled", "")]() if name.endswith("-compiled") else BUILDERS[name]()
    if getattr(model, "optimizer", None) is not None:
        if name == "mixed-precision":
            return fresh  # compiled and built by its builder
        fresh.compile(keras.optimizers.Adam(1e-2), "mse")
        fresh.optimizer.build(fresh.trainable_variables)
    return fresh


@pytest.mark.parametrize("name", list(BUILDERS))
def test_file_is_the_one_save_weights_writes(tmp_path, name):
    model = original(name)
    randomize(model, 1)
    ours, theirs = str(tmp_path / "ours.weights.h5"), str(tmp_path / "keras.weights.h5")
    save_weights(model, ours)
    model.save_weights(theirs)
    assert tree(ours) == tree(theirs)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_stock_load_weights_restores_everything(tmp_path, name):
    model = original(name)
    randomize(model, 2)
    if getattr(model, "optimizer", None) is not None:
        model.optimizer.iterations.assign(7)  # (a float16 overflow may have skipped every step)
    path = str(tmp_path / "m.weights.h5")
    snapshot = WeightsWriter().snapshot(model)
    assert snapshot is not None and snapshot.detached
    snapshot.write(path)
    fresh = fresh_like(name, model)
    with policy("float32"):
        fresh.load_weights(path)
    want, got = all_state(model), all_state(fresh)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    if getattr(model, "optimizer", None) is not None:
        assert int(fresh.optimizer.iterations.numpy()) == 7


def test_bfloat16_datasets_are_marked_as_keras_marks_them(tmp_path):
    model = original("bfloat16")
    path = str(tmp_path / "m.weights.h5")
    save_weights(model, path)
    with h5py.File(path, "r") as f:
        kernel = f["layers/dense/vars/0"]
        assert kernel.attrs["dtype"] == "bfloat16"


def test_a_snapshot_holds_the_values_of_its_moment(tmp_path):
    model = sequential()
    randomize(model, 3)
    before = model.get_weights()
    snapshot = WeightsWriter().snapshot(model)
    randomize(model, 4)  # training goes on before the file is written
    path = str(tmp_path / "m.weights.h5")
    snapshot.write(path)
    model.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_a_batched_snapshot_is_not_changed_by_training(tmp_path):
    model = original("deep-compiled")
    assert len(model.weights) + len(model.optimizer.variables) >= host.BatchReader.MIN_VARIABLES
    randomize(model, 5)
    before = all_state(model)
    snapshot = WeightsWriter().snapshot(model)
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)  # in-place updates of every variable
    assert not all(np.array_equal(a, b) for a, b in zip(before, all_state(model)))
    path = str(tmp_path / "m.weights.h5")
    snapshot.write(path)
    model.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(all_state(model), before))


@pytest.mark.parametrize("name", ["sequential", "deep-compiled"])  # few variables / one batched read
def test_a_released_snapshot_lends_its_arrays_to_the_next_one(tmp_path, name):
    from keras_best.storage.buffers import HostBuffers

    model = original(name)
    buffers = HostBuffers()
    writer = WeightsWriter(buffers=buffers)
    randomize(model, 1)
    first_state = all_state(model)
    first = writer.snapshot(model)
    buffers.allow(first.nbytes)
    first_arrays = arrays(first)
    buffers.hold(first_arrays)  # a second holder (as the best weights kept in memory)
    first.write(str(tmp_path / "1.weights.h5"))  # releases the snapshot's own hold
    randomize(model, 2)
    held = writer.snapshot(model)
    # Still held by the second holder: never reused.
    held_arrays = arrays(held)
    assert not any(a is b for a in held_arrays for b in first_arrays)
    held.release()
    buffers.release(first_arrays)  # the last holder is done
    randomize(model, 3)
    third_state = all_state(model)
    third = writer.snapshot(model)
    # The third snapshot copied into arrays already mapped (the first's or the second's)...
    optimizer = getattr(model, "optimizer", None)
    count = len(model.weights) + len(optimizer.variables if optimizer else [])
    mine = [a for a in arrays(third) if any(a is b for b in first_arrays + held_arrays)]
    assert len(mine) == count
    third.write(str(tmp_path / "3.weights.h5"))
    # ...and each file holds the values of its own moment.
    for path, state in (("1.weights.h5", first_state), ("3.weights.h5", third_state)):
        model.load_weights(str(tmp_path / path))
        assert all(np.array_equal(a, b) for a, b in zip(all_state(model), state))


def test_snapshot_shares_its_copies_with_host_copies():
    from keras_best.storage.buffers import HostBuffers

    model = original("sequential-compiled")
    buffers = HostBuffers()
    snapshot = WeightsWriter(buffers=buffers).snapshot(model)
    weights = buffers.copies(model.weights, snapshot.by_variable)
    slots = buffers.copies(model.optimizer.variables, snapshot.by_variable)
    in_file = {id(a) for a in arrays(snapshot)}
    assert all(id(a) in in_file for a in weights + slots)  # no second copy
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(weights, model.weights))
    assert snapshot.nbytes == sum(a.nbytes for a in weights + slots)


def test_layout_follows_a_model_compiled_after_the_first_snapshot(tmp_path):
    model = sequential()
    writer = WeightsWriter()
    first = writer.snapshot(model)
    assert all("optimizer" not in g for g, _, _ in first.groups)
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    path, theirs = str(tmp_path / "a.weights.h5"), str(tmp_path / "b.weights.h5")
    writer.snapshot(model).write(path)
    model.save_weights(theirs)
    assert tree(path) == tree(theirs)
    assert any(g.startswith("optimizer") for g, _, _ in writer.snapshot(model).groups)


def test_capturing_the_layout_keeps_no_copy_of_the_optimizer():
    """Keras's stock `save_own_variables` of an optimizer converts each slot to
    numpy: the capture (which needs only who saves what) keeps none of those
    copies (on torch it held one model size of momentum until the first save ended)."""
    import tracemalloc

    model = keras.Sequential([keras.Input((512,))] + [keras.layers.Dense(512, use_bias=False) for _ in range(4)])
    model.compile(keras.optimizers.SGD(momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    tracemalloc.start()
    try:
        layout = h5_layout.Layout.capture(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert layout.owners and peak < 3 * 512 * 512 * 4  # four 1 MB slots: one (converted twice) at a time


def test_unbuilt_model_is_refused_as_keras_refuses_it():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has not yet been built"):
        WeightsWriter().snapshot(model)


def test_layout_failure_falls_back_to_save_weights(tmp_path, monkeypatch):
    def broken(model, *args):
        raise h5_layout.LayoutError("simulated: Keras's walker changed")

    monkeypatch.setattr(h5_layout, "_capture_owners", broken)
    model = sequential()
    saver = WeightsEngine()
    with pytest.warns(UserWarning, match=r"model.save_weights. in the training thread .*simulated"):
        snapshot = saver.snapshot(model)
    assert not snapshot.detached
    path = str(tmp_path / "m.weights.h5")
    snapshot.write(path)
    fresh = sequential()
    fresh.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights()))


def test_a_model_that_overrides_save_weights_is_saved_with_it(tmp_path):
    calls = []

    class Custom(keras.Sequential):
        def save_weights(self, filepath, **kwargs):
            calls.append(filepath)
            super().save_weights(filepath, **kwargs)

    model = Custom([keras.Input((3,)), keras.layers.Dense(2)])
    snapshot = WeightsEngine().snapshot(model)
    assert not snapshot.detached
    snapshot.write(str(tmp_path / "m.weights.h5"))
    assert calls == [str(tmp_path / "m.weights.h5")]


def test_large_datasets_are_handed_to_the_disk_piece_by_piece(tmp_path, monkeypatch):
    # The final fsync then waits only for the last pieces (see h5file.start_writeback).
    calls = []
    real = h5file.start_writeback
    monkeypatch.setattr(h5file, "start_writeback", lambda fd, offset, n: (calls.append((offset, n)), real(fd, offset, n)))
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(4096, use_bias=False)])  # 16 MiB
    randomize(model, 7)
    path = str(tmp_path / "m.weights.h5")
    files.write_durably(path, WeightsWriter().snapshot(model).write)
    assert len(calls) == 2 and all(n == files.WRITEBACK_BYTES for _, n in calls)
    assert calls[1][0] == calls[0][0] + files.WRITEBACK_BYTES  # consecutive pieces of one dataset
    fresh = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(4096, use_bias=False)])
    fresh.load_weights(path)
    assert np.array_equal(fresh.get_weights()[0], model.get_weights()[0])
