"""`smooth=`: the best, patience and the top k decided on a moving mean or an EMA
of the monitored value. The property: a smoothed run decides exactly as a plain
run given the smoothed series (computed here independently), on real files too;
a resumed run decides as an uninterrupted one; bad options are refused."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from keras_best.cli.summary import compare, format_compare, format_table, summarize
from keras_best.core.monitor import Monitor, MonitorState
from keras_best.core.objective import Objective, Score
from keras_best.core.options import Options
from keras_best.core.policy import Policy, RunState
from keras_best.storage import manifest
from keras_best.storage.checks import jsonable
from tests.conftest import make_model, perturb, run_json
from tests.test_monitor import _fold

# Smoothing is pure Python above the backends: CI runs this module on TensorFlow only.
pytestmark = pytest.mark.backend_neutral
NAN = math.nan
SMOOTH = st.one_of(st.tuples(st.just("mean"), st.integers(1, 4)),
                   st.tuples(st.just("ema"), st.sampled_from([0.2, 0.5, 0.7, 1.0])))
VALUES = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.5, 0.25]), st.just(NAN), st.just(math.inf))


def reference(values, smooth):
    """The smoothed series, written from the docs: non-finite values are left out
    (NaN there); a mean of the last n finite values, or s = a*x + (1-a)*s."""
    kind, param = smooth
    seen, s, out = [], None, []
    for x in values:
        if not math.isfinite(x):
            out.append(NAN)
            continue
        seen.append(x)
        if kind == "mean":
            out.append(statistics.fmean(seen[-param:]))
        else:
            s = x if s is None else param * x + (1 - param) * s
            out.append(s)
    return out




def _key(d):
    return (d.epoch, d.value if math.isfinite(d.value) else str(d.value), d.improved, d.best, d.best_epoch,
            d.wait, d.should_stop, d.stop_reason, d.ties)


# ------------------------------------------------------------------ the window
def test_mean_and_ema_tables():
    mean = Monitor(("min",), smooth=("mean", 3))
    ds, state = _fold(mean, [3.0, 1.0, 2.0, 0.0, NAN, 3.0])
    assert [d.value for d in ds[:4]] == [3.0, 2.0, 2.0, 1.0]
    assert math.isnan(ds[4].value) and ds[5].value == pytest.approx(5 / 3)  # the NaN is not averaged
    assert [d.raw for d in ds[:4]] == [3.0, 1.0, 2.0, 0.0]
    assert state.smooth == ((2.0, 0.0, 3.0),)
    ema = Monitor(("max",), smooth=("ema", 0.25))
    ds, _ = _fold(ema, [4.0, 0.0, 8.0])
    assert [d.value for d in ds] == [4.0, 3.0, 4.25]  # s = 0.25 * x + 0.75 * s
    assert [d.improved for d in ds] == [True, False, True]


def test_matches_pandas_rolling_and_ewm():
    pd = pytest.importorskip("pandas")
    xs = list(np.random.default_rng(0).normal(size=30))
    rolled = pd.Series(xs).rolling(4, min_periods=1).mean()
    ewm = pd.Series(xs).ewm(alpha=0.3, adjust=False).mean()
    for smooth, expected in ((("mean", 4), rolled), (("ema", 0.3), ewm)):
        ds, _ = _fold(Monitor(("min",), smooth=smooth), xs)
        np.testing.assert_allclose([d.value for d in ds], expected, rtol=1e-12)


def test_stop_on_non_finite_reads_the_raw_value_and_nan_never_becomes_best():
    m = Monitor(("min",), smooth=("mean", 2), stop_on_non_finite=True)
    ds, _ = _fold(m, [1.0, math.inf])
    assert ds[1].should_stop and str(ds[1].stop_reason) == "non_finite_metric" and ds[1].best == 1.0


def test_each_value_of_a_list_monitor_is_smoothed_and_feasibility_is_the_epochs_own():
    m = Monitor(("min", "max"), smooth=("mean", 2))
    ds, _ = _fold(m, [Score(1.0, (0.2,)), Score(1.0, (0.6,), feasible=False), Score(1.0, (0.0,))])
    assert [d.ties for d in ds] == [(0.2,), (0.4,), (0.3,)]
    assert [d.feasible for d in ds] == [True, False, True]
    assert [d.improved for d in ds] == [True, False, True]  # equal primaries: the smoothed tie-break decides


def test_a_score_function_is_smoothed_on_its_output(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), monitor=lambda m: m["a"] - m["b"],
                                 mode="max", smooth=("mean", 2), verbose=0)
    for epoch, (a, b) in enumerate([(1.0, 0.0), (0.0, 0.0), (0.9, 0.0)]):
        tracker.update(epoch, {"a": a, "b": b})
    assert [h["value"] for h in tracker.history] == [1.0, 0.5, 0.45]
    assert [h["raw"] for h in tracker.history] == [1.0, 0.0, 0.9]
    assert tracker.best_epoch == 0 and tracker.best_raw == 1.0


# --------------------------------------------------- the property, pure and fast
OPTIONS = st.fixed_dictionaries({
    "mode": st.sampled_from(["min", "max"]),
    "min_delta": st.sampled_from([0.0, 0.05]),
    "baseline": st.sampled_from([None, 0.5]),
    "patience": st.sampled_from([None, 0, 2]),
    "start_from_epoch": st.sampled_from([0, 2]),
    "stop_on_non_finite": st.booleans(),
    "stopping_threshold": st.sampled_from([None, 0.1]),
})


@settings(max_examples=400, deadline=None)
@given(OPTIONS, SMOOTH, st.lists(VALUES, min_size=1, max_size=20))
def test_a_smoothed_monitor_decides_as_a_plain_one_on_the_smoothed_series(options, smooth, values):
    options = dict(options)
    if options["mode"] == "max" and options["stopping_threshold"] is not None:
        options["stopping_threshold"] = 0.9
    mode = options.pop("mode")
    smoothed, _ = _fold(Monitor((mode,), smooth=smooth, **options), values)
    plain, _ = _fold(Monitor((mode,), **options), reference(values, smooth))
    assert [_key(d) for d in smoothed] == [_key(d) for d in plain]
    for d, raw in zip(smoothed, values):
        assert d.raw == raw or (math.isnan(d.raw) and math.isnan(raw))
    if options["min_delta"] == 0 and options["baseline"] is None:  # the best is the argmin/argmax
        series = [(v if mode == "min" else -v, i) for i, v in enumerate(reference(values, smooth))
                  if math.isfinite(v)]
        best = min(series, default=(None, None))[1]
        assert smoothed[-1].best_epoch == best


def _policy(smooth=None, **options):
    return Policy(Options(smooth=smooth, **options), Objective("val_loss", options.get("mode", "auto")))


def _plan_all(policy, values, state=None, start=0):
    state = RunState() if state is None else state
    plans = []
    for epoch, v in enumerate(values, start=start):
        plan = policy.plan(state, epoch, None, Score(v), {"val_loss": v}, lambda n, e=epoch: f"e{e}-v{n}.h5")
        plan.state.check(policy.options.keep_top_k)
        plans.append(plan)
        state = plan.state
    return plans, state


def _record_round_trip(policy, state):
    """The state written as keras_best.json is, and read back (what resume=True reads)."""
    record = manifest.RunRecord(monitor="val_loss", mode=policy.objective.mode_spec, state=state,
                                options=policy.options.recorded())
    data = json.loads(json.dumps(jsonable(record.to_json()), allow_nan=False))
    return manifest.RunRecord.from_json(data).state


KEEP = st.fixed_dictionaries({"keep_top_k": st.sampled_from([None, 1, 3]), "save_best_only": st.booleans(),
                              "min_delta": st.sampled_from([0.0, 0.05]), "baseline": st.sampled_from([None, 0.6]),
                              "patience": st.sampled_from([None, 2])})


@settings(max_examples=300, deadline=None)
@given(KEEP, SMOOTH, st.lists(VALUES, min_size=1, max_size=16), st.data())
def test_top_k_resume_and_the_record_follow_the_smoothed_series(options, smooth, values, data):
    policy = _policy(smooth, **options)
    plans, state = _plan_all(policy, values)
    plain, plain_state = _plan_all(_policy(None, **options), reference(values, smooth))
    assert [(p.save_as, p.evict, _key(p.decision)) for p in plans] == [
        (p.save_as, p.evict, _key(p.decision)) for p in plain]
    assert [(r.epoch, r.value, r.path) for r in state.kept] == [(r.epoch, r.value, r.path) for r in plain_state.kept]
    assert state.best_at == plain_state.best_at
    best = state.best_record()
    if best is not None:  # the raw value is recorded beside the smoothed one
        assert best.raw == values[best.epoch] and state.best_raw() == values[best.epoch]
    for p, raw in zip(plans, values):
        assert p.entry["value"] == p.decision.value or math.isnan(p.decision.value)
        assert p.entry["raw"] == raw or math.isnan(raw)
    # Resume at any update, through keras_best.json: the same decisions as uninterrupted.
    cut = data.draw(st.integers(0, len(values)))
    first, middle = _plan_all(policy, values[:cut])
    resumed = dataclasses.replace(_record_round_trip(policy, middle), at=None)  # as a resumed run starts
    rest, final = _plan_all(_policy(smooth, **options), values[cut:], resumed, start=cut)
    assert [_key(p.decision) for p in first + rest] == [_key(p.decision) for p in plans]
    assert _json(final.engine) == _json(state.engine) and final.best_at == state.best_at
    assert _json([r.to_json() for r in final.kept]) == _json([r.to_json() for r in state.kept])


def _json(x):
    return json.dumps(jsonable(dict(x) if isinstance(x, MonitorState) else x))


# ------------------------------------------------------------------ real files
def _fit_model():
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    return model


def _drive(tracker, model, values, start=0):
    weights = {}
    for epoch in range(start, len(values)):
        perturb(model, 100 + epoch)
        weights[epoch] = model.get_weights()
        tracker.update(epoch, {"val_loss": values[epoch]})
    return weights


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.sampled_from([0.5, 0.3, 0.7]), st.just(NAN)), min_size=2, max_size=6),
       smooth=SMOOTH, keep_top_k=st.sampled_from([1, 2]), data=st.data())
def test_one_best_on_real_files_and_after_resume(tmp_path_factory, values, smooth, keep_top_k, data):
    """keras_best.json, load_best and restore_best_weights name the epoch whose
    smoothed value is best, and a run resumed midway writes the same record."""
    expected = _fold(Monitor(("min",)), reference(values, smooth))[0][-1]
    options = dict(smooth=smooth, keep_top_k=keep_top_k, patience=None, restore_best_weights=True, verbose=0,
                   resume=True)
    whole = tmp_path_factory.mktemp("whole")
    model = _fit_model()
    tracker = BestWeightsTracker(model, str(whole / "e{epoch}.weights.h5"), **options)
    weights = _drive(tracker, model, values)
    tracker.finish()
    assert (tracker.best_epoch, tracker.best) == (expected.best_epoch, expected.best)
    if tracker.best is None:
        return
    assert tracker.best_raw == values[tracker.best_epoch]
    assert _same(model.get_weights(), weights[tracker.best_epoch])  # restore_best_weights
    fresh = make_model(seed=3)
    rec = load_best(fresh, str(whole))
    assert (rec.epoch, rec.value, rec.raw) == (tracker.best_epoch, tracker.best, tracker.best_raw)
    assert _same(fresh.get_weights(), weights[tracker.best_epoch])
    record = run_json(whole)
    assert record["best"]["value"] == tracker.best and record["options"]["smooth"] == list(smooth)

    cut = data.draw(st.integers(1, len(values) - 1))
    split = tmp_path_factory.mktemp("split")
    model = _fit_model()
    first = BestWeightsTracker(model, str(split / "e{epoch}.weights.h5"), **options)
    _drive(first, model, values[:cut])
    first.close()
    model = _fit_model()
    second = BestWeightsTracker(model, str(split / "e{epoch}.weights.h5"), **options)
    assert second.initial_epoch == cut
    _drive(second, model, values, start=cut)
    second.finish()
    resumed = run_json(split)
    for key in ("best", "engine", "kept", "history"):
        assert resumed[key] == record[key], key
    assert _same(model.get_weights(), weights[tracker.best_epoch])


def test_resume_refuses_another_smooth(tmp_path):
    model = _fit_model()
    t = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), smooth=("mean", 3), resume=True, verbose=0)
    t.update(0, {"val_loss": 0.5})
    t.finish()
    for other in (None, ("mean", 2), ("ema", 0.5)):
        with pytest.raises(ValueError, match=r"recorded with smooth=\['mean', 3\]"):
            BestWeightsTracker(_fit_model(), str(tmp_path / "b.weights.h5"), smooth=other, resume=True, verbose=0)


def test_fit_with_smooth_records_raw_and_smoothed(tmp_path, data):
    x, y = data
    model = _fit_model()
    cb = BestCheckpoint(str(tmp_path / "e{epoch}.weights.h5"), save_best_only=True, smooth=("ema", 0.5),
                        keep_top_k=2)
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[cb])
    history = run_json(tmp_path)["history"]
    raw = [h["metrics"]["val_loss"] for h in history]
    assert [h["raw"] for h in history] == raw
    assert [h["value"] for h in history] == pytest.approx(reference(raw, ("ema", 0.5)), rel=1e-12)
    assert cb.best == run_json(tmp_path)["best"]["value"]


# ------------------------------------------------------------ inspect, compare, plot
def test_inspect_compare_and_plot_show_raw_and_smoothed(tmp_path):
    runs = []
    for name, smooth in (("a", ("mean", 2)), ("b", None)):
        model = make_model()
        t = BestWeightsTracker(model, str(tmp_path / name / "e{epoch}.weights.h5"), smooth=smooth, verbose=0,
                               keep_top_k=2)
        _drive(t, model, [0.9, 0.1, 0.8, 0.2])
        t.finish()
        runs.append(str(tmp_path / name))
    s = summarize(runs[0], history=True)
    assert s["best"]["value"] == pytest.approx(0.45) and s["best"]["raw"] == 0.8 and s["best"]["epoch"] == 2
    assert [h["raw"] for h in s["history"]] == [0.9, 0.1, 0.8, 0.2]
    assert all("raw" in r for r in s["kept"])
    text = format_table(s)
    assert "smoothed: mean of the last 2" in text and "(raw 0.8000)" in text
    assert "val_loss (smoothed)     raw" in text
    assert "raw" not in format_table(summarize(runs[1], history=True))
    both = compare(runs)
    assert both["ranked_by"] is None  # one smoothed, one not: not comparable
    assert "  raw  " in format_compare(both) and "mean of the last 2" in format_compare(both)
    both = compare([runs[0], runs[0]])
    assert both["ranked_by"] == "val_loss" and both["runs"][0]["best"]["raw"] == 0.8
    pytest.importorskip("matplotlib")
    from keras_best.cli.plot import plot_compare, plot_run

    labels = [line.get_label() for line in plot_run(runs[0]).axes[0].get_lines()]
    assert "val_loss (raw)" in labels and "val_loss (smoothed: mean of the last 2)" in labels
    fig = plot_compare(runs, os.path.join(tmp_path, "c.png"))
    assert any("dotted: raw" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("smooth", [("mean", 0), ("mean", 2.5), ("mean", True), ("ema", 0), ("ema", 1.5),
                                    ("ema", NAN), ("ema", "0.5"), ("median", 3), "mean", ("mean",),
                                    ("mean", 3, 1), 3, {"mean": 3}])
def test_bad_smooth_is_refused_at_construction(tmp_path, model, smooth):
    match = r'`smooth` must be None, \("mean", n\) with n an int >= 1 .* Received: smooth='
    with pytest.raises(ValueError, match=match):
        BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), smooth=smooth)
    with pytest.raises(ValueError, match=match):
        BestCheckpoint(str(tmp_path / "b.weights.h5"), smooth=smooth)
    assert not os.listdir(tmp_path)


def test_good_smooth_is_normalised():
    assert Options(smooth=["mean", np.int64(3)]).smooth == ("mean", 3)
    assert Options(smooth=("ema", np.float32(0.5))).smooth == ("ema", 0.5)
    assert Options(smooth=("ema", 1)).recorded()["smooth"] == ["ema", 1.0]
    assert "smooth" not in Options().recorded()


def test_a_damaged_window_in_the_record_is_a_manifest_error(tmp_path, model):
    t = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), smooth=("mean", 2), verbose=0)
    t.update(0, {"val_loss": 0.5})
    t.finish()
    path = tmp_path / manifest.MANIFEST_NAME
    data = json.loads(path.read_text())
    assert data["engine"]["smooth"] == [[0.5]]
    data["engine"]["smooth"] = [["x"]]
    path.write_text(json.dumps(data))
    with pytest.raises(manifest.ManifestError, match="engine.smooth"):
        load_best(make_model(), str(tmp_path))
