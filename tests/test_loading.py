"""load_best: the recorded best, exactly, or a clear error."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from keras_best import BestRecord, BestWeightsTracker, load_best
from keras_best.frontends.loading import read_best
from tests.conftest import make_model, perturb


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _run(directory, values, name="e{epoch}.weights.h5", **options):
    """A finished run over scripted values; returns the weights of each epoch."""
    model = make_model()
    tracker = BestWeightsTracker(model, str(directory / name), verbose=0, **options)
    weights = []
    for epoch, v in enumerate(values):
        perturb(model, 10 + epoch)
        weights.append(model.get_weights())
        tracker.update(epoch, {"val_loss": v, "val_acc": 1 - v})
    tracker.finish()
    return weights


def test_loads_exactly_the_best(tmp_path):
    weights = _run(tmp_path, [0.5, 0.25, 0.375, 0.3125], keep_top_k=2)
    model = make_model(seed=7)
    rec = load_best(model, tmp_path)  # PathLike is fine
    assert isinstance(rec, BestRecord)
    assert (rec.epoch, rec.value, rec.monitor, rec.step) == (1, 0.25, "val_loss", None)
    assert rec.path == os.path.join(str(tmp_path), "e2.weights.h5")
    assert rec.metrics == {"val_loss": 0.25, "val_acc": 0.75}
    assert _same(model.get_weights(), weights[1])


def test_max_mode_run(tmp_path):
    weights = _run(tmp_path, [0.5, 0.25, 0.75, 0.625], mode="max")
    model = make_model(seed=7)
    assert load_best(model, str(tmp_path)).epoch == 2
    assert _same(model.get_weights(), weights[2])


def test_read_best_loads_nothing(tmp_path):
    _run(tmp_path, [0.5, 0.25])
    rec = read_best(str(tmp_path))
    assert (rec.epoch, rec.value) == (1, 0.25)


def test_load_best_while_the_run_is_still_going(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    perturb(model, 1)
    best = model.get_weights()
    tracker.update(0, {"val_loss": 0.5})
    tracker.finish()  # the record is on disk; the run goes on
    perturb(model, 2)
    tracker.update(1, {"val_loss": 0.75})
    perturb(model, 3)
    tracker.update(2, {"val_loss": 0.25})  # a new best, possibly still being written
    other = make_model(seed=7)
    rec = load_best(other, str(tmp_path))
    # Whichever best is on disk at this instant, record and weights agree.
    expected = {0: best, 2: model.get_weights()}
    assert rec.epoch in expected and _same(other.get_weights(), expected[rec.epoch])
    tracker.finish()
    assert load_best(other, str(tmp_path)).epoch == 2 and _same(other.get_weights(), model.get_weights())


def test_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No keras-best run in .*keras_best\.json not found"):
        load_best(make_model(), str(tmp_path))


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"keras_best\.json not found"):
        load_best(make_model(), str(tmp_path / "nope"))


def test_run_without_a_best_yet(tmp_path):
    _run(tmp_path, [0.9, float("nan")], baseline=0.5)
    with pytest.raises(FileNotFoundError, match=r"\(keras_best\.json\) has no saved best yet: no epoch beat "
                                                r"the baseline 0\.5000\.$"):
        load_best(make_model(), str(tmp_path))


@pytest.mark.parametrize(
    "other",
    [
        lambda: make_model(units=16),  # same layers, other sizes
        lambda: make_model(inputs=5),
        lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]),  # fewer variables
    ],
)
def test_model_of_another_architecture(tmp_path, other):
    _run(tmp_path, [0.5, 0.25])
    model = other()
    before = model.get_weights()
    with pytest.raises(
        ValueError, match=r"architecture \(its weight shapes\) differs from the saved one in \d+ variable\(s\): "
                          r"layers/dense(_1)?/vars/\d \(.*\): saved \(.*\), model "
    ):
        load_best(model, str(tmp_path))
    assert _same(model.get_weights(), before)  # untouched


def test_the_record_survives_a_failed_load(tmp_path):
    weights = _run(tmp_path, [0.5, 0.25])
    with pytest.raises(ValueError, match="architecture"):
        load_best(make_model(units=16), str(tmp_path))
    model = make_model(seed=7)
    assert load_best(model, str(tmp_path)).epoch == 1 and _same(model.get_weights(), weights[1])


def test_keras_format_run(tmp_path):
    weights = _run(tmp_path, [0.5, 0.25, 0.375], name="best.keras")
    model = make_model(seed=7)
    rec = load_best(model, str(tmp_path))
    assert rec.path == os.path.join(str(tmp_path), "best.keras") and _same(model.get_weights(), weights[1])
