"""The decision engine: truth tables over plain data, and parity with Keras."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

from keras_best.core.monitor import Decision, Monitor, MonitorState, StopReason
from keras_best.core.objective import Score, check_mode, infer_mode

NAN, INF = math.nan, math.inf


def _run(monitor: Monitor, values, state: MonitorState | None = None, start: int = 0) -> list[Decision]:
    return _fold(monitor, values, state, start)[0]


def _fold(monitor: Monitor, values, state: MonitorState | None = None, start: int = 0):
    """Step `monitor` through `values` from `state`; return the decisions and the last state."""
    state = MonitorState() if state is None else state
    decisions = []
    for epoch, v in enumerate(values, start=start):
        decision, state = monitor.step(state, epoch, v)
        decisions.append(decision)
    return decisions, state


# ----------------------------------------------------------------- improvement
# (mode, min_delta, baseline, values, improved per epoch, final best)
IMPROVEMENT_TABLE = [
    ("min", 0.0, None, [3.0, 2.0, 1.0], [True, True, True], 1.0),
    ("min", 0.0, None, [1.0, 2.0, 0.5], [True, False, True], 0.5),
    ("max", 0.0, None, [1.0, 2.0, 3.0], [True, True, True], 3.0),
    ("max", 0.0, None, [1.0, 0.5, 1.5], [True, False, True], 1.5),
    # ties never improve
    ("min", 0.0, None, [1.0, 1.0, 1.0], [True, False, False], 1.0),
    ("max", 0.0, None, [1.0, 1.0], [True, False], 1.0),
    # a change equal to min_delta is not an improvement; more than it is
    ("min", 0.25, None, [1.0, 0.75, 0.74], [True, False, True], 0.74),
    ("max", 0.25, None, [1.0, 1.25, 1.26], [True, False, True], 1.26),
    # min_delta is measured from the best, not from the previous value
    ("min", 0.5, None, [2.0, 1.75, 1.5, 1.25, 1.0], [True, False, False, True, False], 1.25),
    # NaN and +-inf never improve, in either mode, even as the first value
    ("min", 0.0, None, [NAN, 2.0, 1.0], [False, True, True], 1.0),
    ("max", 0.0, None, [NAN, 2.0, 3.0], [False, True, True], 3.0),
    ("min", 0.0, None, [1.0, NAN, 0.5], [True, False, True], 0.5),
    ("min", 0.0, None, [INF, -INF, 2.0], [False, False, True], 2.0),
    ("max", 0.0, None, [-INF, INF, 2.0], [False, False, True], 2.0),
    ("min", 0.0, None, [1.0, -INF], [True, False], 1.0),
    ("max", 0.0, None, [1.0, INF], [True, False], 1.0),
    ("min", 0.0, None, [NAN, NAN], [False, False], None),
    # baseline: nothing improves until it is beaten (ties do not beat it)
    ("min", 0.0, 1.0, [2.0, 1.0, 0.9, 0.95], [False, False, True, False], 0.9),
    ("max", 0.0, 0.8, [0.5, 0.8, 0.81], [False, False, True], 0.81),
    ("min", 0.0, 0.5, [0.9, 0.8], [False, False], None),
    ("min", 0.25, 1.0, [0.75, 0.7], [False, True], 0.7),
]


@pytest.mark.parametrize("mode,min_delta,baseline,values,improved,best", IMPROVEMENT_TABLE)
def test_improvement_table(mode, min_delta, baseline, values, improved, best):
    decisions = _run(Monitor(mode, min_delta=min_delta, baseline=baseline), values)
    assert [d.improved for d in decisions] == improved
    assert decisions[-1].best == best
    improved_epochs = [e for e, i in enumerate(improved) if i]
    assert decisions[-1].best_epoch == (improved_epochs[-1] if improved_epochs else None)


def test_decision_is_frozen_and_carries_the_value():
    d, _ = Monitor("min").step(MonitorState(), 4, 0.5)
    assert (d.epoch, d.value, d.improved, d.best, d.best_epoch) == (4, 0.5, True, 0.5, 4)
    assert (d.saved_path, d.evicted, d.should_stop, d.stop_reason) == (None, (), False, StopReason.NONE)
    with pytest.raises(AttributeError):
        d.improved = False


def test_is_improvement_does_not_change_state():
    m = Monitor("min")
    _, state = m.step(MonitorState(), 0, 1.0)
    assert m.is_improvement(state, 0.5) and m.is_improvement(state, 0.5)
    assert (state.best_value, state.best_epoch, state.wait) == (1.0, 0, 0)


def test_a_step_leaves_its_state_as_it_was():
    m = Monitor("min", patience=1)
    before = MonitorState(Score(1.0), 0, 0, Score(1.0))
    decision, after = m.step(before, 1, 2.0)
    assert before == MonitorState(Score(1.0), 0, 0, Score(1.0)) and decision.should_stop
    assert (after.wait, after.best_value) == (1, 1.0)
    with pytest.raises(AttributeError):
        after.wait = 0


# -------------------------------------------------------------------- patience
# (values, patience, start_from_epoch, epoch of the first should_stop or None)
PATIENCE_TABLE = [
    ([1.0, 2.0, 3.0, 4.0], 2, 0, 2),  # 2 non-improving epochs in a row -> stop at the 2nd
    ([1.0, 2.0, 0.5, 2.0, 3.0], 2, 0, 4),  # an improvement resets the counter
    ([1.0, 2.0, 3.0], 3, 0, None),
    ([1.0, 2.0], 1, 0, 1),
    ([1.0, 2.0], 0, 0, 1),  # patience=0: stop at the first non-improving epoch
    ([3.0, 2.0, 1.0], 0, 0, None),
    # start_from_epoch: earlier epochs are ignored by early stopping (Keras)
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3, 5),
    ([1.0, 5.0, 4.0, 3.0, 2.0], 2, 2, None),  # still improving after warm-up
    ([1.0, 2.0, 3.0, 4.0], 1, 2, 3),
]


@pytest.mark.parametrize("values,patience,start,stop_epoch", PATIENCE_TABLE)
def test_patience_table(values, patience, start, stop_epoch):
    decisions = _run(Monitor("min", patience=patience, start_from_epoch=start), values)
    stops = [d.epoch for d in decisions if d.should_stop]
    assert (stops[0] if stops else None) == stop_epoch
    for d in decisions:
        expected = StopReason.PATIENCE_EXHAUSTED if d.should_stop else StopReason.NONE
        assert d.stop_reason is expected


def test_patience_none_never_stops():
    decisions = _run(Monitor("min"), [1.0] + [2.0] * 50)
    assert not any(d.should_stop for d in decisions)
    assert decisions[-1].wait == 50


def test_start_from_epoch_still_tracks_best_for_saving():
    decisions = _run(Monitor("min", patience=1, start_from_epoch=2), [1.0, 0.5, 3.0, 4.0])
    assert [d.improved for d in decisions] == [True, True, False, False]
    assert [d.wait for d in decisions] == [0, 0, 0, 1]
    assert decisions[-1].should_stop and decisions[-1].best == 0.5


def test_nan_counts_towards_patience():
    decisions = _run(Monitor("min", patience=2), [1.0, NAN, NAN])
    assert [d.should_stop for d in decisions] == [False, False, True]


def test_stop_on_non_finite():
    decisions = _run(Monitor("min", stop_on_non_finite=True), [1.0, 0.5, INF])
    assert [d.should_stop for d in decisions] == [False, False, True]
    assert decisions[-1].stop_reason is StopReason.NON_FINITE_METRIC
    assert decisions[-1].best == 0.5


def test_stop_reason_values():
    assert StopReason.NONE.value == "" and str(StopReason.NONE) == ""
    assert StopReason.PATIENCE_EXHAUSTED == "patience_exhausted"
    assert StopReason.NON_FINITE_METRIC == "non_finite_metric"
    assert str(StopReason.PATIENCE_EXHAUSTED) == "patience_exhausted"
    assert StopReason("patience_exhausted") is StopReason.PATIENCE_EXHAUSTED


def _keras_early_stopping_stop_epoch(values, **options):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    es = keras.callbacks.EarlyStopping(monitor="val_loss", **options)
    es.set_model(model)
    es.on_train_begin()
    for epoch, v in enumerate(values):
        model.stop_training = False
        es.on_epoch_end(epoch, {"val_loss": v})
        if model.stop_training:
            return epoch
    return None


def _our_stop_epoch(values, **options):
    m = Monitor(options.pop("mode"), **options)
    for d in _run(m, values):
        if d.should_stop:
            return d.epoch
    return None


def _parity_cases():
    # Values on a 1/8 grid are exact in float32 (Keras compares in float32).
    rng = np.random.default_rng(7)
    cases = []
    for i in range(120):
        values = [float(v) / 8 for v in rng.integers(0, 12, size=int(rng.integers(2, 10)))]
        options = {
            "mode": ["min", "max"][i % 2],
            "patience": int(rng.integers(0, 4)),
            "start_from_epoch": int(rng.choice([0, 0, 1, 3])),
        }
        if i % 3 == 0:
            options["min_delta"] = 0.25
        if i % 3 == 1 or i % 4 == 0:
            options["baseline"] = float(rng.integers(2, 10)) / 8
        cases.append((values, options))
    return cases


def test_patience_parity_with_keras_early_stopping():
    cases = _parity_cases()
    for values, options in cases:
        assert _our_stop_epoch(values, **dict(options)) == _keras_early_stopping_stop_epoch(
            values, **options
        ), (values, options)
    # The table exercises both outcomes.
    assert any(_our_stop_epoch(v, **dict(o)) is None for v, o in cases)
    assert any(_our_stop_epoch(v, **dict(o)) is not None for v, o in cases)


# ----------------------------------------------------------------------- state
def test_state_dict_round_trip_continues_identically():
    values = [1.0, 0.5, 0.75, NAN, 0.6, 0.4, 0.9, 0.95, 0.99]
    options = dict(min_delta=0.01, patience=3, start_from_epoch=2)
    whole = _run(Monitor("min", **options), values)
    for split in range(len(values) + 1):
        head, state = _fold(Monitor("min", **options), values[:split])
        state = MonitorState.from_json(json.loads(json.dumps(dict(state))))
        tail = _run(Monitor("min", **options), values[split:], state, start=split)
        assert _same(head + tail, whole), split


def _same(a: list[Decision], b: list[Decision]) -> bool:
    def key(d):
        return (d.epoch, d.improved, d.best, d.best_epoch, d.should_stop, d.stop_reason, d.wait)

    return [key(d) for d in a] == [key(d) for d in b]


@pytest.mark.parametrize("key", ["best", "best_epoch", "wait"])
def test_load_state_dict_missing_key(key):
    state = dict(MonitorState())
    del state[key]
    with pytest.raises(ValueError, match=f"Required state attribute '{key}' is absent"):
        MonitorState.from_json(state)


def test_load_state_dict_without_patience_best_uses_best():
    m = Monitor("min", patience=1)
    state = MonitorState.from_json({"best": 0.5, "best_epoch": 1, "wait": 0})
    assert m.step(state, 2, 0.6)[0].should_stop
    assert not Monitor("min", patience=1).step(MonitorState(), 0, 0.6)[0].should_stop


def test_the_json_form_keeps_the_keys_of_keras_best_json():
    state = MonitorState(Score(0.5, (NAN,)), 3, 1, Score(0.4, (0.2,)))
    assert list(state) == ["best", "best_epoch", "wait", "patience_best", "best_ties", "patience_ties"]
    assert dict(state) == {**state.to_json(), "best_ties": [state.best.ties[0]]}
    assert (state["best"], state["patience_best"], state["patience_ties"]) == (0.5, 0.4, [0.2])
    assert dict(MonitorState()) == {"best": None, "best_epoch": None, "wait": 0, "patience_best": None,
                                    "best_ties": [], "patience_ties": []}


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "auto"}, 'Monitor needs mode "min" or "max". Received: mode=\'auto\''),
        ({"mode": "minimize"}, "Received: mode='minimize'"),
        (
            {"mode": "min", "min_delta": -0.1},
            r"`min_delta` must be a finite number >= 0. Received: min_delta=-0.1",
        ),
        ({"mode": "min", "min_delta": INF}, "min_delta=inf"),
        ({"mode": "min", "min_delta": "0.1"}, "min_delta='0.1'"),
        ({"mode": "min", "baseline": NAN}, "`baseline` must be a number or None. Received: baseline=nan"),
        ({"mode": "min", "patience": -1}, r"`patience` must be an int >= 0 or None. Received: patience=-1"),
        ({"mode": "min", "patience": 2.5}, "patience=2.5"),
        ({"mode": "min", "start_from_epoch": -1}, "`start_from_epoch` must be an int >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    mode = kwargs.pop("mode")
    with pytest.raises(ValueError, match=match):
        Monitor(mode, **kwargs)


def test_check_mode():
    assert [check_mode(m) for m in ("min", "max", "auto")] == ["min", "max", "auto"]
    with pytest.raises(
        ValueError, match=r'`mode` must be one of "min", "max" or "auto". Received: mode=\'mni\''
    ):
        check_mode("mni")


# ------------------------------------------------------------------ infer_mode
@pytest.mark.parametrize(
    "name,mode",
    [
        ("loss", "min"),
        ("val_loss", "min"),
        ("val_mean_squared_error", "min"),
        ("val_mae", "min"),
        ("categorical_crossentropy", "min"),
        ("val_error_rate", "min"),
        ("accuracy", "max"),
        ("val_accuracy", "max"),
        ("val_acc", "max"),
        ("val_sparse_categorical_accuracy", "max"),
        ("val_auc", "max"),
        ("val_AUC_1", "max"),
        ("val_precision", "max"),
        ("val_recall", "max"),
        ("val_f1", "max"),
        ("f1_score", "max"),
    ],
)
def test_infer_mode_from_name(name, mode):
    assert infer_mode(name) == mode


@pytest.mark.parametrize("name", ["val_score", "lr", "val_reward", "val_cosine"])
def test_infer_mode_asks_for_mode(name):
    with pytest.raises(
        ValueError, match=rf'Cannot infer whether `{name}`.*Pass `mode="min"` or `mode="max"`'
    ):
        infer_mode(name)


def test_infer_mode_uses_direction_hint():
    assert infer_mode("val_score", "up") == "max"
    assert infer_mode("val_score", "down") == "min"


def test_baseline_patience_waits_while_still_improving():
    # As keras.callbacks.EarlyStopping: the counter runs until the baseline is
    # beaten, but an epoch that improves on the run's values never stops.
    improving = _run(Monitor("max", baseline=0.9, patience=2), [0.5, 0.625, 0.75, 0.75])
    assert [d.should_stop for d in improving] == [False, False, False, True]
    assert [d.improved for d in improving] == [False] * 4
    flat = _run(Monitor("max", baseline=0.9, patience=2), [0.5, 0.5])
    assert [d.should_stop for d in flat] == [False, True]
    beaten = _run(Monitor("max", baseline=0.9, patience=2), [0.5, 0.95, 0.9, 0.8])
    assert [d.wait for d in beaten] == [1, 0, 1, 2] and beaten[-1].should_stop
