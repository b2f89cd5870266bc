"""Retention: which saved files to keep. Tables over plain records, no I/O."""

from __future__ import annotations

import math

import pytest

from keras_best.core.objective import Objective, Score
from keras_best.core.options import Options
from keras_best.core.policy import Policy, RunState
from keras_best.core.retention import Archive, BestK, LastN, Record, ranked


def _keep(kept, new, k, mode, pinned=None):
    """`BestK` on `kept` and `new`: (kept, evicted)."""
    after = BestK(k, mode).keep(kept, new, pinned=pinned)
    return list(after), [r for r in (*kept, new) if all(r is not a for a in after)]


def _feed(values, keep_top_k, mode, paths=None):
    """Add records one by one; return (kept paths, every evicted path in order)."""
    kept, evicted_all = [], []
    for epoch, value in enumerate(values):
        path = paths[epoch] if paths else f"e{epoch}"
        kept, evicted = _keep(kept, Record(epoch, value, path), keep_top_k, mode)
        evicted_all += [r.path for r in evicted]
    return [r.path for r in ranked(kept, mode)], evicted_all


# (values, keep_top_k, mode, kept best first, evicted in order)
TOP_K_TABLE = [
    ([0.5, 0.4, 0.3], 1, "min", ["e2"], ["e0", "e1"]),
    ([0.5, 0.4, 0.3], 2, "min", ["e2", "e1"], ["e0"]),
    ([0.5, 0.4, 0.3], 3, "min", ["e2", "e1", "e0"], []),
    ([0.5, 0.4, 0.3], 5, "min", ["e2", "e1", "e0"], []),
    ([0.3, 0.4, 0.5], 2, "max", ["e2", "e1"], ["e0"]),
    ([0.3, 0.9, 0.1, 0.8], 2, "min", ["e2", "e0"], ["e1", "e3"]),
    ([0.3, 0.9, 0.1, 0.8], 2, "max", ["e1", "e3"], ["e2", "e0"]),
    # ties: the earlier epoch ranks first and stays
    ([0.5, 0.5, 0.5], 1, "min", ["e0"], ["e1", "e2"]),
    ([0.5, 0.4, 0.4], 2, "min", ["e1", "e2"], ["e0"]),
]


@pytest.mark.parametrize("values,k,mode,kept,evicted", TOP_K_TABLE)
def test_top_k_table(values, k, mode, kept, evicted):
    assert _feed(values, k, mode) == (kept, evicted)


def test_keep_top_k_none_keeps_everything():
    kept, evicted = _feed([0.5, 0.9, 0.1, 0.7], None, "min")
    assert kept == ["e2", "e0", "e3", "e1"] and evicted == []


@pytest.mark.parametrize("template,save_best_only,values", [
    ("best.weights.h5", True, (0.5, 0.4)),  # a resumed epoch improves: saved again under its name
    ("last.weights.h5", False, (0.4, 0.9)),  # every update saved: even a worse value replaces it
])
def test_a_resumed_epoch_replaces_its_own_file_without_a_delete(template, save_best_only, values):
    policy = Policy(Options(monitor="m", mode="min", keep_top_k=1, save_best_only=save_best_only), Objective("m"))
    first = policy.plan(RunState(), 0, None, Score(values[0]), {"m": values[0]}, lambda v: template)
    resumed = RunState(**{**first.state.__dict__, "at": None})  # what Run.adopt does
    plan = policy.plan(resumed, 0, None, Score(values[1]), {"m": values[1]}, lambda v: template)
    assert plan.save_as == template and plan.evict == ()
    assert [(r.epoch, r.value, r.path) for r in plan.state.kept] == [(0, values[1], template)]


def test_a_new_record_outside_the_top_k_is_itself_evicted():
    kept = [Record(0, 0.1, "a"), Record(1, 0.2, "b")]
    new = Record(2, 0.3, "c")
    out, evicted = _keep(kept, new, 2, "min")
    assert [r.path for r in out] == ["a", "b"] and evicted == [new]


def test_retain_does_not_mutate_its_input():
    kept = [Record(0, 0.5, "a")]
    BestK(1, "min").keep(kept, Record(1, 0.1, "b"))
    assert kept == [Record(0, 0.5, "a")]


@pytest.mark.parametrize(
    "kept_values,value,k,mode,expected",
    [
        ([], 0.9, 1, "min", True),
        ([0.5], 0.4, 2, "min", True),  # room left
        ([0.5, 0.3], 0.4, 2, "min", True),  # beats the worst kept
        ([0.5, 0.3], 0.5, 2, "min", False),  # a tie with the worst does not enter
        ([0.5, 0.3], 0.6, 2, "min", False),
        ([0.5, 0.3], 0.2, 2, "max", False),
        ([0.5, 0.3], 0.4, 2, "max", True),
        ([0.5, 0.3], 0.6, 2, "max", True),
        ([], math.nan, 3, "min", False),
        ([], math.inf, 3, "max", False),
        ([], -math.inf, 3, "min", False),
    ],
)
def test_admission_to_the_top_k(kept_values, value, k, mode, expected):
    # The policy's rule: each of `kept_values` entered in turn, does `value` enter?
    policy = Policy(Options(monitor="m", mode=mode, keep_top_k=k), Objective("m", mode))
    state = RunState()
    for epoch, v in enumerate([*kept_values, value]):
        plan = policy.plan(state, epoch, None, Score(v), {"m": v}, lambda version, e=epoch: f"e{e}-{version}")
        state = plan.state
    assert (plan.save_as is not None) is expected


def test_ranked_puts_equal_scores_in_epoch_order():
    records = [Record(0, 0.5, "a"), Record(1, 0.2, "b"), Record(2, 0.2, "c")]
    assert [r.path for r in ranked(records, "min")] == ["b", "c", "a"]
    assert ranked(records, "max")[0].path == "a"


def test_record_json_round_trip():
    r = Record(3, 0.25, "e3.weights.h5", {"val_loss": 0.25, "val_acc": 0.9}, step=7)
    assert Record.from_json(r.to_json()) == r


def test_record_from_json_missing_key():
    with pytest.raises(ValueError, match="Required record attribute 'path' is absent"):
        Record.from_json({"epoch": 1, "value": 0.5})


@pytest.mark.parametrize("mode", ["min", "max"])
def test_non_finite_records_rank_last(mode):
    nan, inf = math.nan, math.inf
    records = [
        Record(0, nan, "a"),
        Record(1, 0.5, "b"),
        Record(2, inf, "c"),
        Record(3, 0.25, "d"),
        Record(4, -inf, "e"),
    ]
    finite = ["d", "b"] if mode == "min" else ["b", "d"]
    for shift in range(len(records)):
        order = [r.path for r in ranked(records[shift:] + records[:shift], mode)]
        assert order == finite + ["a", "c", "e"]
    assert ranked(records, mode)[0].path == finite[0]
    kept, evicted = _keep(records[:2], Record(5, 0.75, "f"), 2, mode)
    assert sorted(r.path for r in kept) == ["b", "f"] and [r.path for r in evicted] == ["a"]


def test_pinned_record_is_never_evicted():
    # Epoch 0 is the engine's best (later values are within min_delta of it).
    a, b, c = Record(0, 1.0, "a"), Record(1, 0.98, "b"), Record(2, 0.97, "c")
    kept, evicted = _keep([a, b], c, 2, "min", pinned=(0, None))
    assert [r.path for r in kept] == ["a", "c"] and [r.path for r in evicted] == ["b"]
    assert ranked(kept, "min")[0] is c  # by raw value alone; the run's best stays `a` (see test_policy)
    # With the pinned one holding a place, only a value better than the other
    # kept record enters.
    for k, enters in ((2, False), (3, True)):
        new = Record(3, 0.975, "d")
        _, evicted = _keep([a, c], new, k, "min", pinned=(0, None))
        assert (new not in evicted) is enters


# ------------------------------------------------------------- each rule, as a table
# (kept (epoch, value), new (epoch, value), k, mode, pinned epoch, epochs kept in order)
BEST_K_TABLE = [
    ([], (0, 0.5), 1, "min", None, [0]),
    ([(0, 0.5)], (1, 0.4), 1, "min", None, [1]),
    ([(0, 0.5)], (1, 0.6), 1, "min", None, [0]),
    ([(0, 0.5)], (1, 0.6), None, "min", None, [0, 1]),
    ([(0, 0.5), (1, 0.3)], (2, 0.4), 2, "min", None, [1, 2]),
    ([(0, 0.5), (1, 0.3)], (2, 0.4), 2, "max", None, [0, 2]),
    ([(0, 0.5), (1, 0.4)], (2, 0.3), 2, "min", 0, [0, 2]),  # the pinned best holds its place
    ([(0, 0.5)], (1, math.nan), 2, "min", None, [0, 1]),  # room left: admission is the policy's
    ([(0, 0.5), (1, 0.2)], (2, math.nan), 2, "min", None, [0, 1]),
]


@pytest.mark.parametrize("kept,new,k,mode,pinned,expected", BEST_K_TABLE)
def test_best_k_table(kept, new, k, mode, pinned, expected):
    records = [Record(e, v, f"e{e}") for e, v in kept]
    out = BestK(k, mode).keep(records, Record(*new, f"e{new[0]}"), pinned=None if pinned is None else (pinned, None))
    assert [r.epoch for r in out] == expected


# (every, archived epochs, new (epoch, step), archived epochs after, the new record among them)
ARCHIVE_TABLE = [
    (None, [], (0, None), [], False),
    (1, [], (0, None), [0], True),
    (2, [], (0, None), [], False),
    (2, [], (1, None), [1], True),
    (2, [1], (2, None), [1], False),
    (2, [1], (3, None), [1, 3], True),
    (2, [1, 3], (3, None), [1, 3], True),  # a resumed epoch: its record is replaced, not doubled
    (2, [1], (3, 5), [1], False),  # a step inside an epoch is never archived
    (3, [2, 5], (8, None), [2, 5, 8], True),
]


@pytest.mark.parametrize("every,archived,new,expected,added", ARCHIVE_TABLE)
def test_archive_table(every, archived, new, expected, added):
    records = [Record(e, 0.5, f"a{e}") for e in archived]
    fresh = Record(new[0], 0.1, "new", step=new[1])
    out = Archive(every).keep(records, fresh)
    assert [r.epoch for r in out] == expected and any(r is fresh for r in out) is added


# (n, kept paths newest first, new path, kept after)
LAST_N_TABLE = [
    (1, [], "s0", ["s0"]),
    (1, ["last"], "last", ["last"]),  # keep_last=1 writes one name again and again
    (2, ["s1"], "s2", ["s2", "s1"]),
    (2, ["s2", "s1"], "s3", ["s3", "s2"]),
    (3, ["s2", "s1"], "s3", ["s3", "s2", "s1"]),
    (3, ["s3", "s2", "s1"], "s3", ["s3", "s2", "s1"]),  # a resumed state of the same name
]


@pytest.mark.parametrize("n,kept,new,expected", LAST_N_TABLE)
def test_last_n_table(n, kept, new, expected):
    out = LastN(n).keep([{"path": p} for p in kept], {"path": new})
    assert [s["path"] for s in out] == expected
