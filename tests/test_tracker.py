"""BestWeightsTracker in real custom loops: the best on disk, top-k, stopping."""

from __future__ import annotations

import math
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_best import BestWeightsTracker, Decision, StopReason, load_best
from tests.conftest import make_model, perturb, run_json

EPOCHS = 10


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x[:, :1] + 0.7 * rng.normal(size=(96, 1)) > 0).astype("float32")
    return x[:64], y[:64], x[64:], y[64:]


class Loop:
    """A user's custom GradientTape loop: tiny model, own steps and metrics."""

    def __init__(self, seed: int = 0):
        keras.utils.set_random_seed(seed)
        self.model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        self.optimizer = keras.optimizers.SGD(0.8)
        self.loss_fn = keras.losses.BinaryCrossentropy()
        self.train_loss = keras.metrics.Mean(name="loss")
        self.val_loss = keras.metrics.Mean(name="val_loss")
        self.val_acc = keras.metrics.BinaryAccuracy(name="val_accuracy")
        self.val_batches = keras.metrics.Sum(name="val_batches")
        x, y, vx, vy = _data()
        self.train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        self.val_ds = tf.data.Dataset.from_tensor_slices((vx, vy)).batch(16)

        @tf.function
        def train_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = self.loss_fn(yb, self.model(xb, training=True))
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
            self.train_loss.update_state(loss)

        @tf.function
        def validation_step(xb, yb):
            pred = self.model(xb)
            self.val_loss.update_state(self.loss_fn(yb, pred))
            self.val_acc.update_state(yb, pred)
            self.val_batches.update_state(1.0)

        self.train_step, self.validation_step = train_step, validation_step
        self.metrics = [self.train_loss, self.val_loss, self.val_acc, self.val_batches]

    def epoch(self):
        for m in self.metrics:
            m.reset_state()
        for batch in self.train_ds:
            self.train_step(*batch)
        for batch in self.val_ds:
            self.validation_step(*batch)

    def logs(self):
        return {m.name: m for m in self.metrics}


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _run_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".weights.h5"))


# ------------------------------------------------------------ the custom loop
def test_custom_loop_best_equals_hand_written_best(tmp_path):
    loop = Loop()
    path = str(tmp_path / "best.weights.h5")
    tracker = BestWeightsTracker(loop.model, path, monitor="val_loss", verbose=0)
    best, best_epoch, best_weights = float("inf"), None, None
    for epoch in range(EPOCHS):
        loop.epoch()
        current = float(loop.val_loss.result())
        if current < best:  # what users hand-write today
            best, best_epoch, best_weights = current, epoch, loop.model.get_weights()
        decision = tracker.update(epoch, loop.logs())
        assert isinstance(decision, Decision)
        assert decision.improved == (best_epoch == epoch)
        assert decision.value == current and decision.best == best
        assert decision.saved_path == (path if decision.improved else None)
    tracker.finish()
    assert 0 < best_epoch < EPOCHS - 1  # the run got worse after its best: a real test
    assert (tracker.best, tracker.best_epoch, tracker.best_path) == (best, best_epoch, path)
    fresh = Loop(seed=1).model
    fresh.load_weights(path)  # stock Keras
    assert _same(fresh.get_weights(), best_weights)
    assert not _same(loop.model.get_weights(), best_weights)
    assert [h["epoch"] for h in tracker.history] == list(range(EPOCHS))
    assert [h["improved"] for h in tracker.history].count(True) >= 2


def test_templated_names_and_top_k_on_disk(tmp_path):
    loop = Loop()
    tracker = BestWeightsTracker(
        loop.model, str(tmp_path / "{epoch:03d}-{val_loss:.4f}.weights.h5"), keep_top_k=3, verbose=0
    )
    weights, values, evicted, saved = {}, {}, [], []
    for epoch in range(EPOCHS):
        loop.epoch()
        values[epoch] = float(loop.val_loss.result())
        weights[epoch] = loop.model.get_weights()
        d = tracker.update(epoch, loop.logs())
        evicted += d.evicted
        saved += [d.saved_path] if d.saved_path else []
    tracker.finish()  # writes may run in the background until here
    assert _run_files(tmp_path) == sorted(r.path for r in tracker.kept)
    assert evicted and sorted(evicted) == sorted(
        set(saved) - {os.path.join(tmp_path, r.path) for r in tracker.kept}
    )
    assert not any(os.path.exists(p) for p in evicted)
    top3 = sorted(values, key=values.get)[:3]
    assert [r.epoch for r in tracker.kept] == top3  # best first
    for r in tracker.kept:
        assert r.path == f"{r.epoch + 1:03d}-{values[r.epoch]:.4f}.weights.h5"
        assert r.value == values[r.epoch] and r.metrics["val_batches"] == 2.0
        fresh = Loop(seed=1).model
        fresh.load_weights(os.path.join(tmp_path, r.path))
        assert _same(fresh.get_weights(), weights[r.epoch])
    assert tracker.best_path == os.path.join(tmp_path, tracker.kept[0].path)
    data = run_json(tmp_path)
    assert [k["path"] for k in data["kept"]] == [r.path for r in tracker.kept]
    assert data["best"]["epoch"] == top3[0]


@pytest.mark.parametrize(
    "values,kept_epochs,saved_epochs",
    [
        # epoch 2 (0.45) is no new best but enters the best 2, so it is saved
        ([0.5, 0.4, 0.45, 0.6, 0.3], [4, 1], [0, 1, 2, 4]),
        ([0.5, 0.5, 0.5], [0, 1], [0, 1]),  # a tie with the worst kept does not enter
        ([0.1, 0.2, 0.3, 0.4], [0, 1], [0, 1]),
    ],
)
def test_top_k_scripted(tmp_path, model, values, kept_epochs, saved_epochs):
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2, verbose=0)
    saved = []
    for epoch, v in enumerate(values):
        perturb(model, epoch)
        if tracker.update(epoch, {"val_loss": v}).saved_path:
            saved.append(epoch)
    tracker.finish()
    assert saved == saved_epochs
    assert [r.epoch for r in tracker.kept] == kept_epochs
    assert _run_files(tmp_path) == sorted(f"e{e + 1}.weights.h5" for e in kept_epochs)


def test_top_k_never_deletes_files_it_did_not_create(tmp_path, model):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "old.weights.h5").write_bytes(b"not ours")
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=1, verbose=0)
    for epoch, v in enumerate([0.5, 0.4, 0.3]):
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "old.weights.h5").read_bytes() == b"not ours"
    assert _run_files(tmp_path) == ["e3.weights.h5", "old.weights.h5"]


def test_keep_top_k_none_keeps_every_saved_file(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=None, verbose=0)
    for epoch, v in enumerate([0.5, 0.4, 0.6, 0.3]):
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    assert _run_files(tmp_path) == ["e1.weights.h5", "e2.weights.h5", "e4.weights.h5"]


def test_save_best_only_false_saves_every_epoch(tmp_path, model):
    tracker = BestWeightsTracker(
        model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=None, save_best_only=False, verbose=0
    )
    weights = []
    for epoch, v in enumerate([0.5, 0.6, 0.7]):
        perturb(model, epoch)
        weights.append(model.get_weights())
        assert tracker.update(epoch, {"val_loss": v}).saved_path == str(tmp_path / f"e{epoch + 1}.weights.h5")
    tracker.finish()
    assert _run_files(tmp_path) == ["e1.weights.h5", "e2.weights.h5", "e3.weights.h5"]
    for epoch in range(3):
        fresh = make_model(seed=9)
        fresh.load_weights(str(tmp_path / f"e{epoch + 1}.weights.h5"))
        assert _same(fresh.get_weights(), weights[epoch])
    assert tracker.best_epoch == 0


def test_save_best_only_false_with_one_name_never_overwrites_another_epoch(tmp_path, model):
    # keep_top_k=None keeps every saved file: a name that equals a kept file of
    # another epoch gets a version suffix (as Lightning's enable_version_counter).
    path = str(tmp_path / "latest.weights.h5")
    tracker = BestWeightsTracker(model, path, keep_top_k=None, save_best_only=False, verbose=0)
    weights = []
    for epoch, v in enumerate([0.5, 0.6]):
        perturb(model, epoch)
        weights.append(model.get_weights())
        decision = tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    assert decision.saved_path == str(tmp_path / "latest-v1.weights.h5")
    for name, expected in (("latest.weights.h5", weights[0]), ("latest-v1.weights.h5", weights[1])):
        fresh = make_model(seed=9)
        fresh.load_weights(str(tmp_path / name))
        assert _same(fresh.get_weights(), expected)
    assert [r.epoch for r in tracker.kept] == [0, 1] and tracker.best_path == path


# ---------------------------------------------------------------- stopping
def test_restore_best_weights(tmp_path):
    loop = Loop()
    tracker = BestWeightsTracker(
        loop.model, str(tmp_path / "best.weights.h5"), restore_best_weights=True, patience=2, verbose=0
    )
    weights = {}
    for epoch in range(EPOCHS):
        loop.epoch()
        weights[epoch] = loop.model.get_weights()
        d = tracker.update(epoch, loop.logs())
        if d.should_stop:
            break
    assert d.should_stop and d.stop_reason is StopReason.PATIENCE_EXHAUSTED
    assert d.epoch == tracker.best_epoch + 2 and tracker.stopped
    assert _same(loop.model.get_weights(), weights[epoch])  # not before finish()
    tracker.finish()
    assert _same(loop.model.get_weights(), weights[tracker.best_epoch])

@pytest.mark.parametrize("async_save", [True, False])
def test_min_delta_with_top_k_one_best_everywhere(tmp_path, model, async_save):
    # Epochs 1 and 2 beat epoch 0 by less than min_delta: they enter the top 2
    # by raw value, but the best stays epoch 0 (as Keras EarlyStopping would
    # restore it), and restore_best_weights, best_path, the manifest and
    # load_best all name it; its file is never evicted.
    tracker = BestWeightsTracker(
        model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2, min_delta=0.1,
        restore_best_weights=True, verbose=0, async_save=async_save, save_last=True,  # resumed below
    )
    weights = {}
    for epoch, v in enumerate([1.0, 0.98, 0.97, 0.99]):
        perturb(model, epoch)
        weights[epoch] = model.get_weights()
        d = tracker.update(epoch, {"val_loss": v})
    assert (tracker.best_epoch, tracker.best, d.best) == (0, 1.0, 1.0)
    assert sorted(r.epoch for r in tracker.kept) == [0, 2]  # epoch 1 evicted, not epoch 0
    assert tracker.best_path == str(tmp_path / "e1.weights.h5")
    tracker.finish()
    assert _same(model.get_weights(), weights[0])
    fresh = make_model()
    record = load_best(fresh, str(tmp_path))
    assert (record.epoch, record.value) == (0, 1.0)
    assert _same(fresh.get_weights(), weights[0])
    assert sorted(os.listdir(tmp_path)) == ["e1.weights.h5", "e3.weights.h5", "keras_best.json",
                                            "keras_best_history.jsonl", "keras_best_last.h5"]
    # A later real improvement becomes the one best again.
    resumed = BestWeightsTracker(make_model(), str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2,
                                 min_delta=0.1, resume=True, verbose=0)
    assert resumed.best_path == str(tmp_path / "e1.weights.h5")
    perturb(resumed.model, 9)
    resumed.update(4, {"val_loss": 0.5})
    resumed.finish()
    assert load_best(make_model(), str(tmp_path)).epoch == 4
    assert sorted(r.epoch for r in resumed.kept) == [2, 4]



def test_without_restore_the_model_keeps_its_last_weights(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0)
    for epoch, v in enumerate([0.3, 0.5]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v})
    last = model.get_weights()
    tracker.finish()
    assert _same(model.get_weights(), last)


def test_run_drives_the_loop(tmp_path, capsys):
    loop = Loop()
    tracker = BestWeightsTracker(
        loop.model, str(tmp_path / "best.weights.h5"), patience=2, restore_best_weights=True, verbose=1
    )
    history = tracker.run(
        loop.train_step, loop.validation_step, loop.train_ds, loop.val_ds, epochs=EPOCHS, metrics=loop.metrics
    )
    assert history is tracker.history
    stopped_at = history[-1]["epoch"]
    assert stopped_at < EPOCHS - 1 and tracker.stopped  # stopped early
    # The metrics were reset each epoch: two validation batches every time.
    assert all(h["metrics"]["val_batches"] == 2.0 for h in history)
    values = [h["metrics"]["val_loss"] for h in history]
    assert tracker.best_epoch == int(np.argmin(values)) and stopped_at == tracker.best_epoch + 2
    # It called finish(): the best weights are back in the model and on disk.
    fresh = Loop(seed=1).model
    rec = load_best(fresh, str(tmp_path))
    assert rec.epoch == tracker.best_epoch and _same(fresh.get_weights(), loop.model.get_weights())
    out = capsys.readouterr().out
    assert f"Epoch 1/{EPOCHS}" in out and "val_loss:" in out and "early stopping" in out


def test_history_is_a_read_only_view_of_the_run(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0)
    history = tracker.history
    assert history == [] and len(history) == 0 and not isinstance(history, list)
    tracker.update(0, {"val_loss": 0.5})
    tracker.update(1, {"val_loss": 0.4})
    assert history is tracker.history and len(history) == 2  # the view follows the run
    assert [h["epoch"] for h in history] == [0, 1] and history[-1]["value"] == 0.4
    assert history == list(history) and history == tuple(history)
    with pytest.raises(AttributeError):
        history.append({})
    with pytest.raises(TypeError):
        history[0] = {}
    with pytest.raises(TypeError):
        del history[0]
    assert tracker.state_dict()["history"] == list(history)
    tracker.finish()


def test_a_bound_model_source_is_read_before_each_use_of_the_variables(tmp_path, model):
    from keras_best.frontends.tracker import UNBOUND

    reads = []
    tracker = BestWeightsTracker(UNBOUND, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=None,
                                 save_last=True, optimizer=keras.optimizers.SGD(), verbose=0,
                                 restore_best_weights=True)
    tracker.bind(model, model_source=lambda: reads.append(1) or model)
    assert reads == []
    tracker.update(0, {"val_loss": 0.5})
    assert len(reads) == 1
    tracker.save_state(1, 3)
    assert len(reads) == 2
    tracker.finish()
    assert len(reads) == 3


def test_run_with_a_mapping_of_metrics(tmp_path):
    loop = Loop()
    tracker = BestWeightsTracker(loop.model, str(tmp_path / "best.weights.h5"), verbose=0)
    history = tracker.run(
        loop.train_step, loop.validation_step, loop.train_ds, loop.val_ds, epochs=3, metrics=loop.logs()
    )
    assert [h["epoch"] for h in history] == [0, 1, 2]


# ------------------------------------------------------------------ verbose
def test_verbose_lines(tmp_path, model, capsys):
    path = str(tmp_path / "best.weights.h5")
    tracker = BestWeightsTracker(model, path, patience=1, verbose=1, async_save=False)  # async: see test_async_writer
    for epoch, v in enumerate([0.312, 0.2981, 0.4]):
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines == [
        f"Epoch 1: val_loss improved from inf to 0.31200, saving model to {path}",
        f"Epoch 2: val_loss improved from 0.31200 to 0.29810, saving model to {path}",
        "Epoch 3: val_loss did not improve from 0.29810",
        "Epoch 3: early stopping: patience of 1 epoch exhausted; best val_loss 0.29810 at epoch 2",
    ]


def test_verbose_lines_say_why_an_epoch_is_no_candidate(tmp_path, model, capsys):
    # NaN, a broken requirement and early stopping read as words, never "from None"
    # or a raw enum value; restore_best_weights says so as Keras's EarlyStopping does.
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), patience=3, verbose=1, async_save=False,
                                 require={"val_recall": (">=", 0.5)}, restore_best_weights=True)
    rows = [(math.nan, 0.9), (0.4, 0.1), (0.3, 0.9), (math.nan, 0.9), (0.2, 0.1), (0.35, 0.9)]
    for epoch, (v, recall) in enumerate(rows):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v, "val_recall": recall})
    tracker.finish()
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines[0] == "Epoch 1: val_loss is nan: not a candidate; no best yet"
    assert lines[1] == "Epoch 2: val_loss=0.40000 breaks require (val_recall >= 0.5): not a candidate; no best yet"
    assert lines[2].startswith("Epoch 3: val_loss improved from inf to 0.30000, saving model to ")
    assert lines[3] == "Epoch 4: val_loss is nan: not a candidate; best val_loss 0.30000 at epoch 3"
    assert lines[4:] == [
        "Epoch 5: val_loss did not improve from 0.30000 (this epoch breaks require: val_recall >= 0.5)",
        "Epoch 6: val_loss did not improve from 0.30000",
        "Epoch 6: early stopping: patience of 3 epochs exhausted; best val_loss 0.30000 at epoch 3",
        "Restoring model weights from the end of the best epoch: 3.",
    ]
    assert "None" not in "\n".join(lines[3:]) and "patience_exhausted" not in "\n".join(lines)


def test_resume_says_where_it_continues(tmp_path, capsys):
    path = str(tmp_path / "best.weights.h5")
    first = BestWeightsTracker(make_model(), path, save_last=True, optimizer=keras.optimizers.Adam(), verbose=0)
    for epoch, v in enumerate([0.5, 0.1234, 0.3]):
        first.update(epoch, {"val_loss": v})
    first.finish()
    capsys.readouterr()
    again = BestWeightsTracker(make_model(), path, resume=True, optimizer=keras.optimizers.Adam(), verbose=1)
    assert capsys.readouterr().out == (f"Resuming {tmp_path} at epoch 4 (initial_epoch=3; best val_loss 0.12340 "
                                       "at epoch 2)\n")
    assert again.initial_epoch == 3 and again.best_epoch == 1  # the line counts from 1, the API from 0
    assert list(again.epochs(3)) == []  # issue 25: a complete run says so, not "at epoch 4"
    assert capsys.readouterr().out == (f"Resuming {tmp_path}: the run is complete (all 3 epochs trained), "
                                       "nothing left to train (best val_loss 0.12340 at epoch 2)\n")
    assert list(again.epochs(5)) == [3, 4] and capsys.readouterr().out == ""
    again.finish()
    BestWeightsTracker(make_model(), path, resume=True, optimizer=keras.optimizers.Adam(), verbose=0).finish()
    assert capsys.readouterr().out == ""  # verbose=0: silent
    # A run that had stopped early says there is nothing left to train.
    stop_path = str(tmp_path / "stop" / "best.weights.h5")
    stopped = BestWeightsTracker(make_model(), stop_path, patience=1, save_last=True,
                                 optimizer=keras.optimizers.Adam(), verbose=0)
    for epoch, v in enumerate([0.5, 0.6]):
        stopped.update(epoch, {"val_loss": v})
    stopped.finish()
    BestWeightsTracker(make_model(), stop_path, resume=True, patience=1, optimizer=keras.optimizers.Adam()).finish()
    assert capsys.readouterr().out == (
        f"Resuming {tmp_path / 'stop'}: it stopped early at epoch 2 (patience of 1 epoch exhausted), so "
        "there is nothing left to train (best val_loss 0.50000 at epoch 1)\n")


@pytest.mark.parametrize("option", ["resume", "save_last"])
def test_keeping_the_training_state_without_an_optimizer_warns(tmp_path, option):
    # The training state would hold no optimizer: a restart would reset Adam silently.
    with pytest.warns(UserWarning, match=rf"{option}=True saves the training state .* no optimizer .* Pass "
                                         r"optimizer="):
        BestWeightsTracker(make_model(), str(tmp_path / "a" / "b.weights.h5"), verbose=0, **{option: True})
    compiled = make_model()
    compiled.compile(optimizer="adam", loss="mse")  # model.optimizer is the one saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BestWeightsTracker(make_model(), str(tmp_path / "c" / "b.weights.h5"), verbose=0,
                           optimizer=keras.optimizers.Adam(), **{option: True}).finish()
        BestWeightsTracker(compiled, str(tmp_path / "d" / "b.weights.h5"), verbose=0, **{option: True}).finish()
        BestWeightsTracker(make_model(), str(tmp_path / "e" / "b.weights.h5"), verbose=0).finish()


def test_verbose_with_baseline_and_silent(tmp_path, model, capsys):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), mode="max", baseline=0.5, verbose=1)
    tracker.update(0, {"val_loss": 0.4})
    tracker.update(1, {"val_loss": 0.75})
    out = capsys.readouterr().out
    assert "Epoch 1: val_loss did not improve from 0.50000" in out
    assert "Epoch 2: val_loss improved from 0.50000 to 0.75000" in out
    quiet = BestWeightsTracker(make_model(), str(tmp_path / "q" / "b.weights.h5"), verbose=0)
    quiet.update(0, {"val_loss": 0.4})
    assert capsys.readouterr().out == ""


def test_verbose_2_reports_evictions(tmp_path, model, capsys):
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=1, verbose=2)
    tracker.update(0, {"val_loss": 0.5})
    tracker.update(1, {"val_loss": 0.4})
    out = capsys.readouterr().out
    assert f"Epoch 2: deleting {tmp_path / 'e1.weights.h5'} (no longer among the best 1)" in out


# -------------------------------------------------------------------- mode
def test_mode_from_the_name(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), monitor="val_accuracy", verbose=0)
    assert tracker.mode == "max"
    assert [tracker.update(e, {"val_accuracy": v}).improved for e, v in enumerate([0.5, 0.75, 0.6])] == [
        True,
        True,
        False,
    ]


def test_mode_from_a_keras_metric_direction(tmp_path, model):
    cos = keras.metrics.CosineSimilarity(name="val_cos")
    cos.update_state([[1.0, 0.0]], [[1.0, 1.0]])
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), monitor="val_cos", verbose=0)
    assert tracker.mode is None
    assert tracker.update(0, {"val_cos": cos}).improved
    assert tracker.mode == "max"
    cos.reset_state()
    cos.update_state([[1.0, 0.0]], [[1.0, 0.0]])  # higher similarity: better
    assert tracker.update(1, {"val_cos": cos}).improved


def test_mode_that_cannot_be_inferred(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), monitor="val_score", verbose=0)
    with pytest.raises(
        ValueError, match=r'Cannot infer whether `val_score`.*Pass `mode="min"` or `mode="max"`'
    ):
        tracker.update(0, {"val_score": 0.5})
    assert not _run_files(tmp_path)


def test_explicit_mode_wins_over_the_name(tmp_path, model):
    tracker = BestWeightsTracker(
        model, str(tmp_path / "b.weights.h5"), monitor="val_loss", mode="max", verbose=0
    )
    assert [tracker.update(e, {"val_loss": v}).improved for e, v in enumerate([0.5, 0.75])] == [True, True]


# ---------------------------------------------------------------- decisions
def test_nan_never_saved_and_does_not_block(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), verbose=0)
    decisions = [
        tracker.update(e, {"val_loss": v}) for e, v in enumerate([float("nan"), 0.5, float("inf"), 0.4])
    ]
    tracker.finish()
    assert [d.saved_path is not None for d in decisions] == [False, True, False, True]
    assert tracker.best == 0.4 and _run_files(tmp_path) == ["e4.weights.h5"]


def test_step_names_with_batch(tmp_path, model):
    tracker = BestWeightsTracker(
        model, str(tmp_path / "e{epoch}-b{batch}.weights.h5"), monitor="loss", verbose=0
    )
    d = tracker.update(0, {"loss": 0.5}, step=9)
    assert d.saved_path == str(tmp_path / "e1-b10.weights.h5") and tracker.kept[0].step == 9


def test_path_like_filepath(tmp_path, model):
    tracker = BestWeightsTracker(model, tmp_path / "best.weights.h5", verbose=0)
    assert tracker.update(0, {"val_loss": 0.5}).saved_path == str(tmp_path / "best.weights.h5")


# --------------------------------------------------------------- bad input
def _path(tmp_path, name="best.weights.h5"):
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            {"mode": "maximize"},
            ValueError,
            r'`mode` must be one of "min", "max" or "auto". Received: mode=\'maximize\'',
        ),
        ({"keep_top_k": 0}, ValueError, r"`keep_top_k` must be an int >= 1, or None.*Received: keep_top_k=0"),
        ({"keep_top_k": -2}, ValueError, r"Received: keep_top_k=-2"),
        ({"keep_top_k": 1.5}, ValueError, r"Received: keep_top_k=1.5"),
        ({"keep_top_k": True}, ValueError, r"Received: keep_top_k=True"),
        (
            {"keep_top_k": 3},
            ValueError,
            r"keep_top_k=3 keeps several files, so `filepath` needs a placeholder",
        ),
        ({"patience": -1}, ValueError, r"`patience` must be an int >= 0 or None. Received: patience=-1"),
        ({"min_delta": -0.5}, ValueError, r"`min_delta` must be a finite number >= 0"),
        ({"start_from_epoch": -1}, ValueError, r"`start_from_epoch` must be an int >= 0"),
        ({"monitor": ""}, ValueError, r"`monitor` must be a metric name"),
        (
            {"save_format": "savedmodel"},
            ValueError,
            r'save_format="savedmodel" writes a directory; give a directory',
        ),
        ({"save_format": "pickle"}, ValueError, r"`save_format` must be one of"),
    ],
)
def test_bad_arguments(tmp_path, model, kwargs, error, match):
    with pytest.raises(error, match=match):
        BestWeightsTracker(model, _path(tmp_path), **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name,match",
    [
        ("best.h5", r"End it in `\.weights\.h5` \(weights\).*Received: filepath=.*best\.h5"),
        ("best", r'save_format="orbax" \(a filepath without a file extension\).*JAX backend'),  # TF here
        ("best.weights", r"End it in `\.weights\.h5`"),
        ("{epoch}.h5", r"End it in `\.weights\.h5`"),
        ("{}.weights.h5", r"`filepath` placeholders must be metric names or `epoch`"),
        ("{epoch!r}{.weights.h5", r"`filepath` is not a valid format string"),
    ],
)
def test_bad_file_names(tmp_path, model, name, match):
    with pytest.raises(ValueError, match=match):
        BestWeightsTracker(model, _path(tmp_path, name))


def test_placeholder_in_the_directory(tmp_path, model):
    with pytest.raises(ValueError, match="Placeholders are allowed in the file name only"):
        BestWeightsTracker(model, str(tmp_path / "{epoch}" / "best.weights.h5"))


def test_directory_that_cannot_be_created(tmp_path, model):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=r"Cannot create the run directory .*a_file/run.*writable location"):
        BestWeightsTracker(model, str(tmp_path / "a_file" / "run" / "best.weights.h5"))
    assert (tmp_path / "a_file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_directory_that_is_not_writable(tmp_path, model):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match=r"The run directory .*ro.* is not writable"):
            BestWeightsTracker(model, str(ro / "best.weights.h5"))
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("not_a_model", [None, "model", keras.layers.Dense(2), object()])
def test_not_a_keras_model(tmp_path, not_a_model):
    with pytest.raises(TypeError, match=r"`model` must be a keras.Model.*Received: "):
        BestWeightsTracker(not_a_model, _path(tmp_path))


@pytest.fixture
def two_good_epochs(tmp_path, model):
    """A run with epoch 2 saved as best; returns (tracker, saved bytes, manifest bytes)."""
    tracker = BestWeightsTracker(
        model, _path(tmp_path, "{epoch}-{val_loss:.2f}.weights.h5"), monitor="val_loss", verbose=0
    )
    perturb(model, 1)
    tracker.update(0, {"val_loss": 0.5, "val_acc": 0.5})
    perturb(model, 2)
    tracker.update(1, {"val_loss": 0.25, "val_acc": 0.75})
    tracker.finish()  # on disk now; a later update() goes on with the run
    best = (tmp_path / "2-0.25.weights.h5").read_bytes()
    record = (tmp_path / "keras_best.json").read_bytes()
    return tracker, best, record, model.get_weights()


@pytest.mark.parametrize(
    "metrics,match",
    [
        (
            {"loss": 0.1, "val_acc": 0.9},
            r"The monitored metric 'val_loss' is not among the metrics given to "
            r"update\(\): \['loss', 'val_acc'\]. HINT",
        ),
        (
            {"val_loss": "0.1", "val_acc": 0.9},
            r"Metric 'val_loss' must be a number.*Received a string: '0.1'",
        ),
        ({"val_loss": np.array([0.1, 0.2]), "val_acc": 0.9}, r"Metric 'val_loss' must be a scalar number"),
        ({"val_loss": 0.1, "val_acc": [0.9, 0.8]}, r"Metric 'val_acc' must be a scalar number"),
        ({"val_loss": True}, r"Metric 'val_loss' must be a number, not a bool"),
        ([0.1], r"`metrics` must be a dict of name -> value"),
    ],
)
def test_bad_metrics_at_epoch_3_lose_nothing(tmp_path, model, two_good_epochs, metrics, match):
    tracker, best, record, best_weights = two_good_epochs
    perturb(model, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        tracker.update(2, metrics)
    # Epoch 2's best file and the record are intact, and the tracker agrees.
    assert (tmp_path / "2-0.25.weights.h5").read_bytes() == best
    assert (tmp_path / "keras_best.json").read_bytes() == record
    assert (tracker.best, tracker.best_epoch, len(tracker.history)) == (0.25, 1, 2)
    fresh = make_model(seed=9)
    assert load_best(fresh, str(tmp_path)).epoch == 1 and _same(fresh.get_weights(), best_weights)
    # The run goes on once the input is fixed.
    assert tracker.update(2, {"val_loss": 0.125, "val_acc": 0.8}).improved
    tracker.finish()
    assert _run_files(tmp_path) == ["3-0.12.weights.h5"]


def test_template_key_that_is_not_a_metric(tmp_path, model):
    tracker = BestWeightsTracker(model, _path(tmp_path, "{epoch}-{val_acc:.2f}.weights.h5"), verbose=0)
    with pytest.raises(
        ValueError,
        match=r"`filepath` uses \['val_acc'\], which are not among the metrics "
        r"given to update\(\): \['val_loss'\]",
    ):
        tracker.update(0, {"val_loss": 0.5})
    assert not _run_files(tmp_path) and tracker.best is None


def test_bad_format_spec_for_a_metric_fails_at_construction(tmp_path, model):
    # A trial name is formatted at construction, not at the first save hours later.
    with pytest.raises(ValueError, match=r"Failed to format filepath .*Unknown format code 'd'"):
        BestWeightsTracker(model, _path(tmp_path, "{epoch}-{val_loss:d}.weights.h5"), verbose=0)


@pytest.mark.parametrize("epoch", [-1, 1.0, "1", True])
def test_bad_epoch(tmp_path, model, epoch):
    tracker = BestWeightsTracker(model, _path(tmp_path), verbose=0)
    with pytest.raises(ValueError, match=r"`epoch` must be an int >= 0. Received: epoch="):
        tracker.update(epoch, {"val_loss": 0.5})


def test_bad_metric_value_at_the_first_update_saves_nothing(tmp_path, model):
    tracker = BestWeightsTracker(model, _path(tmp_path), verbose=0)
    with pytest.raises(ValueError, match="Received a string"):
        tracker.update(0, {"val_loss": "low"})
    assert not _run_files(tmp_path) and not (tmp_path / "keras_best.json").exists()


@pytest.mark.parametrize(
    "kwargs", [dict(keep_top_k=0), dict(patience=-1), dict(mode="best"), dict(save_format="savedmodel")]
)
def test_bad_arguments_leave_an_existing_run_alone(tmp_path, kwargs):
    model = make_model()
    first = BestWeightsTracker(model, _path(tmp_path), verbose=0)
    first.update(0, {"val_loss": 0.5})
    first.finish()
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path) if not n.startswith(".")}
    with pytest.raises(ValueError):
        BestWeightsTracker(make_model(seed=4), _path(tmp_path), verbose=0, **kwargs)
    after = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path) if not n.startswith(".")}
    assert after == before
    fresh = make_model(seed=9)
    assert load_best(fresh, str(tmp_path)).epoch == 0 and _same(fresh.get_weights(), model.get_weights())


def test_close_waits_for_writes_without_restoring(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), restore_best_weights=True,
                                 verbose=0, async_save=True)
    perturb(model, 0)
    best = model.get_weights()
    tracker.update(0, {"val_loss": 0.1})
    perturb(model, 1)
    last = model.get_weights()
    tracker.close()
    assert _same(model.get_weights(), last)  # abandoned: not restored
    fresh = make_model()
    assert load_best(fresh, str(tmp_path)).epoch == 0 and _same(fresh.get_weights(), best)
    assert not tracker._run.lock.held



def test_a_new_run_moves_the_old_runs_files_aside(tmp_path):
    # issue 25: a directory reused without resume=True left the old run's files beside the new run's.
    run = tmp_path / "run"
    path = str(run / "e{epoch}.weights.h5")

    def train(values, seed):
        model = make_model(seed=seed)
        tracker = BestWeightsTracker(model, path, keep_top_k=2, save_last=True,
                                     optimizer=keras.optimizers.Adam(), verbose=0)
        for epoch, v in enumerate(values):
            perturb(model, seed * 10 + epoch)
            tracker.update(epoch, {"val_loss": v})
        tracker.finish()
        return model

    train([0.5, 0.4, 0.45], seed=1)
    os.makedirs(run / "notes")
    (run / "notes" / "mine.txt").write_text("the user's own")
    old_names = sorted(n for n in os.listdir(run) if not n.startswith(".") and n != "notes")
    outside = sorted(os.listdir(tmp_path))
    with pytest.warns(UserWarning, match=r"already holds a keras-best run .* moved to .*previous-1"):
        train([0.9, 0.8], seed=2)
    assert sorted(os.listdir(tmp_path)) == outside  # nothing outside the run directory
    assert sorted(os.listdir(run / "previous-1")) == old_names  # every file of the old run, none deleted
    assert (run / "notes" / "mine.txt").read_text() == "the user's own"  # not the run's: untouched
    assert sorted(n for n in os.listdir(run) if not n.startswith(".")) == sorted(
        ["e1.weights.h5", "e2.weights.h5", "keras_best.json", "keras_best_history.jsonl", "keras_best_last.h5",
         "notes", "previous-1"])
    restored = make_model(seed=3)
    record = load_best(restored, str(run / "previous-1"))  # the old run, readable where it went
    assert record.epoch == 1 and record.value == 0.4
    assert len(run_json(run)["history"]) == 2  # the new run's own record
    with pytest.warns(UserWarning, match=r"moved to .*previous-2"):
        train([0.7], seed=4)
    assert sorted(os.listdir(run / "previous-2")) == sorted(
        ["e1.weights.h5", "e2.weights.h5", "keras_best.json", "keras_best_history.jsonl", "keras_best_last.h5"])
