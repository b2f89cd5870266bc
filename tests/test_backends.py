"""keras-best on the backend this suite runs on (TensorFlow, JAX or torch):
a custom loop written that backend's own way, resume bit-identical, fit() with
save_freq, metrics with gradients, and no TensorFlow imported where it is not
the backend."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from tests.conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x[:, :1] + 0.5 * rng.normal(size=(96, 1)) > 0).astype("float32")
    return x[:64], y[:64], x[64:], y[64:]


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(1, activation="sigmoid")])


class Loop:
    """The user's own train step, the way this backend's users write it."""

    def __init__(self, seed=0):
        self.model = _model(seed)
        self.optimizer = keras.optimizers.Adam(0.05)
        self.optimizer.build(self.model.trainable_variables)
        self.loss_fn = keras.losses.BinaryCrossentropy()
        self.val_loss = keras.metrics.Mean(name="val_loss")

    def train_step(self, x, y):
        if BACKEND == "jax":
            import jax

            model = self.model
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]

            def loss_of(trainable):
                pred, _ = model.stateless_call(trainable, non_trainable, x)
                return self.loss_fn(y, pred)

            _, grads = jax.value_and_grad(loss_of)(trainable)
            self.optimizer.apply(grads, model.trainable_variables)
        elif BACKEND == "torch":
            self.model.zero_grad()
            loss = self.loss_fn(y, self.model(x, training=True))
            loss.backward()
            grads = [v.value.grad for v in self.model.trainable_variables]
            self.optimizer.apply(grads, self.model.trainable_variables)
        else:
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = self.loss_fn(y, self.model(x, training=True))
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply(grads, self.model.trainable_variables)

    def epoch(self, data):
        x, y, vx, vy = data
        for i in range(0, len(x), 16):
            self.train_step(x[i:i + 16], y[i:i + 16])
        self.val_loss.reset_state()
        self.val_loss.update_state(self.loss_fn(vy, self.model(vx)))
        return {"val_loss": self.val_loss}


def _train(directory, epochs, stop_after=None, seed=0):
    loop = Loop(seed)
    tracker = BestWeightsTracker(loop.model, os.path.join(directory, "e{epoch:02d}.weights.h5"), keep_top_k=2,
                                 optimizer=loop.optimizer, resume=True, restore_best_weights=True, verbose=0)
    data = _data()
    for epoch in range(tracker.initial_epoch, epochs):
        tracker.update(epoch, loop.epoch(data))
        if stop_after is not None and epoch == stop_after:
            tracker.close()  # the process "dies" here
            return loop, tracker
    tracker.finish()
    return loop, tracker


def test_custom_loop_the_backends_way_keeps_the_best(tmp_path):
    loop, tracker = _train(str(tmp_path), 6)
    best = min(tracker.history, key=lambda h: h["value"])
    assert (tracker.best_epoch, tracker.best) == (best["epoch"], best["value"])
    restored = loop.model.get_weights()  # restore_best_weights
    fresh = _model(seed=7)
    rec = load_best(fresh, str(tmp_path))
    assert rec.epoch == tracker.best_epoch
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), restored))


def test_resume_is_bit_identical(tmp_path):
    full, _ = _train(str(tmp_path / "full"), 6)
    _train(str(tmp_path / "split"), 6, stop_after=2)
    resumed, tracker = _train(str(tmp_path / "split"), 6, seed=5)  # other initial weights: all restored
    assert [h["epoch"] for h in tracker.history] == list(range(6))
    assert all(np.array_equal(a, b) for a, b in zip(full.model.get_weights(), resumed.model.get_weights()))
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 24


def test_fit_with_save_freq_reads_live_weights_mid_epoch(tmp_path):
    # On JAX, Keras detaches the variables' values during an epoch; the
    # callback reads them through Callback.model, which puts them back.
    x, y, _, _ = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    cb = BestCheckpoint(str(tmp_path / "e{epoch}-b{batch}.weights.h5"), monitor="loss", save_best_only=True,
                        save_freq=2, keep_top_k=2)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    assert {h["step"] for h in cb.tracker.history} == {1, 3}
    rec = load_best(_model(seed=3), str(tmp_path))
    assert (rec.epoch, rec.step) == (cb.tracker.best_epoch, min(cb.tracker.history, key=lambda h: h["value"])["step"])


def test_a_metric_tensor_with_a_gradient_is_read(tmp_path):
    model = _model()
    x, y, _, _ = _data()
    loss = keras.losses.BinaryCrossentropy()(y, model(x, training=True))  # torch: requires_grad
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # NumPy 2: no __array__ copy warnings
        decision = tracker.update(0, {"val_loss": loss})
        tracker.finish()
    assert decision.improved and decision.value == pytest.approx(float(keras.ops.convert_to_numpy(loss)))


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the check is for the other backends")
def test_tensorflow_and_orbax_are_never_imported_on_other_backends(tmp_path):
    """Nor is orbax-checkpoint (installed in the JAX venv) by a run that does not save through Orbax."""
    script = f"""
import sys
from keras_best import load_best
from tests.test_backends import _model, _train
_train({str(tmp_path)!r}, 3)  # a custom loop with resume=True, top-k, restore_best_weights
load_best(_model(seed=1), {str(tmp_path)!r})
print("tensorflow" in sys.modules, any(m.split(".")[0] == "orbax" for m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=BACKEND), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.skipif(BACKEND != "torch", reason="torch only")
def test_savedmodel_is_refused_at_construction_on_torch(tmp_path):
    with pytest.raises(ValueError, match=r'save_format="savedmodel" cannot work on the torch backend'):
        BestWeightsTracker(_model(), str(tmp_path / "export"), save_format="savedmodel")


@pytest.mark.skipif(BACKEND != "jax", reason="a stateless JAX loop trains arrays of its own")
@pytest.mark.parametrize("write_back", [False, True])
def test_a_jax_loop_that_never_writes_the_trained_values_back_warns_once(tmp_path, write_back):
    # issue 25: without the write-back every file saved held the untrained weights, silently.
    import jax

    rng = np.random.default_rng(0)
    x, y = rng.random((128, 4), dtype="float32"), rng.random((128, 1), dtype="float32")
    model = _model()
    optimizer, loss_fn = keras.optimizers.SGD(0.1), keras.losses.MeanSquaredError()
    optimizer.build(model.trainable_variables)

    def loss_of(trainable, non_trainable, xb, yb):
        pred, non_trainable = model.stateless_call(trainable, non_trainable, xb, training=True)
        return loss_fn(yb, pred), non_trainable

    @jax.jit
    def train_step(state, xb, yb):
        trainable, non_trainable, optimizer_vars = state
        (_, non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable, non_trainable, xb, yb)
        trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return trainable, non_trainable, optimizer_vars

    variables = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
    state = [[v.value for v in vs] for vs in variables]
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), optimizer=optimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(4):
            state = train_step(state, x[:96], y[:96])
            if write_back:
                for vs, values in zip(variables, state):
                    for v, value in zip(vs, values):
                        v.assign(value)
            pred, _ = model.stateless_call(state[0], state[1], x[96:])  # the loop validates its own arrays
            tracker.update(epoch, {"val_loss": float(loss_fn(y[96:], pred))})
        tracker.finish()
    stale = [w for w in caught if "weights did not change since the last update" in str(w.message)]
    assert len(stale) == (0 if write_back else 1)
    if stale:
        assert "assign the trained values back before `update()`" in str(stale[0].message)


def test_the_write_back_check_reads_a_sample_of_a_big_variable():
    # A bias-free model: its smallest variables are whole kernels, which the check copied (gathered from
    # every device under ModelParallel) at every update: 2x the model's memory, half of an Orbax save's time.
    from keras_best.runner.stale import PROBE_VALUES, PROBES, fingerprint

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(256, use_bias=False),
                              keras.layers.Dense(4, use_bias=False)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = fingerprint(model)
    assert [a.shape for a in before] == [(256, 4), (32, 32)]  # the small kernel whole, a 32 x 32 grid of the big
    assert sum(a.size for a in before) <= PROBES * PROBE_VALUES
    x = np.random.default_rng(0).normal(size=(8, 256)).astype("float32")
    model.fit(x, np.ones((8, 4), "float32"), epochs=1, batch_size=8, verbose=0)
    after = fingerprint(model)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))  # training moves every probe
