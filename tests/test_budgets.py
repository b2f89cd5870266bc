"""Budgets for what a run keeps: `max_disk=` (a bound on the bytes of every
kept file, evicting by a fixed priority, never the best nor the newest training
state) and a time-based `archive_every` (one archived save per so much wall
time, with a clock injected in the policy). Property tests on the policy over
random values, file sizes and option combinations, then real runs whose files
are measured on disk, read back with stock Keras and compared with the record."""

from __future__ import annotations

import datetime
import importlib.util
import math
import os
import uuid
import warnings

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best import BestWeightsTracker, load_best
from keras_best.cli import tables
from keras_best.cli.summary import summarize
from keras_best.core.objective import Objective
from keras_best.core.options import Options
from keras_best.core.paths import RunPath
from keras_best.core.policy import Policy, RunState
from keras_best.core.retention import ArchiveEvery, DiskBudget, Record
from keras_best.storage import files
from tests.conftest import make_model, perturb, run_json

BOOKKEEPING = {"keras_best.json", "keras_best_history.jsonl", ".keras_best.lock"}


class Clock:
    """A fake wall clock: the test moves it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Sim:
    """Drives a `Policy` as the executor does: each update's files have sizes
    (given to the plan as the executor's measured estimate), and `disk` holds
    what the plans leave on disk, name -> (epoch, bytes)."""

    def __init__(self, **options):
        self.options = Options(monitor="val_loss", **options)
        self.objective = Objective("val_loss", self.options.mode)
        self.clock = Clock()
        self.policy = Policy(self.options, self.objective, clock=self.clock)
        self.path = RunPath("e{epoch:03d}.weights.h5")
        self.state = RunState()
        self.disk: dict[str, tuple[int, int]] = {}

    def update(self, epoch, value, save_bytes, state_bytes):
        values = {"val_loss": value}
        plan = self.policy.plan(self.state, epoch, None, self.objective.score(values), values,
                                lambda v: self.path.format(epoch, None, values, v), (save_bytes, state_bytes))
        for name in plan.evict + plan.drop_states:
            del self.disk[name]
        if plan.save_as is not None:
            self.disk[plan.save_as] = (epoch, save_bytes)
        if plan.write_state:
            self.disk[plan.state.last["path"]] = (epoch, state_bytes)
        self.state = plan.state
        return plan

    def named(self):
        s = self.state
        return {r.path for r in s.kept + s.archived} | {x["path"] for x in ((s.last,) if s.last else ()) + s.states}

    def used(self):
        return sum(size for _, size in self.disk.values())


OPTIONS = st.fixed_dictionaries({
    "keep_top_k": st.sampled_from([1, 2, 3, None]),
    "archive_every": st.sampled_from([None, 1, 2, "1h"]),
    "keep_last": st.sampled_from([1, 2, 3]),
    "resume": st.booleans(),
    "save_best_only": st.booleans(),
})


@settings(max_examples=150, deadline=None)
@given(options=OPTIONS, max_disk=st.integers(1, 4000),
       updates=st.lists(st.tuples(st.one_of(st.floats(0, 1), st.just(math.nan)), st.integers(1, 600),
                                  st.integers(1, 900), st.floats(0, 3000)), min_size=1, max_size=14))
def test_the_kept_files_fit_max_disk_and_the_best_and_newest_state_stay(options, max_disk, updates):
    if not options["resume"]:
        options["keep_last"] = 1
    sim = Sim(max_disk=max_disk, **options)
    free = Sim(**options)  # the same run without a budget
    for epoch, (value, save_bytes, state_bytes, seconds) in enumerate(updates):
        sim.clock.now += seconds
        free.clock.now += seconds
        plan = sim.update(epoch, value, save_bytes, state_bytes)
        free.update(epoch, value, save_bytes, state_bytes)
        sim.state.check(sim.options.keep_top_k)  # the one-best invariants: the best is kept
        assert set(sim.disk) == sim.named()  # the directory holds what the record names, nothing more
        best = sim.state.best_record()
        assert (best is None) == (free.state.best_record() is None)
        if best is not None:  # the budget never changes which epoch is best
            assert (best.epoch, best.value) == (free.state.best_record().epoch, free.state.best_record().value)
            assert sim.disk[best.path][0] == best.epoch
        if sim.options.keeps_state:  # the newest state is this update's
            assert sim.disk[sim.state.last["path"]] == (epoch, state_bytes)
        assert sum(r.size for r in {r.path: r for r in sim.state.kept + sim.state.archived}.values()) + sum(
            s["size"] for s in ((sim.state.last,) if sim.state.last else ()) + sim.state.states) == sim.used()
        if plan.over_budget is None:
            assert sim.used() <= max_disk
        else:  # only the best and the newest state are left, and they alone exceed the budget
            protected = {best.path} if best else set()
            protected |= {sim.state.last["path"]} if sim.state.last else set()
            assert set(sim.disk) == protected and sim.used() == plan.over_budget[0] > max_disk


@settings(max_examples=80, deadline=None)
@given(options=OPTIONS, updates=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 600), st.integers(1, 900)),
                                         min_size=1, max_size=10))
def test_a_budget_that_holds_everything_changes_nothing(options, updates):
    if not options["resume"]:
        options["keep_last"] = 1
    sim, free = Sim(max_disk=10**9, **options), Sim(**options)
    for epoch, (value, save_bytes, state_bytes) in enumerate(updates):
        a, b = sim.update(epoch, value, save_bytes, state_bytes), free.update(epoch, value, save_bytes, state_bytes)
        assert (a.save_as, a.evict, a.drop_states, a.over_budget) == (b.save_as, b.evict, b.drop_states, None)


def test_the_eviction_priority_archive_then_lowest_top_k_then_older_states():
    kept = [Record(3, 0.1, "best", size=10), Record(1, 0.2, "second", size=10), Record(0, 0.3, "third", size=10)]
    archived = [Record(0, 0.3, "third", size=10), Record(2, 0.9, "arch2", size=10), Record(4, 0.8, "arch4", size=10)]
    states = [{"path": "s4", "size": 10}, {"path": "s3", "size": 10}, {"path": "s2", "size": 10}]
    protected = {"best", "s4"}
    expected = ["arch2", "arch4", "third", "second", "s2", "s3"]  # "third" is top-k and archived: a top-k file
    for n in range(len(expected) + 1):
        limit = 80 - 10 * n
        gone, left = DiskBudget(limit).evict(kept, archived, states, protected)
        assert list(gone) == expected[:n] and left == 80 - 10 * n
    gone, left = DiskBudget(5).evict(kept, archived, states, protected)
    assert list(gone) == expected and left == 20  # the best and the newest state stay, over the budget


@settings(max_examples=80, deadline=None)
@given(gaps=st.lists(st.floats(0, 7200), min_size=1, max_size=12), hours=st.sampled_from(["1h", "30min", "90s"]),
       max_disk=st.sampled_from([None, 20, 30, 40]))
def test_a_time_based_archive_keeps_one_save_per_period_of_the_injected_clock(gaps, hours, max_disk):
    sim = Sim(archive_every=hours, keep_top_k=1, resume=True, max_disk=max_disk)
    period = {"1h": 3600.0, "30min": 1800.0, "90s": 90.0}[hours]
    expected, last = [], None
    for epoch, gap in enumerate(gaps):
        sim.clock.now += gap
        due = last is None or sim.clock.now - last >= period
        plan = sim.update(epoch, 1.0 - epoch * 0.01 if epoch % 2 else 2.0, 10, 10)
        if max_disk is None:
            assert plan.entry.get("archived", False) == due
        else:  # an archived save the budget evicts at once is not written, and the period goes on
            assert plan.entry.get("archived", False) <= due
            assert sum(size for _, size in sim.disk.values()) <= max_disk
        if plan.entry.get("archived"):
            expected.append(epoch)
            last = sim.clock.now
        assert {r.epoch for r in sim.state.archived} <= set(expected)
        if max_disk is None:
            assert [r.epoch for r in sim.state.archived] == expected
        assert set(sim.disk) == sim.named()
    assert expected and expected[0] == 0  # the first update is archived


def test_the_time_rule_on_its_own():
    rule = ArchiveEvery(60)
    kept = rule.keep([], Record(0, 0.5, "a", time=0.0))
    assert [r.path for r in rule.keep(kept, Record(1, 0.5, "b", time=59.9))] == ["a"]
    assert [r.path for r in rule.keep(kept, Record(1, 0.5, "b", time=60.0))] == ["a", "b"]
    assert rule.keep(kept, Record(1, 0.5, "b", step=3, time=600.0)) == kept  # epoch ends only


@pytest.mark.parametrize("value, expected", [(4096, 4096), ("500MB", 500 * 10**6), ("20GB", 20 * 10**9),
                                             ("1.5GiB", int(1.5 * 2**30)), (" 2 kib ", 2048), (np.int64(7), 7)])
def test_max_disk_accepts_bytes_and_sizes_with_units(value, expected):
    assert Options(max_disk=value).max_disk == expected


@pytest.mark.parametrize("value", ["20 gigs", "GB", "-1GB", 0, -5, 1.5, True, [1]])
def test_a_bad_max_disk_is_refused_at_construction(tmp_path, value):
    with pytest.raises(ValueError, match=r"`max_disk` must be a number of bytes > 0 \(an int, or a string such "
                                         r"as \"500MB\", \"20GB\" or \"1.5GiB\"\), or None\. Received: max_disk="):
        BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), max_disk=value)


@pytest.mark.parametrize("value, expected", [(3, 3), ("1h", "1h"), ("30MIN", "30min"), ("2.5d", "2.5d"),
                                             (datetime.timedelta(hours=2), "7200s")])
def test_archive_every_takes_epochs_or_a_duration(value, expected):
    options = Options(archive_every=value)
    assert options.archive_every == expected
    assert (options.archive_epochs, options.archive_seconds) == (
        (3, None) if value == 3 else (None, {"1h": 3600.0, "30min": 1800.0, "2.5d": 216000.0, "7200s": 7200.0}[
            expected]))


@pytest.mark.parametrize("value", ["1 fortnight", "0s", "h", 0, 2.5, True])
def test_a_bad_archive_every_is_refused_at_construction(tmp_path, value):
    with pytest.raises(ValueError, match=r"`archive_every` must be an int >= 1 \(epochs\), a duration of wall time "
                                         r"such as \"30min\", \"1h\" or \"2d\" .* Received: archive_every="):
        BestWeightsTracker(make_model(), str(tmp_path / "{epoch}.weights.h5"), archive_every=value)


# ------------------------------------------------------------- real files
def _tracker(directory, **options):
    model = make_model()
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return BestWeightsTracker(model, files.join(str(directory), "e{epoch:03d}.weights.h5"), verbose=0,
                              optimizer=optimizer, **options), model


def _named(data):
    names = {k["path"] for k in data["kept"]} | {a["path"] for a in data.get("archived", [])}
    return names | {s["path"] for s in data.get("states", [])} | ({data["last"]["path"]} if data["last"] else set())


def _usage(directory, data):
    return {n: sum(files.size(files.join(directory, m)) for m in files.members(directory, n)) for n in _named(data)}


_PROBED: list[tuple[int, int]] = []


def _one_file_bytes(tmp_path):
    """The bytes of one model file and one training state of `_tracker`'s model."""
    if _PROBED:
        return _PROBED[0]
    tracker, model = _tracker(tmp_path / "probe", resume=True, max_disk=10**12)
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    data = run_json(tmp_path / "probe")
    _PROBED.append((data["kept"][0]["size"], data["last"]["size"]))
    return _PROBED[0]


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.floats(0.0, 2.0), st.just(math.nan)), min_size=1, max_size=8),
       keep_top_k=st.sampled_from([2, 3, None]), archive_every=st.sampled_from([None, 1, 2]),
       keep_last=st.sampled_from([1, 2, 3]), files_worth=st.floats(1.5, 7), split=st.integers(0, 8))
def test_real_runs_stay_within_max_disk_and_the_record_names_exactly_the_files(
        tmp_path_factory, values, keep_top_k, archive_every, keep_last, files_worth, split):
    directory = str(tmp_path_factory.mktemp("run"))
    probe = _one_file_bytes(tmp_path_factory.mktemp("probe"))
    max_disk = int(probe[1] + files_worth * probe[0])
    options = dict(keep_top_k=keep_top_k, archive_every=archive_every, keep_last=keep_last, resume=True,
                   max_disk=max_disk)
    tracker, model = _tracker(directory, **options)
    weights, other = {}, make_model(seed=5)
    for epoch, v in enumerate(values):
        if epoch == split:  # a restart: the budget goes on from the recorded sizes
            tracker.finish()
            tracker, model = _tracker(directory, **options)
        perturb(model, epoch)
        weights[epoch] = model.get_weights()
        tracker.update(epoch, {"val_loss": v})
        tracker.flush()
        data = run_json(directory)
        assert set(os.listdir(directory)) - BOOKKEEPING == _named(data)  # nothing more, nothing less
        usage = _usage(directory, data)
        assert sum(usage.values()) <= max_disk
        recorded = {r["path"]: r["size"] for r in data["kept"] + data["archived"]}
        recorded |= {s["path"]: s["size"] for s in [data["last"], *data["states"]]}
        assert recorded == usage  # the record holds the measured sizes
        assert data["last"]["epoch"] == epoch  # the newest state is never evicted
        if data["best"] is not None:
            best = load_best(other, directory)
            assert best.epoch == data["best"]["epoch"]
            assert all(np.array_equal(a, b) for a, b in zip(other.get_weights(), weights[best.epoch]))
            assert data["best"]["path"] in usage
        for record in data["kept"] + data["archived"]:  # stock Keras reads each kept file: its own epoch
            other.load_weights(os.path.join(directory, record["path"]))
            assert all(np.array_equal(a, b) for a, b in zip(other.get_weights(), weights[record["epoch"]]))
    tracker.finish()


def test_a_budget_below_the_best_and_state_warns_once_and_keeps_them(tmp_path):
    tracker, model = _tracker(tmp_path, resume=True, keep_top_k=3, max_disk="1KB")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch, v in enumerate([0.9, 0.5, 0.7, 0.3]):
            perturb(model, epoch)
            tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    said = [str(w.message) for w in caught if "max_disk" in str(w.message)]
    assert len(said) == 1, said
    data = run_json(tmp_path)
    both = data["kept"][0]["size"] + data["last"]["size"]
    assert said[0].startswith(f"max_disk=1000 bytes is less than the best file and the newest training state "
                              f"take together ({both} bytes)")
    assert [k["epoch"] for k in data["kept"]] == [3] and set(os.listdir(tmp_path)) - BOOKKEEPING == {
        "e004.weights.h5", "keras_best_last.h5"}


def test_a_run_resumed_with_max_disk_measures_its_files_and_evicts(tmp_path):
    run = tmp_path / "run"
    tracker, model = _tracker(run, resume=True, keep_top_k=None)
    for epoch in range(4):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": 1.0 - epoch * 0.1})
    tracker.finish()
    assert "size" not in run_json(run)["kept"][0]  # no budget: no sizes recorded
    one, state = _one_file_bytes(tmp_path)
    tracker, model = _tracker(run, resume=True, keep_top_k=None, max_disk=state + 2 * one)
    tracker.update(4, {"val_loss": 0.55})
    tracker.finish()
    data = run_json(run)
    assert [k["epoch"] for k in data["kept"]] == [4, 3]  # the lowest-ranked went first
    assert set(os.listdir(run)) - BOOKKEEPING == {"e004.weights.h5", "e005.weights.h5", "keras_best_last.h5"}


def test_sharded_sets_are_sized_and_evicted_as_units(tmp_path):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64), keras.layers.Dense(64),
                              keras.layers.Dense(1)])
    probe, directory = str(tmp_path / "probe"), str(tmp_path / "run")
    options = dict(max_shard_size=20_000 / 1024**3, keep_top_k=None, verbose=0)
    tracker = BestWeightsTracker(model, probe + "/b-{epoch:02d}.weights.json", max_disk=10**9, **options)
    tracker.update(0, {"val_loss": 0.5})
    tracker.finish()
    one = run_json(probe)["kept"][0]["size"]
    assert len(set(os.listdir(probe)) - BOOKKEEPING) > 2  # several shards and their index
    assert one == sum(os.path.getsize(os.path.join(probe, n)) for n in os.listdir(probe) if n.startswith("b-01"))
    tracker = BestWeightsTracker(model, directory + "/b-{epoch:02d}.weights.json", max_disk=int(2.5 * one),
                                 **options)
    for epoch, v in enumerate([0.9, 0.5, 0.7, 0.3]):
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    data = run_json(directory)
    assert [k["epoch"] for k in data["kept"]] == [3, 1]
    members = {m for k in data["kept"] for m in files.members(directory, k["path"])}
    assert set(os.listdir(directory)) - BOOKKEEPING == members  # whole sets went, none in part
    assert sum(os.path.getsize(os.path.join(directory, m)) for m in members) <= 2.5 * one


@pytest.mark.skipif(importlib.util.find_spec("fsspec") is None, reason="fsspec is not installed")
def test_a_remote_run_directory_is_measured_through_the_file_system_layer():
    bucket = f"memory://budgets-{uuid.uuid4().hex}"
    directory = bucket + "/run"
    tracker, model = _tracker(bucket + "/probe", keep_top_k=None, max_disk=10**9)
    tracker.update(0, {"val_loss": 1.0})
    tracker.flush()
    one = run_json(bucket + "/probe")["kept"][0]["size"]
    tracker.finish()
    tracker, model = _tracker(directory, keep_top_k=None, max_disk=int(2.5 * one))
    for epoch, v in enumerate([0.9, 0.5, 0.7, 0.3]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    data = run_json(directory)
    assert [k["epoch"] for k in data["kept"]] == [3, 1]
    assert {k["path"]: k["size"] for k in data["kept"]} == _usage(directory, data)
    assert set(files.listdir(directory)) - BOOKKEEPING == {"e002.weights.h5", "e004.weights.h5"}


def test_inspect_shows_the_budget_and_the_usage(tmp_path):
    tracker, model = _tracker(tmp_path, keep_top_k=2, max_disk="1MB", archive_every="1h")
    for epoch, v in enumerate([0.9, 0.5, 0.7]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    summary = summarize(str(tmp_path))
    used = sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path) if n.startswith("e"))
    assert summary["disk"] == {"used_bytes": used, "max_disk": 10**6}
    text = tables.format_table(summary)
    assert f"Disk           {tables.format_size(used)} kept of max_disk 976.6 KB (" in text
    assert "Archived files (1 more, the first evicted over max_disk):" in text
    assert "e001.weights.h5  one per 1h" in text  # the first archived save, no longer in the top 2
