"""The other callbacks of fit() resume with the run, and an exception that ends
training leaves a training state to resume from (real fit() runs, real signals)."""

from __future__ import annotations

import hashlib
import os
import signal

import keras
import numpy as np
import pytest

from keras_best import BestCheckpoint, BestWeightsTracker, Preempted
from keras_best.core.options import Options
from keras_best.keras_adapter.fit import FitGuard
from keras_best.training_state import rng
from tests.conftest import make_model, run_json

SCORES = [5.0, 4.0, 3.0, 3.5, 3.6, 2.9, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6]  # logs["score"] at each epoch
EPOCHS, STEPS = len(SCORES), 4


def data():
    rng_ = np.random.default_rng(0)
    x = rng_.normal(size=(64, 4)).astype("float32")
    return x, (x @ rng_.normal(size=(4, 1))).astype("float32")


def model_for(run_eagerly=False):
    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", run_eagerly=run_eagerly)
    return model


class Score(keras.callbacks.Callback):
    """A monitored value that depends on the epoch only, so that the callbacks'
    decisions do not depend on the weights (a resumed fit() re-trains the interrupted epoch)."""

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = SCORES[epoch]


class Counter(keras.callbacks.Callback):
    """A user callback with state, reset at train begin as Keras's own are."""

    def on_train_begin(self, logs=None):
        self.epochs_seen, self.history = 0, np.zeros(0)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_seen += 1
        self.history = np.append(self.history, logs["score"])

    def get_state(self):
        return {"epochs_seen": self.epochs_seen, "history": self.history}

    def set_state(self, state):
        self.epochs_seen, self.history = state["epochs_seen"], state["history"]


class Rates(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.rates = {}

    def on_epoch_end(self, epoch, logs=None):
        self.rates[epoch] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class At(keras.callbacks.Callback):
    """Does `action()` at the end of batch `batch` of epoch `epoch`."""

    def __init__(self, epoch, batch, action):
        super().__init__()
        self.at, self.action, self.epoch = (epoch, batch), action, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.action()


def fit(run_dir, *before, **options):
    """One fit() with EarlyStopping(patience=3), ReduceLROnPlateau, a user callback; `before` first."""
    x, y = data()
    model = model_for(options.pop("run_eagerly", False))
    early = keras.callbacks.EarlyStopping(monitor="score", mode="min", patience=3)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="score", mode="min", patience=1, factor=0.5, cooldown=1)
    counter, rates = Counter(), Rates()
    checkpoint = BestCheckpoint(os.path.join(run_dir, "best.weights.h5"), monitor="val_loss", save_best_only=True,
                                resume=True, **options)
    callbacks = [*before, Score(), early, plateau, counter, checkpoint, rates]
    model.fit(x, y, validation_data=(x, y), epochs=EPOCHS, batch_size=16, shuffle=False, verbose=0,
              callbacks=callbacks)
    return model, early, plateau, counter, rates, checkpoint


def outcome(model, early, plateau, counter, rates, checkpoint):
    return dict(stopped_epoch=early.stopped_epoch, best_epoch=early.best_epoch, wait=early.wait,
                plateau=(plateau.wait, plateau.best, plateau.cooldown_counter), seen=counter.epochs_seen,
                history=list(counter.history), lr=float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))


def test_a_preempted_fit_resumes_its_callbacks_as_an_uninterrupted_one(tmp_path):
    whole = fit(str(tmp_path / "whole"))
    expected = outcome(*whole)
    assert expected["stopped_epoch"] == 8 and expected["seen"] == 9  # the scores stop it at epoch 9
    assert len(set(whole[4].rates.values())) > 2  # the learning rate was cut more than once

    run = str(tmp_path / "run")
    with pytest.raises(Preempted):  # a real signal, noted at the end of batch 3 of epoch 7
        fit(run, At(6, 2, lambda: os.kill(os.getpid(), signal.SIGUSR1)), preempt_signals=["SIGUSR1"])
    assert run_json(run)["last"] == {"path": "keras_best_last.h5", "epoch": 6, "step": 2}
    resumed = fit(run, preempt_signals=["SIGUSR1"])
    assert resumed[-1].tracker.initial_epoch == 6
    assert outcome(*resumed) == expected
    assert resumed[4].rates == {e: r for e, r in whole[4].rates.items() if e >= 6}  # the same schedule


def test_without_the_callbacks_state_they_would_start_afresh(tmp_path):
    """The comparison above can fail: a state written without the callbacks (an
    older one) resumes them from scratch, with a warning naming them."""
    x, y = data()
    run = str(tmp_path / "run")
    model = model_for()
    checkpoint = BestCheckpoint(os.path.join(run, "best.weights.h5"), save_best_only=True, resume=True)
    model.fit(x, y, validation_data=(x, y), epochs=6, batch_size=16, verbose=0, callbacks=[Score(), checkpoint])
    with pytest.warns(UserWarning, match="holds no state for the callback '0-EarlyStopping'"):
        resumed = fit(run)
    assert resumed[1].stopped_epoch == 9 and resumed[3].epochs_seen == 4  # not 8 and 9 as uninterrupted


def test_a_get_state_that_cannot_be_stored_is_refused_at_train_begin(tmp_path):
    class Bad(keras.callbacks.Callback):
        def get_state(self):
            return {"f": object()}

        def set_state(self, state):
            pass

    x, y = data()
    checkpoint = BestCheckpoint(str(tmp_path / "best.weights.h5"), resume=True)
    with pytest.raises(TypeError, match="The callback '0-Bad' of fit"):
        model_for().fit(x, y, validation_data=(x, y), epochs=1, verbose=0, callbacks=[Bad(), checkpoint])


def _hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Fail(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("boom")


@pytest.mark.parametrize("where", ["callback", "train_step"])
def test_an_exception_in_fit_saves_the_state_of_the_last_batch_and_leaves_the_best(tmp_path, capfd, where):
    run = str(tmp_path / "run")
    seen = {}

    def snapshot():  # the best as it stands after epoch 2
        checkpoint.tracker.flush()
        seen.update(best=checkpoint.best, epoch=checkpoint.best_epoch, file=_hash(checkpoint.best_path),
                    kept=run_json(run)["best"])

    switch = {"on": False}

    class Fragile(keras.layers.Layer):  # raises in the training step once switched on
        def call(self, x):
            if switch["on"]:
                raise RuntimeError("boom in the step")
            return x

    x, y = data()
    if where == "callback":  # a user callback listed before BestCheckpoint raises at batch 3 of epoch 3
        model, trigger = model_for(), Fail(2, 2)
    else:  # the step of batch 4 raises, after batch 3 of epoch 3
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), Fragile(), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
        trigger = At(2, 2, lambda: switch.update(on=True))
    checkpoint = BestCheckpoint(os.path.join(run, "best.weights.h5"), save_best_only=True, resume=True)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, validation_data=(x, y), epochs=EPOCHS, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[trigger, At(2, 0, snapshot), checkpoint])
    record = run_json(run)
    assert record["last"] == {"path": "keras_best_last.h5", "epoch": 2, "step": 2}
    assert record["best"] == seen["kept"] and _hash(os.path.join(run, "best.weights.h5")) == seen["file"]
    err = capfd.readouterr().err
    assert "keras-best: fit() stopped by RuntimeError (" in err and "batch 3 of epoch 3" in err
    assert getattr(model.train_function, "keras_best_guard", None) is None  # put back

    switch["on"] = False
    again = BestCheckpoint(os.path.join(run, "best.weights.h5"), save_best_only=True, resume=True)
    model.fit(x, y, validation_data=(x, y), epochs=4, batch_size=16, verbose=0, callbacks=[again])
    assert (again.tracker.initial_epoch, again.tracker.initial_step) == (2, 3)
    assert again.best <= seen["best"] and run_json(run)["last"]["epoch"] == 3


def test_an_exception_right_after_a_state_writes_nothing_more(tmp_path, capfd):
    class FailAtEpochBegin(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("boom")

    x, y = data()
    run = str(tmp_path / "run")
    checkpoint = BestCheckpoint(os.path.join(run, "best.weights.h5"), save_best_only=True, resume=True)
    with pytest.raises(RuntimeError):
        model_for().fit(x, y, validation_data=(x, y), epochs=5, verbose=0,
                        callbacks=[checkpoint, FailAtEpochBegin()])
    assert run_json(run)["last"]["epoch"] == 1 and run_json(run)["last"]["step"] is None
    assert "the training state written last (the end of epoch 2) is current" in capfd.readouterr().err


def test_save_on_exception_false_writes_nothing(tmp_path, capfd):
    x, y = data()
    run = str(tmp_path / "run")
    checkpoint = BestCheckpoint(os.path.join(run, "best.weights.h5"), resume=True, save_on_exception=False)
    with pytest.raises(RuntimeError):
        model_for().fit(x, y, validation_data=(x, y), epochs=5, batch_size=16, verbose=0,
                        callbacks=[Fail(1, 1), checkpoint])
    checkpoint.tracker.flush()
    assert run_json(run)["last"]["step"] is None and "keras-best" not in capfd.readouterr().err


@pytest.mark.backend_neutral
def test_the_option_is_on_by_default_only_with_a_state():
    assert Options(save_last=True).save_on_exception is True and Options(resume=True).save_on_exception is True
    assert Options().save_on_exception is False and Options(resume=True, save_on_exception=0).save_on_exception is False
    with pytest.raises(ValueError, match="`save_on_exception` writes the training state"):
        Options(save_on_exception=True)
    with pytest.raises(ValueError, match="must be True or False"):
        Options(resume=True, save_on_exception="yes")


def _loop(path, fail_at=None, stop_after=None):
    model = make_model()
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    tracker = BestWeightsTracker(model, path, resume=True, optimizer=optimizer, verbose=0)
    for epoch in tracker.epochs(4):
        for step, _ in tracker.batches(epoch, range(5)):
            if (epoch, step) == fail_at:
                raise RuntimeError("boom")
        tracker.update(epoch, {"val_loss": 1.0 / (epoch + 1)})
        if epoch == stop_after:
            break
    return tracker


def test_an_exception_in_a_custom_loop_saves_the_state_of_the_last_batch(tmp_path, capfd):
    path = str(tmp_path / "best.weights.h5")
    with pytest.raises(RuntimeError, match="boom"):
        _loop(path, fail_at=(2, 3))
    assert run_json(tmp_path)["last"] == {"path": "keras_best_last.h5", "epoch": 2, "step": 2}
    assert run_json(tmp_path)["best"]["epoch"] == 1
    assert "left epoch 3" in capfd.readouterr().err
    again = _loop(path, stop_after=2)  # a break right after an update: nothing more to write
    assert (again.initial_epoch, again.initial_step) == (2, 3)
    again.flush()
    assert run_json(tmp_path)["last"] == {"path": "keras_best_last.h5", "epoch": 2, "step": None}
    assert "keras-best" not in capfd.readouterr().err
    again.close()


def test_a_stale_guard_is_removed_by_the_next_fit():
    model = model_for()
    model.make_train_function()
    original = model.train_function
    old = FitGuard(model, None, lambda *a: None, lambda *a: None)
    assert model.train_function is not original and old.train_function is original
    new = FitGuard(model, None, lambda *a: None, lambda *a: None)
    assert new.train_function is original
    new.remove()
    assert model.train_function is original


def test_torch_cpu_random_state_comes_back_and_no_cuda_state_without_cuda():
    saved = rng.capture(None)
    torch = pytest.importorskip("torch") if keras.backend.backend() == "torch" else None
    if torch is None:
        assert "torch_cpu" not in saved
        return
    a = torch.rand(3)
    rng.restore(None, saved)
    assert torch.equal(torch.rand(3), a)
    assert ("torch_cuda" in saved) == torch.cuda.is_available()
