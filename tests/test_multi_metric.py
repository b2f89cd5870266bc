"""Best by more than one number, end to end: tracker and fit() decide the same,
re-ranking with load_best(by=...), resume, and BestExporter-style exports."""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from keras_best.frontends.loading import rank_kept
from keras_best.storage.record import RunRecord
from tests.conftest import make_model, perturb, run_json

NAN = math.nan
LEX = ["val_loss", "val_acc"]
RECALL = {"val_recall": (">=", 0.9)}

# val_loss, val_acc, val_recall: what each epoch reports
ROWS = [
    (0.50, 0.70, 0.95),  # 0 first: best
    (0.50, 0.80, 0.95),  # 1 equal loss, higher acc: best
    (0.30, 0.90, 0.50),  # 2 breaks the constraint: never best, never kept
    (0.50, NAN, 0.95),  # 3 NaN acc never wins the tie
    (0.40, 0.60, 0.91),  # 4 best
    (0.40, 0.65, 0.92),  # 5 equal loss, higher acc: best
    (0.45, 0.99, 0.99),  # 6 not best; enters the top 3
    (0.45, 0.99, 0.99),  # 7 an exact tie with the 3rd kept (6): the earlier epoch stays
]
IMPROVED = [True, True, False, False, True, True, False, False]
KEPT = [5, 4, 6]  # best first


def _logs(row):
    loss, acc, recall = row
    return {"loss": 1.0, "val_loss": loss, "val_acc": acc, "val_recall": recall}


def _names(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".weights.h5") and n != "last.weights.h5")


def _manifest(directory):
    return run_json(directory)


def _decisions(history):
    return [(h["epoch"], h["improved"], h["saved"], h["wait"], h.get("feasible", True)) for h in history]


def _drive_tracker(tracker, model, rows):
    for epoch, row in enumerate(rows):
        perturb(model, 100 + epoch)
        if tracker.update(epoch, _logs(row)).should_stop:
            break
    tracker.finish()


def _drive_callback(cb, model, rows):
    """What fit() does, by hand."""
    cb.set_model(model)
    cb.set_params({"epochs": len(rows), "verbose": 0, "steps": 1})
    cb.on_train_begin()
    for epoch, row in enumerate(rows):
        model.stop_training = False
        cb.on_epoch_begin(epoch)
        perturb(model, 100 + epoch)
        cb.on_epoch_end(epoch, _logs(row))
        if model.stop_training:
            break
    cb.on_train_end()


def _weights_of_epoch(epoch):
    model = make_model()
    perturb(model, 100 + epoch)
    return model.get_weights()


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------- one engine, two fronts
@pytest.mark.parametrize(
    "options",
    [
        dict(monitor=LEX, require=RECALL, keep_top_k=3),
        dict(monitor=LEX, mode=["min", "max"], require=lambda m: m["val_recall"] >= 0.9, patience=2, keep_top_k=1),
        dict(monitor=lambda m: m["val_loss"] - 0.1 * m["val_acc"], mode="min", keep_top_k=2),
    ],
    ids=["list+require", "callable-require+patience", "score-function"],
)
def test_tracker_and_callback_decide_the_same(tmp_path, options):
    name = "{epoch:02d}.weights.h5"
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "t" / name), verbose=0, **options)
    _drive_tracker(tracker, tracker.model, ROWS)
    cb = BestCheckpoint(str(tmp_path / "c" / name), save_best_only=True, **options)
    _drive_callback(cb, make_model(), ROWS)

    assert _decisions(tracker.history) == _decisions(cb.tracker.history)
    assert _names(tmp_path / "t") == _names(tmp_path / "c")
    assert (tracker.best, tracker.best_epoch) == (cb.best, cb.tracker.best_epoch)
    a, b = _manifest(tmp_path / "t"), _manifest(tmp_path / "c")
    assert a["best"] == b["best"] and a["kept"] == b["kept"]
    loaded = make_model()
    rec = load_best(loaded, tmp_path / "c")
    assert rec.epoch == tracker.best_epoch and _same(loaded.get_weights(), _weights_of_epoch(rec.epoch))


def test_list_monitor_with_constraint_truth_table(tmp_path):
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "{epoch:02d}.weights.h5"), monitor=LEX,
                                 require=RECALL, keep_top_k=3, verbose=0)
    _drive_tracker(tracker, tracker.model, ROWS)
    assert [h["improved"] for h in tracker.history] == IMPROVED
    assert [r.epoch for r in tracker.kept] == KEPT
    assert _names(tmp_path) == [f"{e + 1:02d}.weights.h5" for e in sorted(KEPT)]
    assert (tracker.best, tracker.best_epoch) == (0.40, 5)
    assert tracker.best_path == os.path.join(str(tmp_path), "06.weights.h5")


def test_patience_counts_infeasible_epochs_as_not_improving(tmp_path):
    rows = [(0.5, 0.7, 0.95), (0.1, 0.9, 0.2), (0.05, 0.9, 0.2), (0.01, 0.9, 0.2)]
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), monitor=LEX,
                                 require=RECALL, patience=2, verbose=0)
    _drive_tracker(tracker, tracker.model, rows)
    assert [h["wait"] for h in tracker.history] == [0, 1, 2]
    assert tracker.stopped and tracker.best_epoch == 0


@pytest.mark.parametrize("front", ["tracker", "callback"])
def test_every_epoch_failing_the_constraint_saves_nothing(tmp_path, front):
    rows = [(0.5, 0.7, 0.5), (0.4, 0.8, 0.6), (0.3, 0.9, NAN)]
    options = dict(monitor=LEX, require=RECALL, keep_top_k=2)
    path = str(tmp_path / "{epoch:02d}.weights.h5")
    if front == "tracker":
        tracker = BestWeightsTracker(make_model(), path, verbose=0, **options)
        _drive_tracker(tracker, tracker.model, rows)
    else:
        cb = BestCheckpoint(path, save_best_only=True, **options)
        _drive_callback(cb, make_model(), rows)
        tracker = cb.tracker
    assert tracker.best is None and tracker.best_epoch is None and tracker.best_path is None
    assert _names(tmp_path) == [] and not any(h["improved"] for h in tracker.history)
    assert [h["feasible"] for h in tracker.history] == [False, False, False]
    # It says why: not a baseline that was never set.
    with pytest.raises(FileNotFoundError, match=r"has no saved best yet: every epoch broke the requirement "
                                                r"val_recall >= 0\.9\.$"):
        load_best(make_model(), tmp_path)


def test_save_every_epoch_keeps_infeasible_files_but_never_calls_them_best(tmp_path):
    rows = [(0.5, 0.7, 0.95), (0.1, 0.9, 0.2)]
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "{epoch:02d}.weights.h5"), monitor=LEX,
                                 require=RECALL, save_best_only=False, keep_top_k=None, verbose=0)
    _drive_tracker(tracker, tracker.model, rows)
    assert _names(tmp_path) == ["01.weights.h5", "02.weights.h5"]
    assert load_best(make_model(), tmp_path).epoch == 0
    assert _manifest(tmp_path)["kept"][1]["feasible"] is False


# ------------------------------------------------------------------- one real fit
@pytest.mark.slow
def test_real_fit_decides_as_the_tracker_replaying_its_logs(tmp_path, data):
    x, y = data
    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse",
                  metrics=[keras.metrics.BinaryAccuracy(name="acc", threshold=0.5)])
    weights = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: weights.append(model.get_weights()))
    options = dict(monitor=["val_acc", "val_loss"], require={"val_loss": ("<", 10.0)}, keep_top_k=2)
    cb = BestCheckpoint(str(tmp_path / "fit" / "{epoch:02d}.weights.h5"), save_best_only=True, **options)
    history = model.fit(x[:48], y[:48], validation_data=(x[48:], y[48:]), epochs=8, batch_size=16,
                        verbose=0, callbacks=[cb, keep])
    logs = [{k: v[e] for k, v in history.history.items()} for e in range(8)]

    # By hand: feasible epochs, highest val_acc, then lowest val_loss, then earliest.
    feasible = [e for e, lg in enumerate(logs) if lg["val_loss"] < 10.0]
    expected = min(feasible, key=lambda e: (-logs[e]["val_acc"], logs[e]["val_loss"], e))
    assert cb.tracker.best_epoch == expected

    replay = BestWeightsTracker(make_model(), str(tmp_path / "replay" / "{epoch:02d}.weights.h5"),
                                verbose=0, **options)
    for epoch, lg in enumerate(logs):
        replay.update(epoch, lg)
    replay.finish()
    assert _decisions(replay.history) == _decisions(cb.tracker.history)
    loaded = make_model()
    assert load_best(loaded, tmp_path / "fit").epoch == expected
    assert _same(loaded.get_weights(), weights[expected])
    # Every metric of the logs is recorded per epoch.
    assert set(_manifest(tmp_path / "fit")["history"][0]["metrics"]) == set(history.history)


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize("front", [BestWeightsTracker, BestCheckpoint])
@pytest.mark.parametrize(
    "options,match",
    [
        (dict(monitor=LEX, mode=["min"]), r"`mode` needs one entry per monitored metric: 2"),
        (dict(monitor="val_loss", require={"val_recall": ("=>", 0.9)}), "Unknown constraint op '=>'"),
        (dict(monitor=lambda m: 0.0), "Cannot infer whether the score function `score`"),
        (dict(monitor=["val_loss", None]), "`monitor` must be a metric name"),
    ],
)
def test_errors_at_construction(tmp_path, front, options, match):
    path = str(tmp_path / "best.weights.h5")
    with pytest.raises(ValueError, match=match):
        front(make_model(), path, **options) if front is BestWeightsTracker else front(path, **options)
    assert not os.path.exists(tmp_path / "keras_best.json")


def test_constraint_on_a_metric_never_given_fails_at_the_first_update(tmp_path):
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), require=RECALL, verbose=0)
    with pytest.raises(ValueError, match=r"names the metric 'val_recall'.*\['loss', 'val_loss'\]"):
        tracker.update(0, {"val_loss": 0.5, "loss": 0.4})
    assert _names(tmp_path) == [] and tracker.best is None


def test_score_function_returning_a_non_number_fails_at_update(tmp_path):
    def auc_or_none(m):
        return None

    tracker = BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), monitor=auc_or_none,
                                 mode="max", verbose=0)
    with pytest.raises(ValueError, match=r"The score function `auc_or_none` \(monitor=\) must return a number"):
        tracker.update(0, {"val_loss": 0.5})


def test_constraint_on_a_metric_fit_never_logs(tmp_path, data):
    x, y = data
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    cb = BestCheckpoint(str(tmp_path / "best.weights.h5"), save_best_only=True,
                        require={"val_f1": (">=", 0.5)})
    with pytest.raises(ValueError, match=r"names the metric 'val_f1'.*\['loss', 'val_loss'\]"):
        model.fit(x, y, validation_split=0.25, epochs=1, verbose=0, callbacks=[cb])


def test_mode_of_a_tie_break_from_a_keras_metric(tmp_path):
    quality = keras.metrics.AUC(name="q")  # direction "up"; the name "val_q" says nothing
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), monitor=["val_loss", "val_q"],
                                 verbose=0)
    assert tracker.mode == ["min", None]
    tracker.update(0, {"val_loss": 0.5, "val_q": quality})
    assert tracker.mode == ["min", "max"]
    tracker.finish()
    plain = BestWeightsTracker(make_model(), str(tmp_path / "p" / "best.weights.h5"),
                               monitor=["val_loss", "val_q"], verbose=0)
    with pytest.raises(ValueError, match=r'Cannot infer whether `val_q`.*Pass `mode="min"`'):
        plain.update(0, {"val_loss": 0.5, "val_q": 0.3})


def test_verbose_lines_show_tie_breaks_and_constraints(tmp_path, capsys):
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), monitor=LEX, require=RECALL)
    _drive_tracker(tracker, tracker.model, ROWS[:3])
    out = capsys.readouterr().out
    assert "Epoch 2: val_loss improved from 0.50000 to 0.50000 (val_acc=0.80000), saving model to" in out
    assert "Epoch 3: val_loss did not improve from 0.50000 (this epoch breaks require: val_recall >= 0.9)" in out


# ------------------------------------------------------------------- manifest
def test_manifest_records_every_metric_ties_and_the_objective(tmp_path):
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "{epoch:02d}.weights.h5"), monitor=LEX,
                                 require=RECALL, keep_top_k=3, verbose=0)
    _drive_tracker(tracker, tracker.model, ROWS)
    data = _manifest(tmp_path)
    assert data["version"] == 3
    assert (data["monitor"], data["mode"], data["require"]) == (LEX, ["min", "max"], {"val_recall": [">=", 0.9]})
    assert all(set(h["metrics"]) == {"loss", "val_loss", "val_acc", "val_recall"} for h in data["history"])
    assert [k["epoch"] for k in data["kept"]] == KEPT
    assert data["kept"][0]["metrics"] == {"loss": 1.0, "val_loss": 0.4, "val_acc": 0.65, "val_recall": 0.92}
    assert data["kept"][0]["ties"] == [0.65] and data["history"][3]["ties"] == ["nan"]
    assert data["history"][2]["feasible"] is False
    assert "best_ties" not in data["engine"]  # version 3: the best's, in its kept record
    assert RunRecord.read(str(tmp_path)).state.engine["best_ties"] == [0.65]


def test_state_dict_round_trip(tmp_path):
    options = dict(monitor=LEX, require=RECALL, keep_top_k=3, patience=4, verbose=0)
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "a" / "{epoch:02d}.weights.h5"), **options)
    _drive_tracker(tracker, tracker.model, ROWS[:4])  # epoch 3 has a NaN tie-break
    state = json.loads(json.dumps(tracker.state_dict()))
    other = BestWeightsTracker(make_model(), str(tmp_path / "b" / "{epoch:02d}.weights.h5"), **options)
    other.load_state_dict(state)
    assert json.dumps(other.state_dict()) == json.dumps(tracker.state_dict())
    assert (other.best, other.best_epoch) == (0.5, 1)


def _split_run(tmp_path, split, rows, options):
    path = str(tmp_path / f"split{split}" / "{epoch:02d}.weights.h5")
    first = BestWeightsTracker(make_model(), path, resume=True, verbose=0, **options)
    _drive_tracker(first, first.model, rows[:split])
    second = BestWeightsTracker(make_model(), path, resume=True, verbose=0, **options)  # a restarted job
    assert second.initial_epoch == split
    for epoch in range(split, len(rows)):
        perturb(second.model, 100 + epoch)
        second.update(epoch, _logs(rows[epoch]))
    second.finish()
    return second


@pytest.mark.parametrize("split", [1, 3, 6])
def test_resume_continues_like_an_uninterrupted_run(tmp_path, split):
    options = dict(monitor=LEX, require=RECALL, keep_top_k=3)
    whole = BestWeightsTracker(make_model(), str(tmp_path / "whole" / "{epoch:02d}.weights.h5"),
                               verbose=0, **options)
    _drive_tracker(whole, whole.model, ROWS)
    resumed = _split_run(tmp_path, split, ROWS, options)
    assert _decisions(resumed.history) == _decisions(whole.history)
    assert [r.epoch for r in resumed.kept] == KEPT
    assert _names(tmp_path / f"split{split}") == _names(tmp_path / "whole")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(require={"val_recall": (">=", 0.5)}), r"recorded with require=\{'val_recall': \['>=', 0.9\]\}"),
        (dict(mode=["min", "min"]), r"recorded with mode=\['min', 'max'\]"),
        (dict(monitor=["val_loss"]), r"recorded with monitor=\['val_loss', 'val_acc'\]"),
    ],
)
def test_resume_refuses_another_objective(tmp_path, change, match):
    options = dict(monitor=LEX, require=RECALL)
    path = str(tmp_path / "best.weights.h5")
    first = BestWeightsTracker(make_model(), path, verbose=0, **options)
    _drive_tracker(first, first.model, ROWS[:2])
    with pytest.raises(ValueError, match=match):
        BestWeightsTracker(make_model(), path, resume=True, verbose=0, **{**options, **change})


# ----------------------------------------------------------------- re-ranking
RERANK_ROWS = [  # val_loss, val_acc, val_recall
    (0.50, 0.60, 1.0),
    (0.45, 0.90, 1.0),  # best val_acc
    (0.30, 0.70, 1.0),  # best val_loss
    (0.40, 0.90, 1.0),  # equal best val_acc, lower loss
    (0.60, 0.10, 1.0),  # lowest val_acc
]


@pytest.fixture
def reranked_run(tmp_path):
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "{epoch:02d}.weights.h5"), keep_top_k=None,
                                 save_best_only=False, verbose=0)
    _drive_tracker(tracker, tracker.model, RERANK_ROWS)
    return tmp_path


@pytest.mark.parametrize(
    "by,by_mode,epoch",
    [
        (None, None, 2),
        ("val_loss", None, 2),
        ("val_acc", None, 1),  # equal val_acc: the earlier epoch
        (["val_acc", "val_loss"], None, 3),  # equal val_acc: the lower loss
        ("val_acc", "min", 4),
        (lambda m: m["val_acc"] - m["val_loss"], "max", 3),
    ],
)
def test_load_best_by_another_metric(reranked_run, by, by_mode, epoch):
    model = make_model()
    rec = load_best(model, reranked_run, by=by, by_mode=by_mode)
    assert rec.epoch == epoch and _same(model.get_weights(), _weights_of_epoch(epoch))
    assert rec.path == os.path.join(str(reranked_run), f"{epoch + 1:02d}.weights.h5")
    if by == "val_acc" and by_mode is None:
        assert (rec.monitor, rec.value) == ("val_acc", 0.9)


def test_rank_kept_orders_every_kept_file(reranked_run):
    assert [r.epoch for r in rank_kept(reranked_run, "val_acc")] == [1, 3, 2, 0, 4]
    assert [r.epoch for r in rank_kept(reranked_run, "val_loss")] == [2, 3, 1, 0, 4]


@pytest.mark.parametrize(
    "by,by_mode,match",
    [
        ("val_f1", None, r"Cannot rank by 'val_f1'.*Recorded metrics: \['loss', 'val_acc', 'val_loss', 'val_recall'\]"),
        ("val_recal", None, r"Cannot rank by 'val_recal': unknown metric .* Did you mean 'val_recall'\?$"),
        ("val_acc", "best", "Received: mode='best'"),
    ],
)
def test_load_best_by_errors(reranked_run, by, by_mode, match):
    with pytest.raises(ValueError, match=match):
        load_best(make_model(), reranked_run, by=by, by_mode=by_mode)


def test_rank_by_a_recorded_metric_of_unknown_direction_asks_for_by_mode(tmp_path):
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), verbose=0)
    tracker.update(0, {"val_loss": 0.5, "val_q": 0.3})
    tracker.finish()
    with pytest.raises(ValueError, match=r'Cannot infer whether \'val_q\'.*Pass `by_mode="min"`'):
        rank_kept(tmp_path, "val_q")
    assert rank_kept(tmp_path, "val_q", by_mode="max")[0].value == 0.3


# -------------------------------------------------------------- BestExporter
def _predict(model, x):
    return np.asarray(model(x))


@pytest.mark.slow
def test_best_exporter_parity_keeps_the_n_best_exports_across_a_restart(tmp_path):
    """BestExporter(exports_to_keep=2) with a restart in the middle."""
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    path = str(tmp_path / "export" / "{epoch:02d}")
    options = dict(monitor="val_loss", save_format="savedmodel", keep_top_k=2, resume=True, verbose=0)
    predictions = {}

    def step(tracker, epoch, loss):
        perturb(tracker.model, 100 + epoch)
        predictions[epoch] = _predict(tracker.model, x)
        decision = tracker.update(epoch, {"val_loss": loss, "val_acc": 1 - loss})
        tracker.finish()  # waits for background writes; a later update() goes on
        return decision

    def exports():
        return sorted(n for n in os.listdir(tmp_path / "export") if n[:2].isdigit())

    tracker = BestWeightsTracker(make_model(), path, **options)
    for epoch, loss in enumerate([0.5, 0.3, 0.4]):
        step(tracker, epoch, loss)
    tracker.finish()
    assert exports() == ["02", "03"]
    stamps = {n: os.path.getmtime(tmp_path / "export" / n / "saved_model.pb") for n in exports()}

    # A restarted job: new model object, new tracker on the same directory.
    restarted = BestWeightsTracker(make_model(), path, **options)
    assert (restarted.best, restarted.best_epoch, restarted.initial_epoch) == (0.3, 1, 3)
    d = step(restarted, 3, 0.45)  # worse than both exports: nothing is written over them
    assert d.saved_path is None and exports() == ["02", "03"]
    assert stamps == {n: os.path.getmtime(tmp_path / "export" / n / "saved_model.pb") for n in exports()}
    d = step(restarted, 4, 0.35)  # enters the top 2: epoch 3's export (0.4) goes
    assert not d.improved and exports() == ["02", "05"]
    d = step(restarted, 5, 0.2)
    assert d.improved and exports() == ["02", "06"]  # epoch 4's export (0.35) goes
    restarted.finish()

    for name in exports():
        epoch = int(name) - 1
        export_dir = str(tmp_path / "export" / name)
        loaded = tf.saved_model.load(export_dir)  # keep a reference while serving
        served = loaded.serve(tf.constant(x))
        np.testing.assert_allclose(np.asarray(served), predictions[epoch], rtol=1e-6)
        layer = keras.layers.TFSMLayer(export_dir, call_endpoint="serve")
        np.testing.assert_allclose(np.asarray(layer(x)), predictions[epoch], rtol=1e-6)
    model = make_model()
    rec = load_best(model, tmp_path / "export")
    assert (rec.epoch, rec.value) == (5, 0.2)
    np.testing.assert_allclose(_predict(model, x), predictions[5], rtol=1e-6)
    assert load_best(make_model(), tmp_path / "export", by="val_acc").epoch == 5
