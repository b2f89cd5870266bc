"""Stopping thresholds: `stopping_threshold` (good enough) and `divergence_threshold`
(training diverged), as Lightning's `EarlyStopping`, recorded and shown by `inspect`."""

from __future__ import annotations

import math

import keras
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_best import BestCheckpoint, BestWeightsTracker, StopReason, load_best
from keras_best.cli import summary as summary_lib
from keras_best.core.monitor import Monitor, MonitorState
from tests.conftest import make_model, perturb, run_json

VALUES = st.lists(st.one_of(st.floats(0.0, 2.0), st.just(math.nan), st.just(math.inf)), min_size=1, max_size=20)


def _reference_stop(values, mode, stop, diverge, require_ok):
    """Where training must stop, and why: the rule of the docs, written out once more."""
    better = (lambda a, b: a <= b) if mode == "min" else (lambda a, b: a >= b)
    for epoch, (v, ok) in enumerate(zip(values, require_ok)):
        if stop is not None and ok and math.isfinite(v) and better(v, stop):
            return epoch, StopReason.STOPPING_THRESHOLD
        if diverge is not None and (math.isnan(v) or not better(v, diverge)):
            return epoch, StopReason.DIVERGENCE_THRESHOLD
    return None, StopReason.NONE


@settings(max_examples=300, deadline=None)
@given(VALUES, st.sampled_from(["min", "max"]), st.sampled_from([None, 0.3, 0.9]),
       st.sampled_from([None, 1.5, 1.9]), st.data())
def test_the_run_stops_exactly_where_a_threshold_is_crossed(values, mode, stop, diverge, data):
    if mode == "max" and diverge is not None:
        diverge, stop = 0.1, (None if stop is None else 1.2)  # in "max" mode divergence is low
    feasible = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    from keras_best.core.objective import Score

    monitor = Monitor(mode, stopping_threshold=stop, divergence_threshold=diverge)
    decisions, state = [], MonitorState()
    for epoch, (v, ok) in enumerate(zip(values, feasible)):
        decision, state = monitor.step(state, epoch, Score(v, feasible=ok))
        decisions.append(decision)
        if decisions[-1].should_stop:
            break
    want_epoch, want_reason = _reference_stop(values, mode, stop, diverge, feasible)
    got = next(((d.epoch, d.stop_reason) for d in decisions if d.should_stop), (None, StopReason.NONE))
    assert got == (want_epoch, want_reason)
    # A threshold never changes what is best: the epoch that reaches it is best when it improves.
    if want_reason is StopReason.STOPPING_THRESHOLD:
        last = decisions[-1]
        assert last.best is not None and (last.best <= stop if mode == "min" else last.best >= stop)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(stopping_threshold="0.1"), r"`stopping_threshold` must be a number. Received: stopping_threshold='0.1'"),
        (dict(divergence_threshold=math.nan), r"`divergence_threshold` must be a number"),
        (dict(divergence_threshold=math.inf), r"must be a finite number or None. Received: divergence_threshold=inf"),
        (dict(stopping_threshold=2.0, divergence_threshold=1.0),
         r"`stopping_threshold` must be a better value than `divergence_threshold` for mode='min' \(lower\)"),
        (dict(monitor="val_accuracy", stopping_threshold=0.1, divergence_threshold=0.5),
         r"for mode='max' \(higher\)"),
    ],
)
def test_bad_thresholds_are_refused_at_construction(tmp_path, options, message):
    options = {"monitor": "val_loss", **options}
    with pytest.raises(ValueError, match=message):
        BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), **options)
    with pytest.raises(ValueError, match=message):
        BestCheckpoint(str(tmp_path / "best.weights.h5"), **options)
    assert not (tmp_path / "keras_best.json").exists()


def test_a_threshold_stop_is_recorded_shown_and_final_on_resume(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), stopping_threshold=0.25, resume=True,
                                 optimizer=keras.optimizers.Adam(), verbose=0)
    epochs = []
    for epoch, v in enumerate([0.5, 0.4, 0.2, 0.1]):
        perturb(model, epoch)
        epochs.append(epoch)
        if tracker.update(epoch, {"val_loss": v}).should_stop:
            break
    tracker.finish()
    assert epochs == [0, 1, 2] and tracker.stop_reason is StopReason.STOPPING_THRESHOLD
    data = run_json(tmp_path)
    assert data["stopped"]["reason"] == "stopping_threshold" and data["best"]["epoch"] == 2
    assert data["options"]["stopping_threshold"] == 0.25
    text = summary_lib.format_table(summary_lib.summarize(str(tmp_path)))
    assert "val_loss reached stopping_threshold=0.25" in text
    again = BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), stopping_threshold=0.25,
                               resume=True, optimizer=keras.optimizers.Adam(), verbose=0)
    assert again.stopped and again.stop_reason is StopReason.STOPPING_THRESHOLD
    again.finish()


def test_fit_stops_when_validation_diverges(tmp_path, data):
    x, y = data
    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(50.0), loss="mse")  # diverges at once
    cb = BestCheckpoint(str(tmp_path / "best.weights.h5"), monitor="val_loss", divergence_threshold=1e3,
                        verbose=0)
    history = model.fit(x, y * 1e3, validation_data=(x, y * 1e3), epochs=20, batch_size=8, verbose=0,
                        callbacks=[cb])
    record = run_json(tmp_path)
    stopped = record["stopped"]
    assert stopped["reason"] == "divergence_threshold"
    assert len(history.history["val_loss"]) == stopped["epoch"] + 1 < 20
    assert not history.history["val_loss"][-1] <= 1e3  # worse, or NaN: both count as diverged
    text = summary_lib.format_table(summary_lib.summarize(str(tmp_path)))
    assert "was worse than divergence_threshold=1000.0 (or NaN)" in text
    if record["best"] is not None:  # a best, if any, is loadable and below the threshold
        rec = load_best(make_model(), str(tmp_path))
        assert rec.value <= 1e3
