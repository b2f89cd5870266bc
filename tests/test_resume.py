"""Resume exactly: a run interrupted after any epoch k and resumed ends like an
uninterrupted one (same final weights, best epoch/value and kept files)."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from tests.conftest import run_json

EPOCHS = 6


@pytest.fixture(autouse=True, scope="module")
def _determinism():
    tf.config.experimental.enable_op_determinism()
    yield


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, :2].sum(axis=1, keepdims=True) + 0.8 * rng.normal(size=(96, 1)) > 0).astype("float32")
    return x[:64], y[:64], x[64:], y[64:]


def _build():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(12, activation="tanh"), keras.layers.Dense(1, activation="sigmoid")]
    )


def _custom_loop(directory: str, stop_after: int | None) -> BestWeightsTracker:
    """Train until EPOCHS (or abandon the run after `stop_after` epochs)."""
    x, y, vx, vy = _data()
    model, optimizer = _build(), keras.optimizers.Adam(0.08)
    loss_fn = keras.losses.BinaryCrossentropy()
    tracker = BestWeightsTracker(
        model, os.path.join(directory, "{epoch:02d}.weights.h5"), monitor="val_loss",
        keep_top_k=2, patience=3, optimizer=optimizer, resume=True, verbose=0,
    )
    for epoch in range(tracker.initial_epoch, EPOCHS if stop_after is None else stop_after):
        for i in range(0, 64, 16):
            with tf.GradientTape() as tape:
                loss = loss_fn(y[i : i + 16], model(x[i : i + 16], training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        val_loss = float(loss_fn(vy, model(vx)))
        if tracker.update(epoch, {"val_loss": val_loss}).should_stop:
            break
    if stop_after is None:
        tracker.finish()
    return tracker


def _fit(directory: str, epochs: int) -> BestWeightsTracker:
    x, y, vx, vy = _data()
    model = _build()
    model.compile(optimizer=keras.optimizers.Adam(0.08), loss="binary_crossentropy")
    callback = BestCheckpoint(
        os.path.join(directory, "{epoch:02d}.weights.h5"), monitor="val_loss",
        save_best_only=True, keep_top_k=2, patience=3, resume=True,
    )
    model.fit(x, y, validation_data=(vx, vy), batch_size=16, epochs=epochs, shuffle=False,
              callbacks=[callback], verbose=0)
    return callback.tracker


def _outcome(tracker: BestWeightsTracker) -> dict:
    directory = tracker.directory
    kept = sorted(n for n in os.listdir(directory) if n.endswith(".weights.h5"))
    kept_weights = {}
    for name in kept:
        m = _build()
        m.load_weights(os.path.join(directory, name))
        kept_weights[name] = m.get_weights()
    data = run_json(directory)
    return {
        "weights": tracker.model.get_weights(),
        "best": (tracker.best_epoch, tracker.best),
        "kept": kept,
        "kept_weights": kept_weights,
        "history": [(h["epoch"], h["value"], h["improved"]) for h in data["history"]],
        "stopped": data["stopped"],
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["best"] == b["best"]
    assert a["kept"] == b["kept"]
    assert a["history"] == b["history"]
    assert a["stopped"] == b["stopped"]
    for x, y in zip(a["weights"], b["weights"], strict=True):
        np.testing.assert_array_equal(x, y)
    for name in a["kept"]:
        for x, y in zip(a["kept_weights"][name], b["kept_weights"][name], strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted_custom(tmp_path_factory):
    return _outcome(_custom_loop(str(tmp_path_factory.mktemp("full")), None))


@pytest.mark.parametrize("k", range(1, EPOCHS))
def test_custom_loop_resume_after_any_epoch_is_exact(tmp_path, k, uninterrupted_custom):
    _custom_loop(str(tmp_path), stop_after=k)
    resumed = _custom_loop(str(tmp_path), None)
    _assert_same(_outcome(resumed), uninterrupted_custom)


def test_uninterrupted_run_exercises_top_k_and_non_improvement(uninterrupted_custom):
    improved = [h[2] for h in uninterrupted_custom["history"]]
    assert any(improved) and not all(improved), "the scripted run must have both kinds of epochs"
    assert len(uninterrupted_custom["kept"]) == 2


@pytest.fixture(scope="module")
def uninterrupted_fit(tmp_path_factory):
    return _outcome(_fit(str(tmp_path_factory.mktemp("fitfull")), EPOCHS))


@pytest.mark.slow
@pytest.mark.parametrize("k", range(1, EPOCHS))
def test_fit_resume_after_any_epoch_is_exact(tmp_path, k, uninterrupted_fit):
    _fit(str(tmp_path), epochs=k)
    resumed = _fit(str(tmp_path), epochs=EPOCHS)
    _assert_same(_outcome(resumed), uninterrupted_fit)


def test_resume_on_first_start_is_a_fresh_run(tmp_path):
    tracker = _custom_loop(str(tmp_path), None)
    assert tracker.initial_epoch == 0
    assert load_best(_build(), tmp_path).epoch == tracker.best_epoch


def test_resume_keeps_best_value_instead_of_resetting_it(tmp_path):
    model = _build()
    t1 = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), resume=True, verbose=0)
    t1.update(0, {"val_loss": 0.2})
    t1.finish()
    t2 = BestWeightsTracker(_build(), str(tmp_path / "best.weights.h5"), resume=True, verbose=0)
    assert t2.best == pytest.approx(0.2) and t2.initial_epoch == 1
    # keras issue 17012: a worse value after a restart must not overwrite the best.
    decision = t2.update(1, {"val_loss": 0.5})
    assert not decision.improved and decision.saved_path is None
    assert load_best(_build(), tmp_path).value == pytest.approx(0.2)


def test_resume_after_early_stop_runs_no_more_epochs(tmp_path):
    model = _build()
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), patience=1, resume=True, verbose=0)
    for epoch, v in enumerate([0.5, 0.6]):
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    again = BestWeightsTracker(_build(), str(tmp_path / "b.weights.h5"), patience=1, resume=True, verbose=0)
    assert again.stopped and again.stop_reason == "patience_exhausted"
    calls = []
    again.run(lambda *b: calls.append(b), lambda *b: None, [(1,)], [(1,)], epochs=5)
    assert calls == []


@pytest.mark.parametrize(
    "change, match",
    [
        ({"monitor": "val_accuracy", "mode": "max"}, "monitor='val_loss'"),
        ({"mode": "max"}, "mode='min'"),
    ],
)
def test_resume_refuses_another_monitor_or_mode(tmp_path, change, match):
    t = BestWeightsTracker(_build(), str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
    t.update(0, {"val_loss": 0.5})
    t.finish()
    options = {"monitor": "val_loss", **change}
    with pytest.raises(ValueError, match=match):
        BestWeightsTracker(_build(), str(tmp_path / "b.weights.h5"), resume=True, verbose=0, **options)


def test_resume_refuses_another_architecture(tmp_path):
    t = BestWeightsTracker(_build(), str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
    t.update(0, {"val_loss": 0.5})
    t.finish()
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="architecture"):
        BestWeightsTracker(other, str(tmp_path / "b.weights.h5"), resume=True, verbose=0)


def test_resume_restores_optimizer_state(tmp_path):
    model, opt = _build(), keras.optimizers.Adam(0.01)
    x, y, _, _ = _data()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, model(x)))
    opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    t = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), optimizer=opt, resume=True, verbose=0)
    t.update(0, {"val_loss": 0.5})
    t.finish()
    model2, opt2 = _build(), keras.optimizers.Adam(0.01)
    BestWeightsTracker(model2, str(tmp_path / "b.weights.h5"), optimizer=opt2, resume=True, verbose=0)
    assert int(opt2.iterations.numpy()) == 1
    for a, b in zip(opt.variables, opt2.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_resume_with_an_unbuilt_model_says_to_build_it(tmp_path):
    t = BestWeightsTracker(_build(), str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
    t.update(0, {"val_loss": 0.5})
    t.finish()
    unbuilt = keras.Sequential([keras.layers.Dense(12, activation="tanh"), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not built yet.*model.build"):
        BestWeightsTracker(unbuilt, str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
