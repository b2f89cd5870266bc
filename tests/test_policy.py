"""The save policy on plain data: tables for the option combinations that
once disagreed, and property tests over random sequences and options."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best.core.monitor import MonitorState
from keras_best.core.objective import Objective
from keras_best.core.options import Options
from keras_best.core.paths import RunPath
from keras_best.core.policy import Policy, RunState
from keras_best.core.retention import ranked
from keras_best.storage import files


class Sim:
    """Drives a `Policy` as the executor does, holding the files it names."""

    def __init__(self, template="e{epoch:02d}.weights.h5", monitor="val_loss", **options):
        self.options = Options(monitor=monitor, **options)
        self.objective = Objective(monitor, self.options.mode, self.options.require)
        self.policy = Policy(self.options, self.objective)
        self.path = RunPath(template)
        self.state = RunState()
        self.disk: dict[str, int] = {}  # file name -> the epoch whose weights it holds
        self.host_copy: int | None = None  # the epoch restore_best_weights would restore

    def update(self, epoch, value, step=None, **metrics):
        values = {"val_loss": value, **metrics}
        plan = self.policy.plan(self.state, epoch, step, self.objective.score(values), values,
                                lambda v: self.path.format(epoch, step, values, v))
        if plan.save_as is not None:
            self.disk[plan.save_as] = epoch
        for name in plan.evict:
            del self.disk[name]
        if plan.keep_host_copy:
            self.host_copy = epoch
        self.state = plan.state
        return plan

    @property
    def best(self):
        return (self.state.engine or {}).get("best")

    @property
    def best_epoch(self):
        return (self.state.engine or {}).get("best_epoch")

    def check(self):
        """The one-best invariants, on the names and on the simulated disk."""
        self.state.check(self.options.keep_top_k)
        for r in self.state.kept + self.state.archived:  # no kept file was overwritten by another epoch
            assert self.disk[r.path] == r.epoch
        assert set(self.disk) == {r.path for r in self.state.kept + self.state.archived}  # the rules' union
        record = self.state.best_record()
        if self.best is None:
            assert record is None and self.host_copy is None
            return
        assert record.epoch == self.best_epoch and record.value == self.best
        assert self.disk[record.path] == self.best_epoch  # the best file holds the best epoch's weights
        if self.options.restore_best_weights:
            assert self.host_copy == self.best_epoch
        assert math.isfinite(self.best)


# ------------------------------------------------------------- the cases
def test_baseline_with_min_delta_and_top_k_agree():
    sim = Sim(baseline=0.5, min_delta=0.1, keep_top_k=3, restore_best_weights=True)
    plan = sim.update(0, 0.45)
    sim.check()
    # 0.45 does not beat the baseline by min_delta: not best, and not kept either.
    assert sim.best is None and plan.save_as is None and sim.state.kept == ()
    plan = sim.update(1, 0.35)
    sim.check()
    assert (sim.best, sim.best_epoch, plan.save_as) == (0.35, 1, "e02.weights.h5")


def test_names_that_format_alike_never_overwrite_the_best():
    sim = Sim("best-{val_loss:.1f}.weights.h5", keep_top_k=3)
    first = sim.update(0, 0.51)
    second = sim.update(1, 0.54)
    sim.check()
    assert first.save_as == "best-0.5.weights.h5" and second.save_as == "best-0.5-v1.weights.h5"
    assert sim.state.best_record().path == "best-0.5.weights.h5" and sim.best == 0.51


@pytest.mark.parametrize("step", [None, 3])
def test_the_same_update_twice_is_refused(step):
    sim = Sim(keep_top_k=3)
    sim.update(0, 0.5, step=step)
    with pytest.raises(ValueError, match="must move forward"):
        sim.update(0, 0.4, step=step)
    backwards = Sim(keep_top_k=3)
    backwards.update(1, 0.5)
    with pytest.raises(ValueError, match=r"update\(\) for epoch=0 came after an update for epoch=1"):
        backwards.update(0, 0.3)


def test_steps_move_forward_within_an_epoch_and_the_epoch_end_comes_last():
    sim = Sim("e{epoch}-{val_loss:.4f}.weights.h5", keep_top_k=None)
    for epoch, step in [(0, 1), (0, 5), (0, None), (1, 0), (1, None)]:
        sim.update(epoch, 1.0 / (1 + epoch + (step or 9)), step=step)
    with pytest.raises(ValueError, match=r"epoch=1, step=3 came after an update for epoch=1"):
        sim.update(1, 0.1, step=3)


def test_a_resumed_state_accepts_any_next_update():
    sim = Sim(keep_top_k=2)
    sim.update(3, 0.5)
    sim.state = RunState(**{**sim.state.__dict__, "at": None})  # what Run.adopt does
    sim.update(3, 0.4)  # the same epoch again: its record is replaced
    sim.check()
    assert [r.epoch for r in sim.state.kept] == [3] and sim.best == 0.4


def test_an_update_without_validation_decides_nothing_and_counts_no_patience():
    sim = Sim(patience=1, save_last=True)
    sim.update(0, 0.5)
    values = {"loss": 0.3}
    plan = sim.policy.plan(sim.state, 1, None, None, values, lambda v: f"x{v}")
    assert (plan.decision.improved, plan.save_as, plan.decision.should_stop, plan.write_state) == (
        False, None, False, True)
    assert plan.entry["validated"] is False and math.isnan(plan.entry["value"])
    assert plan.state.engine == sim.state.engine and plan.state.last["epoch"] == 1
    sim.state = plan.state
    assert sim.update(2, 0.6).decision.should_stop  # the first epoch without improvement since 0


def test_the_engine_state_is_a_frozen_value_and_the_rules_are_built_once():
    sim = Sim(patience=2, keep_top_k=2)
    sim.update(0, 0.5)
    monitor, engine = sim.policy.monitor, sim.state.engine
    plan = sim.update(1, 0.6)
    assert sim.policy.monitor is monitor  # options checked once, not at every update
    assert isinstance(engine, MonitorState) and (engine.best_value, engine.wait) == (0.5, 0)
    assert plan.state.engine.wait == 1 and engine.wait == 0  # the old state is untouched
    assert RunState(engine=dict(plan.state.engine)).engine == plan.state.engine  # the JSON form reads back


@pytest.mark.parametrize("value", [0, np.False_, np.int64(0), False])
def test_falsy_save_best_only_means_false(value):
    assert Options(save_best_only=value).save_best_only is False
    assert type(Options(save_best_only=value).save_best_only) is bool


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(verbose="1"), r"`verbose` must be 0, 1 or 2. Received: verbose='1'"),
        (dict(save_best_only="no"), r"`save_best_only` must be True or False. Received: save_best_only='no'"),
        (dict(save_last=2), r"`save_last` must be True or False"),
        (dict(keep_top_k=0), r"`keep_top_k` must be an int >= 1, or None"),
        (dict(keep_top_k=2.0), r"`keep_top_k` must be an int >= 1"),
        (dict(patience=-1), r"`patience` must be an int >= 0"),
        (dict(start_from_epoch=None), r"`start_from_epoch` must be an int >= 0"),
        (dict(baseline="0.5"), r"`baseline` must be a number"),
        (dict(min_delta=-0.1), r"`min_delta` must be a finite number >= 0"),
        (dict(mode="maximum"), r'`mode` must be one of "min", "max" or "auto"'),
    ],
)
def test_bad_options_are_refused_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        Options(**options)


def test_an_unknown_option_names_the_closest():
    with pytest.raises(TypeError, match=r"unexpected argument 'keep_topk'. Did you mean 'keep_top_k'\?"):
        Options.create("BestWeightsTracker", keep_topk=3)


def test_numpy_numbers_are_accepted_as_keras_does():
    o = Options(patience=np.int32(2), keep_top_k=np.int64(3), min_delta=np.float32(0.5), verbose=np.int8(0))
    assert (o.patience, o.keep_top_k, o.min_delta, o.verbose) == (2, 3, 0.5, 0)
    assert all(type(x) in (int, float) for x in (o.patience, o.keep_top_k, o.min_delta, o.verbose))


def test_save_best_only_false_with_top_k_writes_no_file_it_would_evict():
    sim = Sim(keep_top_k=2, save_best_only=False)
    plans = [sim.update(e, v) for e, v in enumerate([0.5, 0.4, 0.9, 0.3])]
    sim.check()
    assert [p.save_as for p in plans] == ["e01.weights.h5", "e02.weights.h5", None, "e04.weights.h5"]
    assert plans[3].evict == ("e01.weights.h5",)


@pytest.mark.parametrize(
    "template",
    ["keras_best.json", "keras_best_history.jsonl", ".kb-tmp-0123456789ab-best.weights.h5",
     "{epoch:\\>3}.weights.h5"],
)
def test_templates_that_cannot_make_a_plain_name_fail_at_construction(template):
    with pytest.raises(ValueError, match="not a plain file name in the run directory"):
        RunPath(template)


def test_a_name_that_becomes_unsafe_at_a_save_is_refused():
    path = RunPath("{tag}.weights.h5")
    with pytest.raises(ValueError, match=r"made the file name '\.\./x.weights.h5'"):
        path.format(0, None, {"tag": "../x"})


# ------------------------------------------------------------ the property test
VALUES = st.one_of(
    st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.51, 0.54, 1.0]),  # repeats: ties, alike names
    st.floats(0.0, 2.0, allow_nan=False),
    st.just(math.nan),
    st.just(math.inf),
)
OPTIONS = st.fixed_dictionaries({
    "keep_top_k": st.sampled_from([None, 1, 2, 3]),
    "save_best_only": st.booleans(),
    "min_delta": st.sampled_from([0.0, 0.05, 0.1]),
    "baseline": st.sampled_from([None, 0.3, 0.5]),
    "patience": st.sampled_from([None, 0, 2]),
    "start_from_epoch": st.sampled_from([0, 2]),
    "restore_best_weights": st.booleans(),
    "mode": st.sampled_from(["min", "max"]),
    "template": st.sampled_from(["e{epoch:02d}.weights.h5", "best-{val_loss:.1f}.weights.h5",
                                 "best.weights.h5", "{val_loss:.0f}-{val_acc:.1f}.keras"]),
    "require": st.sampled_from([None, {"val_acc": (">=", 0.5)}]),
    "archive_every": st.sampled_from([None, None, 1, 3]),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPTIONS, st.lists(st.tuples(VALUES, st.floats(0, 1)), min_size=1, max_size=25))
def test_one_best_everywhere_after_every_update(options, rows):
    options = dict(options)
    template = options.pop("template")
    if not RunPath(template).fields:  # refused at construction by the tracker
        options["keep_top_k"], options["archive_every"] = 1, None
    sim = Sim(template, **options)
    seen_best = []
    for epoch, (value, acc) in enumerate(rows):
        plan = sim.update(epoch, value, val_acc=acc)
        sim.check()
        if plan.decision.improved:
            assert math.isfinite(value) and (options["require"] is None or acc >= 0.5)
            seen_best.append(value)
        assert sim.best == (seen_best[-1] if seen_best else None)
    kept = ranked(sim.state.kept, sim.objective.engine_modes)
    assert list(sim.state.kept) == kept  # recorded best first
    assert all(files.name_problem(r.path) is None for r in kept)
