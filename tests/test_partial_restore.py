"""Partial restore: `load_best(..., only=)` and `skip_mismatch=True`, for every saved form.

A new model with the same backbone and another head loads the best's backbone
exactly and leaves its head as it was; without either option the mismatch is
an error naming the variables, and nothing changes. `skip_mismatch=True` does
what stock Keras's `model.load_weights(path, skip_mismatch=True)` does.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker, load_best
from keras_best.frontends.loading import read_best

FORMATS = {
    "weights": ("best.weights.h5", {}),
    "keras": ("best.keras", {}),
    "sharded": ("best.weights.json", {"max_shard_size": 0.000001}),  # several shards
}


def make(head: int, seed: int, optimizer: bool = False) -> keras.Model:
    """A backbone (a nested model named "backbone", with BatchNorm statistics) and a Dense head."""
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.BatchNormalization()],
        name="backbone",
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(head, name="head")(backbone(inputs)))
    if optimizer:
        model.compile(optimizer="adam", loss="mse")
        model.optimizer.build(model.trainable_variables)
    return model


def values(layer) -> list[np.ndarray]:
    return [np.array(w) for w in layer.get_weights()]


def slots(optimizer) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in optimizer.variables]


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def run(tmp_path, fmt: str, optimizer: bool = False) -> tuple[str, keras.Model]:
    """A finished run of a 3-unit-head model whose best is its second update; returns the
    directory and a model holding the best's weights."""
    name, options = FORMATS[fmt]
    model = make(3, seed=0, optimizer=optimizer)
    tracker = BestWeightsTracker(model, str(tmp_path / name), verbose=0, **options)
    rng = np.random.default_rng(1)
    best = None
    for epoch, loss in enumerate([0.5, 0.25, 0.375]):
        model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
        if epoch == 1:
            best = [np.array(w) for w in model.get_weights()]
        tracker.update(epoch, {"val_loss": loss})
    tracker.finish()
    model.set_weights(best)
    return str(tmp_path), model


@pytest.fixture(params=sorted(FORMATS))
def fmt(request) -> str:
    return request.param


def test_only_the_backbone_loads_exactly_and_the_head_is_untouched(tmp_path, fmt):
    directory, trained = run(tmp_path, fmt)
    new = make(5, seed=7)
    head_before = values(new.get_layer("head"))
    assert not same(values(new.get_layer("backbone")), values(trained.get_layer("backbone")))
    rec = load_best(new, directory, only=["backbone"])
    assert rec.epoch == 1 and rec.skipped == ()
    assert same(values(new.get_layer("backbone")), values(trained.get_layer("backbone")))
    assert same(values(new.get_layer("head")), head_before)


def test_only_takes_a_layer_object_or_one_name(tmp_path):
    directory, trained = run(tmp_path, "weights")
    by_object, by_name = make(5, seed=7), make(5, seed=7)
    load_best(by_object, directory, only=by_object.get_layer("backbone"))
    load_best(by_name, directory, only="backbone")
    for m in (by_object, by_name):
        assert same(values(m.get_layer("backbone")), values(trained.get_layer("backbone")))
    # A nested layer alone: only its variables.
    inner = make(5, seed=7)
    dense = inner.get_layer("backbone").layers[0]
    norm_before = values(inner.get_layer("backbone").layers[1])
    load_best(inner, directory, only=[dense])
    assert same(values(dense), values(trained.get_layer("backbone").layers[0]))
    assert same(values(inner.get_layer("backbone").layers[1]), norm_before)


def test_skip_mismatch_warns_naming_what_it_skipped(tmp_path, fmt):
    directory, trained = run(tmp_path, fmt)
    new = make(5, seed=7)
    head_before = values(new.get_layer("head"))
    with pytest.warns(UserWarning, match=r"Skipped loading 1 object\(s\).*layers/dense.*"
                                         r"layers/dense/vars/0 \(head/kernel\): saved \(8, 3\), model \(8, 5\)"):
        rec = load_best(new, directory, skip_mismatch=True)
    assert rec.skipped == ("layers/dense",)
    assert same(values(new.get_layer("backbone")), values(trained.get_layer("backbone")))
    assert same(values(new.get_layer("head")), head_before)


def test_a_mismatch_is_an_error_naming_the_variables_and_changes_nothing(tmp_path, fmt):
    directory, _ = run(tmp_path, fmt)
    new = make(5, seed=7)
    before = [np.array(w) for w in new.get_weights()]
    with pytest.raises(ValueError) as info:
        load_best(new, directory)
    message = str(info.value)
    assert "layers/dense/vars/0 (head/kernel): saved (8, 3), model (8, 5)" in message
    assert "layers/dense/vars/1 (head/bias): saved (3,), model (5,)" in message
    assert "skip_mismatch=True" in message and "only=" in message
    assert read_best(directory).path in message
    assert same(new.get_weights(), before)


def test_only_with_a_chosen_layer_that_differs(tmp_path):
    directory, _ = run(tmp_path, "weights")
    new = make(5, seed=7)
    before = [np.array(w) for w in new.get_weights()]
    with pytest.raises(ValueError, match=r"head/kernel\): saved \(8, 3\), model \(8, 5\)"):
        load_best(new, directory, only=["backbone", "head"])
    assert same(new.get_weights(), before)  # the backbone, which fits, was not loaded either
    with pytest.warns(UserWarning, match="layers/dense"):
        assert load_best(new, directory, only=["backbone", "head"], skip_mismatch=True).skipped == ("layers/dense",)


@pytest.mark.parametrize(
    "only, message",
    [
        (["backbon"], r"No layer of the model is named 'backbon' \(in `only`\).*Did you mean 'backbone'\?"),
        ([], r"`only` must name at least one layer"),
        ([keras.layers.Dense(2)], r"is not one of the objects the model saves"),
    ],
)
def test_only_refuses_what_is_not_in_the_model(tmp_path, only, message):
    directory, _ = run(tmp_path, "weights")
    with pytest.raises(ValueError, match=message):
        load_best(make(3, seed=7), directory, only=only)


def test_skip_mismatch_must_be_a_bool(tmp_path):
    directory, _ = run(tmp_path, "weights")
    with pytest.raises(ValueError, match="`skip_mismatch` must be True or False"):
        load_best(make(3, seed=7), directory, skip_mismatch="yes")


@pytest.mark.parametrize("optimizer", [False, True], ids=["model", "with-optimizer"])
def test_skip_mismatch_loads_what_stock_keras_loads(tmp_path, fmt, optimizer):
    directory, _ = run(tmp_path, fmt, optimizer=optimizer)
    ours, stock = make(5, seed=7, optimizer=optimizer), make(5, seed=7, optimizer=optimizer)
    if optimizer:  # another optimizer state: the new head's slots differ in shape
        for m in (ours, stock):
            m.optimizer.iterations.assign(3)
        slots_before = slots(ours.optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = load_best(ours, directory, skip_mismatch=True)
        stock.load_weights(read_best(directory).path, skip_mismatch=True)
    assert same(ours.get_weights(), stock.get_weights())
    if optimizer:
        # An optimizer that differs is skipped whole (stock Keras assigns its variables up to the
        # first that differs: here the step count and the backbone's slots, not the head's).
        assert rec.skipped == ("layers/dense", "optimizer")
        assert same(slots(ours.optimizer), slots_before)
    # The same model as in training loads whole, as before.
    again = make(3, seed=7, optimizer=optimizer)
    assert load_best(again, directory, skip_mismatch=True).skipped == ()


def test_optimizer_by_object(tmp_path):
    directory, _ = run(tmp_path, "weights", optimizer=True)
    new = make(3, seed=7, optimizer=True)
    weights_before = [np.array(w) for w in new.get_weights()]
    load_best(new, directory, only=[new.optimizer])
    saved = make(3, seed=9, optimizer=True)
    saved.load_weights(read_best(directory).path)
    assert same(slots(new.optimizer), slots(saved.optimizer))
    assert same(new.get_weights(), weights_before)
