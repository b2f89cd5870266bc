"""One best everywhere, on real files: the tracker, keras_best.json, load_best and
restore_best_weights name the same epoch; the record is validated and confined
to the run directory; the history is append-only; version-1 runs still work."""

from __future__ import annotations

import json
import math
import os
import re

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from keras_best.cli.summary import summarize
from keras_best.storage import manifest
from keras_best.storage.buffers import HostBuffers
from keras_best.storage.manifest import MANIFEST_NAME, ManifestError
from keras_best.training_state import parts, state
from tests.conftest import make_model, perturb, run_json


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _drive(tracker, model, values, **metrics):
    weights = {}
    for epoch, v in enumerate(values):
        perturb(model, 100 + epoch)
        weights[epoch] = model.get_weights()
        tracker.update(epoch, {"val_loss": v, **{k: m[epoch] for k, m in metrics.items()}})
    return weights


def _assert_one_best(tracker, model, directory, weights):
    """The tracker, the record, load_best and restore_best_weights agree."""
    tracker.flush()
    data = manifest.read(str(directory))
    if tracker.best is None:
        assert tracker.best_path is None and data.best is None
        with pytest.raises(FileNotFoundError, match="has no saved best yet"):
            load_best(make_model(seed=3), str(directory))
        return
    assert data.best.epoch == tracker.best_epoch and data.best.value == tracker.best
    assert tracker.best_path == os.path.join(str(directory), data.best.path)
    fresh = make_model(seed=3)
    rec = load_best(fresh, str(directory))
    assert (rec.epoch, rec.value) == (tracker.best_epoch, tracker.best)
    assert _same(fresh.get_weights(), weights[tracker.best_epoch])
    for r in data.kept:  # each kept file holds its own epoch
        other = make_model(seed=4)
        other.load_weights(os.path.join(str(directory), r.path))
        assert _same(other.get_weights(), weights[r.epoch])


# ------------------------------------------------------------ the cases
@pytest.mark.parametrize("async_save", [True, False])
def test_baseline_min_delta_top_k_restore_agree(tmp_path, async_save):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), baseline=0.5, min_delta=0.1,
                                 keep_top_k=3, restore_best_weights=True, verbose=0, async_save=async_save)
    weights = _drive(tracker, model, [0.45])
    assert tracker.best is None and tracker.best_path is None
    _assert_one_best(tracker, model, tmp_path, weights)
    perturb(model, 7)
    after = model.get_weights()
    tracker.finish()
    assert _same(model.get_weights(), after)  # nothing to restore: nothing beat the baseline
    assert os.listdir(tmp_path).count("e1.weights.h5") == 0


def test_names_that_format_alike_keep_both_files(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "best-{val_loss:.1f}.weights.h5"), keep_top_k=3,
                                 restore_best_weights=True, verbose=0)
    weights = _drive(tracker, model, [0.51, 0.54])
    _assert_one_best(tracker, model, tmp_path, weights)
    assert tracker.best == 0.51 and tracker.best_path == str(tmp_path / "best-0.5.weights.h5")
    assert sorted(r.path for r in tracker.kept) == ["best-0.5-v1.weights.h5", "best-0.5.weights.h5"]
    tracker.finish()
    assert _same(model.get_weights(), weights[0])


def test_the_same_epoch_twice_is_an_error_and_changes_nothing(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=3,
                                 restore_best_weights=True, verbose=0)
    weights = _drive(tracker, model, [0.5])
    with pytest.raises(ValueError, match=r"update\(\) for epoch=0 came after an update for epoch=0"):
        tracker.update(0, {"val_loss": 0.4})
    _assert_one_best(tracker, model, tmp_path, weights)
    assert len(tracker.history) == 1


def test_verbose_as_a_string_is_refused_at_construction(tmp_path, model):
    with pytest.raises(ValueError, match=r"`verbose` must be 0, 1 or 2. Received: verbose='1'"):
        BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose="1")
    with pytest.raises(ValueError, match=r"`verbose` must be 0, 1 or 2"):
        BestCheckpoint(str(tmp_path / "b.weights.h5"), verbose="1")
    assert not os.path.exists(tmp_path / MANIFEST_NAME)


def test_a_failing_report_never_rolls_back_a_committed_save(tmp_path, model, monkeypatch):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=1, async_save=False)

    def broken(*args, **kwargs):
        raise OSError("stdout is closed")

    monkeypatch.setattr(tracker, "_reporter", type("Broken", (), {"report": staticmethod(broken)})())
    with pytest.warns(UserWarning, match="could not print epoch 1's line"):
        decision = tracker.update(0, {"val_loss": 0.5})
    assert decision.improved and tracker.best == 0.5
    assert manifest.read(str(tmp_path)).best.epoch == 0


@pytest.mark.parametrize("flag", [0, np.False_])
def test_falsy_save_best_only_saves_every_epoch_and_records_plain_json(tmp_path, model, flag):
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), save_best_only=flag,
                                 keep_top_k=None, verbose=0, async_save=False)
    _drive(tracker, model, [0.5, 0.6, 0.7])
    assert sorted(r.epoch for r in tracker.kept) == [0, 1, 2]
    assert run_json(tmp_path)["options"]["save_best_only"] is False


def test_an_unbuilt_model_records_nothing_and_works_once_built(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    model = Net()
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    with pytest.raises(ValueError, match="The model is not built yet"):
        tracker.update(0, {"val_loss": 0.5})
    assert not os.path.exists(tmp_path / MANIFEST_NAME) and tracker.history == []
    model(np.zeros((1, 3), "float32"))
    tracker.update(0, {"val_loss": 0.5})
    tracker.finish()
    same_code = Net()
    same_code(np.zeros((1, 3), "float32"))
    assert load_best(same_code, str(tmp_path)).epoch == 0  # the fingerprint is of the built model


# ------------------------------------------------- a record that reaches outside
OUTSIDE = ["../outside.weights.h5", "/tmp/elsewhere.weights.h5", "", ".", "..", "sub/x.weights.h5",
           MANIFEST_NAME, "keras_best_history.jsonl", ".keras_best.lock"]


def _hostile(directory, field, value):
    """A version-2 record whose `field` names `value`."""
    good = {"epoch": 0, "value": 0.5, "path": "b.weights.h5", "step": None, "metrics": {"val_loss": 0.5}}
    data = {"format": "keras_best", "version": 2, "monitor": "val_loss", "mode": "min", "history_count": 0,
            "history_bytes": 0, "best": good, "kept": [good],
            "engine": {"best": 0.5, "best_epoch": 0, "wait": 0}}
    bad = {**good, "path": value}
    if field == "kept":
        data["kept"] = [good, bad]
    elif field == "best":
        data["best"] = bad
        data["kept"] = [bad]
    elif field == "last":
        data["last"] = {"path": value, "epoch": 0, "step": None}
    elif field == "export":
        data["export"] = value
    elif field == "renames":
        data["pending"] = {"renames": [[".kb-tmp-0123456789ab-b.weights.h5", value]], "deletes": []}
    elif field == "deletes":
        data["pending"] = {"renames": [], "deletes": [value]}
    (directory / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize("value", OUTSIDE)
@pytest.mark.parametrize("field", ["kept", "best", "last", "export", "renames", "deletes"])
def test_a_record_naming_a_path_outside_the_run_is_refused_and_nothing_is_touched(tmp_path, field, value):
    if field == "last" and value == "keras_best_last.h5":
        return
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "outside.weights.h5"
    victim.write_bytes(b"precious")
    (run / "b.weights.h5").write_bytes(b"kept")
    _hostile(run, field, value)
    before = sorted(os.listdir(run))
    # A new run (resume=False) may start there: it replaces the record at its first save.
    with pytest.warns(UserWarning, match=r"keras_best\.json: field '.*' .*Starting a new run there"):
        BestWeightsTracker(make_model(), str(run / "b.weights.h5"), verbose=0).close()
    for action in (
        lambda: BestWeightsTracker(make_model(), str(run / "b.weights.h5"), resume=True, verbose=0),
        lambda: load_best(make_model(), str(run)),
        lambda: summarize(str(run)),
    ):
        with pytest.raises(ManifestError, match=r"keras_best\.json: field '.*' .*Nothing in it was acted upon"):
            action()
    assert victim.read_bytes() == b"precious"
    assert sorted(set(os.listdir(run)) - {".keras_best.lock"}) == before
    assert (run / "b.weights.h5").read_bytes() == b"kept"


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"kept": "x"}, "kept"),
        ({"kept": [{"epoch": "0", "path": "b.weights.h5", "value": 0.5}]}, "kept[0].epoch"),
        ({"engine": {"best": "low", "best_epoch": 0, "wait": 0}}, "engine.best"),
        ({"engine": {"best": 0.5, "best_epoch": 0, "wait": 1.5}}, "engine.wait"),
        ({"history_bytes": -1}, "history_bytes"),
        ({"stopped": {"epoch": 0, "reason": 3}}, "stopped.reason"),
        ({"best": {"epoch": 3, "value": 0.5, "path": "b.weights.h5"}}, "best"),
    ],
)
def test_fields_of_the_wrong_type_name_the_file_and_the_field(tmp_path, patch, field):
    _hostile(tmp_path, "kept", "b2.weights.h5")
    data = {**json.loads((tmp_path / MANIFEST_NAME).read_text()), **patch}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"keras_best\.json: field '{re.escape(field)}'"):
        manifest.read(str(tmp_path))


def test_a_symlinked_history_file_is_not_followed(tmp_path, model):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / "keras_best_history.jsonl")
    tracker = BestWeightsTracker(model, str(run / "b.weights.h5"), verbose=0, async_save=False)
    with pytest.raises(OSError):
        tracker.update(0, {"val_loss": 0.5})
    assert victim.read_text() == "precious"


def test_a_hard_linked_history_file_is_not_written_through(tmp_path, model):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim, run / "keras_best_history.jsonl")
    tracker = BestWeightsTracker(model, str(run / "b.weights.h5"), verbose=0, async_save=False)
    with pytest.raises(OSError, match=r"keras_best_history\.jsonl is not a plain file of its own \(it has 2 links\)"):
        tracker.update(0, {"val_loss": 0.5})
    assert victim.read_text() == "precious"


# ---------------------------------------------------------- append-only history
def test_the_record_stays_small_and_the_history_is_appended(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0, async_save=False)
    sizes = []
    for epoch in range(60):
        tracker.update(epoch, {"val_loss": 1.0 / (1 + epoch % 7)})
        sizes.append(os.path.getsize(tmp_path / MANIFEST_NAME))
    assert max(sizes[10:]) - min(sizes[10:]) < 64  # the record does not grow with the run
    lines = (tmp_path / "keras_best_history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(60))
    assert run_json(tmp_path)["history_count"] == 60
    assert summarize(str(tmp_path), history=True)["history"][-1]["epoch"] == 59


def test_bytes_past_the_recorded_history_are_ignored_and_overwritten(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
    for epoch in range(3):
        tracker.update(epoch, {"val_loss": 1.0 - epoch / 10})
    tracker.finish()
    with open(tmp_path / "keras_best_history.jsonl", "ab") as f:
        f.write(b'{"epoch": 3, "torn')  # a crash in the middle of an append
    assert [h["epoch"] for h in summarize(str(tmp_path), history=True)["history"]] == [0, 1, 2]
    resumed = BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
    assert resumed.initial_epoch == 3 and len(resumed.history) == 3
    resumed.update(3, {"val_loss": 0.1})
    resumed.finish()
    lines = (tmp_path / "keras_best_history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]


def test_a_version_1_run_loads_resumes_and_inspects(tmp_path):
    model = make_model()
    perturb(model, 1)
    model.save_weights(str(tmp_path / "b.weights.h5"))
    best = {"epoch": 1, "value": 0.4, "path": "b.weights.h5", "step": None, "metrics": {"val_loss": 0.4}}
    history = [{"epoch": e, "step": None, "value": v, "improved": i, "saved": s, "wait": w,
                "metrics": {"val_loss": v}}
               for e, v, i, s, w in [(0, 0.5, True, "b.weights.h5", 0), (1, 0.4, True, "b.weights.h5", 0)]]
    v1 = {"format": "keras_best", "version": 1, "monitor": "val_loss", "mode": "min", "require": None,
          "save_format": "weights", "filepath": "b.weights.h5", "architecture": None, "best": best,
          "best_at": [1, None], "engine": {"best": 0.4, "best_epoch": 1, "wait": 0, "patience_best": 0.4},
          "options": {}, "kept": [best], "last": {"path": "keras_best_last.h5", "epoch": 1}, "stopped": None,
          "export": None, "history": history}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(v1))
    state.snapshot(parts.for_model(model, None), HostBuffers(), None, 1, None).write(
        str(tmp_path / "keras_best_last.h5"))  # a run resumes from its training state
    fresh = make_model(seed=9)
    assert load_best(fresh, str(tmp_path)).epoch == 1 and _same(fresh.get_weights(), model.get_weights())
    assert summarize(str(tmp_path))["updates"] == 2
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
    assert tracker.initial_epoch == 2 and tracker.best == 0.4
    tracker.update(2, {"val_loss": 0.3})
    tracker.finish()
    data = run_json(tmp_path)
    assert data["version"] == 3 and "history" not in json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert [h["epoch"] for h in data["history"]] == [0, 1, 2]  # the old history, carried over


# ----------------------------------------------------- the property, end to end
@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.one_of(st.sampled_from([0.5, 0.51, 0.54, 0.3]), st.just(math.nan),
                              st.floats(0.0, 1.0, allow_nan=False)), min_size=1, max_size=7),
    keep_top_k=st.sampled_from([None, 1, 3]),
    save_best_only=st.booleans(),
    min_delta=st.sampled_from([0.0, 0.1]),
    baseline=st.sampled_from([None, 0.5]),
    async_save=st.booleans(),
    template=st.sampled_from(["e{epoch}.weights.h5", "best-{val_loss:.1f}.weights.h5"]),
)
def test_one_best_on_real_files(tmp_path_factory, values, keep_top_k, save_best_only, min_delta, baseline,
                                async_save, template):
    directory = tmp_path_factory.mktemp("run")
    model = make_model()
    tracker = BestWeightsTracker(model, str(directory / template), keep_top_k=keep_top_k,
                                 save_best_only=save_best_only, min_delta=min_delta, baseline=baseline,
                                 restore_best_weights=True, verbose=0, async_save=async_save)
    weights = {}
    for epoch, v in enumerate(values):
        perturb(model, 100 + epoch)
        weights[epoch] = model.get_weights()
        tracker.update(epoch, {"val_loss": v})
        _assert_one_best(tracker, model, directory, weights)
    tracker.finish()
    if tracker.best is not None:
        assert _same(model.get_weights(), weights[tracker.best_epoch])
