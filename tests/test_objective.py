"""Objectives: lexicographic order, constraints, score functions. Plain data, no I/O."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from keras_best.core.monitor import Monitor, MonitorState
from keras_best.core.objective import OPS, Objective, Score, beats, compare_ties, rank_key
from keras_best.core.retention import BestK, Record, ranked

NAN, INF = math.nan, math.inf
LEX = ("min", "max")  # monitor=["val_loss", "val_acc"]


# ------------------------------------------------------------------ beats
# (a, b, modes, min_delta, a beats b)
BEATS_TABLE = [
    (Score(0.4, (0.1,)), Score(0.5, (0.9,)), LEX, 0.0, True),  # primary decides
    (Score(0.6, (0.9,)), Score(0.5, (0.1,)), LEX, 0.0, False),
    (Score(0.5, (0.9,)), Score(0.5, (0.8,)), LEX, 0.0, True),  # exact tie: tie-break
    (Score(0.5, (0.8,)), Score(0.5, (0.9,)), LEX, 0.0, False),
    (Score(0.5, (0.8,)), Score(0.5, (0.8,)), LEX, 0.0, False),  # all equal: no
    (Score(0.5, (NAN,)), Score(0.5, (0.1,)), LEX, 0.0, False),  # NaN never wins a tie
    (Score(0.5, (0.1,)), Score(0.5, (NAN,)), LEX, 0.0, True),  # ... and loses to a number
    (Score(0.5, (NAN,)), Score(0.5, (NAN,)), LEX, 0.0, False),
    (Score(0.5, (NAN, 1.0)), Score(0.5, (NAN, 2.0)), ("min", "max", "min"), 0.0, True),  # next decides
    (Score(0.5, (0.8, 9.0)), Score(0.5, (0.8, 1.0)), ("min", "max", "min"), 0.0, False),
    (Score(0.5, (-INF,)), Score(0.5, (0.1,)), LEX, 0.0, False),  # inf is a number in a tie
    (Score(0.5, (INF,)), Score(0.5, (0.1,)), LEX, 0.0, True),
    (Score(0.45, (1.0,)), Score(0.5, (0.1,)), LEX, 0.1, False),  # within min_delta: no
    (Score(0.35, (0.0,)), Score(0.5, (0.1,)), LEX, 0.1, True),
    (Score(0.5, (0.9,)), Score(0.5, (0.8,)), LEX, 0.1, True),  # a tie is an exactly equal primary
    (Score(0.9, (0.1,)), Score(0.8, (0.9,)), ("max", "min"), 0.0, True),
    (Score(0.8, (0.1,)), Score(0.8, (0.9,)), ("max", "min"), 0.0, True),
    (Score(0.1, (0.9,), feasible=False), Score(0.5, (0.1,)), LEX, 0.0, False),  # infeasible: never
    (Score(0.9, (0.1,)), Score(0.1, (0.9,), feasible=False), LEX, 0.0, True),
    (Score(NAN, (0.9,)), Score(0.5, (0.1,)), LEX, 0.0, False),
    (Score(-INF), Score(0.5), ("min",), 0.0, False),
    (Score(0.5), None, ("min",), 0.0, True),
    (Score(0.5, feasible=False), None, ("min",), 0.0, False),
    (Score(NAN), None, ("min",), 0.0, False),
]


@pytest.mark.parametrize("a,b,modes,min_delta,expected", BEATS_TABLE)
def test_beats_table(a, b, modes, min_delta, expected):
    assert beats(a, b, modes, min_delta) is expected


def test_compare_ties_is_antisymmetric():
    values = [0.1, 0.5, NAN, INF]
    for x, y in itertools.product(values, repeat=2):
        assert compare_ties([x], [y], ["max"]) == -compare_ties([y], [x], ["max"])


def test_rank_key_agrees_with_beats():
    """The retention order and the improvement check are one order."""
    grid = [
        Score(p, (t,), f)
        for p, t, f in itertools.product([0.4, 0.5, NAN, INF], [0.1, 0.9, NAN], [True, False])
    ]
    for a, b in itertools.product(grid, repeat=2):
        if a.eligible:
            assert beats(a, b, LEX) == (rank_key(a, LEX) < rank_key(b, LEX)), (a, b)
    # ineligible scores rank after every eligible one
    assert all(rank_key(a, LEX) < rank_key(b, LEX) for a in grid if a.eligible for b in grid if not b.eligible)


# ------------------------------------------------------ monitor decisions
def _decide(objective: Objective, rows, state=None, start=0, **options):
    """Step a `Monitor` through `rows`; return the decisions and the last `MonitorState`."""
    engine, state, decisions = Monitor(objective.engine_modes, **options), state or MonitorState(), []
    for e, row in enumerate(rows, start=start):
        decision, state = engine.step(state, e, objective.score(row))
        decisions.append(decision)
    return decisions, state


# (rows of metrics, improved per epoch, best epoch)
LEX_ROWS = [
    {"val_loss": 0.5, "val_acc": 0.7},  # 0 first: improved
    {"val_loss": 0.5, "val_acc": 0.8},  # 1 tie on loss, higher acc: improved
    {"val_loss": 0.5, "val_acc": 0.8},  # 2 exact tie on both: no
    {"val_loss": 0.5, "val_acc": NAN},  # 3 NaN acc never wins a tie
    {"val_loss": 0.6, "val_acc": 1.0},  # 4 worse loss: no, whatever acc
    {"val_loss": 0.4, "val_acc": NAN},  # 5 better loss: improved, NaN acc or not
    {"val_loss": 0.4, "val_acc": 0.1},  # 6 a number beats the NaN best acc
    {"val_loss": 0.4, "val_acc": 0.1},  # 7 tie: the earlier epoch stays
]


def test_lexicographic_truth_table():
    decisions, engine = _decide(Objective(["val_loss", "val_acc"]), LEX_ROWS)
    assert [d.improved for d in decisions] == [True, True, False, False, False, True, True, False]
    assert (engine.best_value, engine.best_epoch, engine.best.ties) == (0.4, 6, (0.1,))
    assert decisions[3].ties[0] != decisions[3].ties[0]  # the NaN is reported as read


def test_min_delta_applies_to_the_primary_only():
    rows = [{"val_loss": 0.5, "val_acc": 0.7}, {"val_loss": 0.45, "val_acc": 0.99},
            {"val_loss": 0.5, "val_acc": 0.8}, {"val_loss": 0.39, "val_acc": 0.0}]
    decisions, _ = _decide(Objective(["val_loss", "val_acc"]), rows, min_delta=0.1)
    assert [d.improved for d in decisions] == [True, False, True, True]


# (require, rows, improved per epoch)
REQUIRE_TABLE = [
    (
        {"val_recall": (">=", 0.9)},
        [(0.5, 0.95), (0.3, 0.85), (0.4, 0.9), (0.35, NAN), (0.45, 0.99)],
        [True, False, True, False, False],
    ),
    (  # every epoch fails: nothing improves, no best
        {"val_recall": (">", 0.9)},
        [(0.5, 0.9), (0.3, 0.1), (0.1, NAN)],
        [False, False, False],
    ),
    (
        lambda m: m["val_recall"] > 0.5 and m["val_loss"] < 0.45,
        [(0.5, 0.95), (0.4, 0.6), (0.3, 0.4)],
        [False, True, False],
    ),
]


@pytest.mark.parametrize("require,rows,improved", REQUIRE_TABLE)
def test_constraint_truth_table(require, rows, improved):
    objective = Objective("val_loss", require=require)
    decisions, engine = _decide(objective, [{"val_loss": a, "val_recall": b} for a, b in rows])
    assert [d.improved for d in decisions] == improved
    if not any(improved):
        assert engine.best_value is None and engine.best_epoch is None
    assert [d.feasible for d in decisions] == [objective.feasible({"val_loss": a, "val_recall": b})
                                                for a, b in rows]


@pytest.mark.parametrize(
    "op,value,expected",
    [(">=", 0.9, True), (">=", 0.89, False), (">", 0.9, False), (">", 0.91, True),
     ("<=", 0.9, True), ("<=", 0.91, False), ("<", 0.9, False), ("<", 0.89, True),
     ("==", 0.9, True), ("==", 0.91, False)] + [(op, NAN, False) for op in OPS],
)
def test_constraint_ops(op, value, expected):
    assert Objective("val_loss", require={"val_recall": (op, 0.9)}).feasible({"val_recall": value}) is expected


def test_infeasible_epochs_count_as_not_improving_for_patience():
    objective = Objective("val_loss", require={"val_recall": (">=", 0.9)})
    rows = [{"val_loss": 0.5, "val_recall": 0.95}] + [{"val_loss": 0.1, "val_recall": 0.5}] * 2
    decisions, _ = _decide(objective, rows, patience=2)
    assert [(d.improved, d.wait, d.should_stop) for d in decisions] == [
        (True, 0, False), (False, 1, False), (False, 2, True)]


def test_score_function():
    def weighted(m):
        return m["val_loss"] - 0.5 * m["val_acc"]

    objective = Objective(weighted, "min")
    decisions, _ = _decide(objective, [{"val_loss": 0.5, "val_acc": 0.5}, {"val_loss": 0.6, "val_acc": 0.9},
                                        {"val_loss": 0.4, "val_acc": 0.0}])
    assert objective.name == "weighted" and objective.monitor_spec == "weighted"
    assert [d.improved for d in decisions] == [True, True, False]
    assert decisions[1].value == pytest.approx(0.15)
    assert Objective(lambda m: 1.0, ["max"]).name == "score"


@pytest.mark.parametrize(
    "monitor,mode,modes,unresolved",
    [
        (["val_loss", "val_acc"], "auto", ("min", "max"), []),
        (["val_loss", "val_acc"], ["auto", "min"], ("min", "min"), []),
        (["val_acc", "val_auc"], "max", ("max", "max"), []),  # one string for every name
        (["val_loss", "val_q"], "auto", ("min", None), ["val_q"]),
        ("val_q", ["max"], ("max",), []),
    ],
)
def test_modes(monitor, mode, modes, unresolved):
    objective = Objective(monitor, mode)
    assert objective.modes == modes and objective.unresolved == unresolved


def test_unresolved_mode_from_a_keras_direction_then_finalize():
    objective = Objective(["val_loss", "val_q"])
    with pytest.raises(ValueError, match=r'Cannot infer whether `val_q`.*Pass `mode="min"`'):
        objective.finalize()
    assert objective.hint("val_q", "up") and objective.modes == ("min", "max")
    assert not objective.hint("val_q", "down")  # resolved modes stay
    objective.finalize()


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"monitor": ["val_loss", "val_acc"], "mode": ["min"]},
         r"`mode` needs one entry per monitored metric: 2 for monitor=\['val_loss', 'val_acc'\], "
         r"but 1 were given"),
        ({"monitor": "val_loss", "mode": ["min", "max"]}, "needs one entry per monitored metric: 1"),
        ({"monitor": ["val_loss", "val_acc"], "mode": ["min", "maximum"]}, "Received: mode='maximum'"),
        ({"monitor": ["val_loss", "val_loss"]}, "names a metric twice"),
        ({"monitor": []}, "`monitor` must be a metric name, a list of metric names, or a callable"),
        ({"monitor": 3}, "Received: monitor=3"),
        ({"monitor": ["val_loss", 2]}, "`monitor` must be a metric name"),
        ({"monitor": lambda m: 1.0}, "Cannot infer whether the score function `score`.*Pass `mode="),
        ({"monitor": "val_loss", "mode": 1}, '`mode` must be "min", "max", "auto", or a list'),
        ({"monitor": "val_loss", "require": {"val_recall": ("=>", 0.9)}},
         r"Unknown constraint op '=>' in require\['val_recall'\]; use one of >=, >, <=, <, =="),
        ({"monitor": "val_loss", "require": {"val_recall": 0.9}}, r"must be an \(op, threshold\) pair"),
        ({"monitor": "val_loss", "require": {"val_recall": (">=", "0.9")}}, "threshold of require"),
        ({"monitor": "val_loss", "require": {"val_recall": (">=", NAN)}}, "threshold of require"),
        ({"monitor": "val_loss", "require": ["val_recall"]}, "`require` must be a dict"),
        ({"monitor": "val_loss", "require": {}}, "`require` must be a dict"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Objective(**kwargs)


@pytest.mark.parametrize("result", ["0.5", None, True, [0.5], {"a": 1.0}])
def test_score_function_returning_a_non_number(result):
    def my_score(m):
        return result

    with pytest.raises(ValueError, match=r"The score function `my_score` \(monitor=\) must return a number"):
        Objective(my_score, "max").score({"val_loss": 0.5})


def test_score_function_reading_an_absent_metric():
    with pytest.raises(ValueError, match=r"`f1` read the metric 'val_f1', which is not among.*\['val_loss'\]"):
        Objective(_named("f1", lambda m: m["val_f1"]), "max").score({"val_loss": 0.5})


def _named(name, fn):
    fn.__name__ = name
    return fn


def test_constraint_callable_returning_a_non_bool():
    objective = Objective("val_loss", require=_named("recall_ok", lambda m: m["val_recall"]))
    with pytest.raises(ValueError, match=r"The constraint `recall_ok` \(require=\) must return True or False"):
        objective.score({"val_loss": 0.5, "val_recall": 0.9})


def test_constraint_on_an_absent_metric_names_it_and_lists_the_keys():
    objective = Objective("val_loss", require={"val_recall": (">=", 0.9)})
    with pytest.raises(ValueError, match=r"names the metric 'val_recall'.*: \['loss', 'val_loss'\]"):
        objective.check_keys({"val_loss": 0.5, "loss": 0.4})
    # Without the monitored metric needed, the constraint is still checked.
    with pytest.raises(ValueError, match="'val_recall'"):
        objective.check_keys({"loss": 0.4}, needs_monitor=False)


def test_a_tie_break_metric_that_is_absent():
    with pytest.raises(ValueError, match=r"The monitored metric 'val_acc' is not among.*\['val_loss'\]"):
        Objective(["val_loss", "val_acc"]).check_keys({"val_loss": 0.5})


# ------------------------------------------------------------- retention
def test_top_k_with_tie_breaks_and_constraints():
    modes = LEX
    rows = [(0.5, 0.7, True), (0.5, 0.9, True), (0.1, 0.9, False), (0.5, NAN, True), (0.5, 0.8, True)]
    kept = []
    admitted = []
    for epoch, (loss, acc, feasible) in enumerate(rows):
        new = Record(epoch, loss, f"e{epoch}", ties=(acc,), feasible=feasible)
        after = BestK(2, modes).keep(kept, new)
        admitted.append(new.score.eligible and any(r is new for r in after))
        if admitted[-1]:
            kept = after
    assert admitted == [True, True, False, False, True]
    assert [r.path for r in ranked(kept, modes)] == ["e1", "e4"]


def test_infeasible_records_rank_last():
    records = [Record(0, 0.1, "a", feasible=False), Record(1, 0.5, "b")]
    assert [r.path for r in ranked(records, "min")] == ["b", "a"]


def test_record_json_with_ties_round_trips_and_old_records_read():
    r = Record(2, 0.5, "e2", {"val_acc": 0.8}, ties=(NAN, 0.8), feasible=False)
    back = Record.from_json(json.loads(json.dumps(r.to_json())))
    assert math.isnan(back.ties[0]) and back.ties[1] == 0.8 and back.feasible is False
    old = Record.from_json({"epoch": 1, "value": 0.5, "path": "e1", "metrics": {}})
    assert old.ties == () and old.feasible is True
    assert "ties" not in Record(0, 0.5, "a").to_json()  # version-1 shape when unused


# ------------------------------------------------------------------ state
def test_state_round_trip_with_tie_breaks_at_every_split():
    objective = Objective(["val_loss", "val_acc"], require={"val_recall": (">=", 0.5)})
    rows = [dict(r, val_recall=1.0) for r in LEX_ROWS] + [{"val_loss": 0.3, "val_acc": 0.0, "val_recall": 0.1}]
    options = dict(patience=3, start_from_epoch=1)
    whole, _ = _decide(objective, rows, **options)
    key = [(d.improved, d.best, d.best_epoch, d.wait, d.should_stop) for d in whole]
    for split in range(len(rows) + 1):
        head, state = _decide(objective, rows[:split], **options)
        state = MonitorState.from_json(json.loads(json.dumps(dict(state))))
        tail, _ = _decide(objective, rows[split:], state, split, **options)
        assert [(d.improved, d.best, d.best_epoch, d.wait, d.should_stop) for d in head + tail] == key, split


def test_version_1_state_without_ties_loads():
    m = Monitor(LEX)
    state = MonitorState.from_json({"best": 0.5, "best_epoch": 1, "wait": 0, "patience_best": 0.5})
    assert state.best == Score(0.5, ())
    decision, state = m.step(state, 2, Score(0.5, (0.1,)))
    assert decision.improved is False  # a tie with an unknown tie-break keeps the old
    assert m.step(state, 3, Score(0.4, (0.1,)))[0].improved is True
