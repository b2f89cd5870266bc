"""Everything a run holds comes back on resume (`keras_best.training_state.objects`):
every optimizer the model tracks (the Keras guide's GAN), the `state=` objects
(Keras optimizers and models, seed generators, `get_state()` and `state_dict()`
objects, torch optimizers), with clear refusals; a run without a training
state is not resumed silently; a resume that trains nothing leaves the
process's random state alone; no "Skipping variable loading" warning."""

from __future__ import annotations

import random
import warnings

import h5py
import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_best import BestCheckpoint, BestWeightsTracker
from keras_best.keras_adapter.tracked import built_for, tracked_optimizers
from tests.conftest import BACKEND, make_model

LATENT = 4


class GAN(keras.Model):
    """The Keras guide's GAN ("Customizing what happens in fit()"), small: two
    optimizers as attributes, `compile()` without an optimizer."""

    def __init__(self, discriminator, generator):
        super().__init__()
        self.discriminator, self.generator = discriminator, generator
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)
        self.built = True  # no call(): its parts are built

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer, self.g_optimizer, self.loss_fn = d_optimizer, g_optimizer, loss_fn

    def train_step(self, real):
        n = ops.shape(real)[0]
        z = keras.random.normal((n, LATENT), seed=self.seed_generator)
        combined = ops.concatenate([self.generator(z), real], axis=0)
        labels = ops.concatenate([ops.ones((n, 1)), ops.zeros((n, 1))], axis=0)
        labels += 0.05 * keras.random.uniform(ops.shape(labels), seed=self.seed_generator)
        d_loss = self._step(self.d_optimizer, self.discriminator, lambda: self.loss_fn(
            labels, self.discriminator(combined)))
        z = keras.random.normal((n, LATENT), seed=self.seed_generator)
        g_loss = self._step(self.g_optimizer, self.generator, lambda: self.loss_fn(
            ops.zeros((n, 1)), self.discriminator(self.generator(z))))
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

    def _step(self, optimizer, part, loss):
        """One optimizer step on `part`'s weights: the guide's TensorFlow and torch versions."""
        weights = part.trainable_weights
        if BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                value = loss()
            optimizer.apply_gradients(zip(tape.gradient(value, weights), weights))
            return value
        import torch

        self.zero_grad()
        value = loss()
        value.backward()
        with torch.no_grad():
            optimizer.apply([v.value.grad for v in weights], weights)
        return value


def _gan() -> GAN:
    keras.utils.set_random_seed(0)
    d = keras.Sequential([keras.Input((8,)), layers.Dense(8, activation="relu"), layers.Dense(1)],
                         name="discriminator")
    g = keras.Sequential([keras.Input((LATENT,)), layers.Dense(8)], name="generator")
    gan = GAN(d, g)
    gan.compile(keras.optimizers.Adam(3e-3), keras.optimizers.Adam(2e-3),
                keras.losses.BinaryCrossentropy(from_logits=True))
    return gan


def _real() -> np.ndarray:
    return np.random.RandomState(0).normal(size=(32, 8)).astype("float32")


def _fit(directory, epochs: int, **options) -> GAN:
    gan = _gan()
    gan.fit(_real(), epochs=epochs, batch_size=8, shuffle=False, verbose=0, callbacks=[BestCheckpoint(
        str(directory / "best.weights.h5"), monitor="g_loss", mode="min", save_best_only=True, resume=True,
        **options)])
    return gan


def _numpy(variables) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]


def _assert_same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


gan_backends = pytest.mark.skipif(BACKEND == "jax", reason="the guide's GAN train_step: TensorFlow and torch")


@gan_backends
def test_the_gan_resumes_both_optimizers_as_an_uninterrupted_run(tmp_path):
    whole = _fit(tmp_path / "whole", 4)
    _fit(tmp_path / "cut", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _fit(tmp_path / "cut", 4, restore_best_weights=False)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    for name in ("d_optimizer", "g_optimizer"):
        a, b = getattr(whole, name), getattr(resumed, name)
        assert int(keras.ops.convert_to_numpy(b.iterations)) == 16  # 4 batches x 4 epochs
        _assert_same(_numpy(b.variables), _numpy(a.variables))
    _assert_same(_numpy(resumed.weights), _numpy(whole.weights))
    with h5py.File(tmp_path / "cut" / "keras_best_last.h5", "r") as f:  # one group per optimizer, by its path
        assert sorted(f) == ["fit", "model", "optimizer", "optimizers", "random"]  # "fit": its batch position
        assert sorted(f["optimizers"]) == ["d_optimizer", "g_optimizer"]
        assert f["optimizers/d_optimizer"].attrs["count"] == len(whole.d_optimizer.variables)
    best = _gan()  # the best file is a stock .weights.h5 file (Keras skips unbuilt optimizers, with a warning)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        best.load_weights(str(tmp_path / "cut" / "best.weights.h5"))


@gan_backends
def test_resuming_the_gan_with_restore_best_weights_warns_nothing(tmp_path):
    _fit(tmp_path, 2, restore_best_weights=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, 3, restore_best_weights=True)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]


def test_a_resumed_fit_restores_the_optimizer_without_the_skipping_warning(tmp_path):
    def fit(epochs):
        model = make_model()
        model.compile(keras.optimizers.Adam(), "mse")
        x = np.random.RandomState(0).rand(16, 4).astype("float32")
        model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=epochs, verbose=0, callbacks=[
            BestCheckpoint(str(tmp_path / "best.weights.h5"), save_best_only=True, resume=True,
                           restore_best_weights=True)])
        return model

    fit(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fit(3)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3


def test_the_walk_finds_what_save_weights_saves():
    gan = _gan()
    found = tracked_optimizers(gan)
    assert [path for path, _ in found] == ["d_optimizer", "g_optimizer", "optimizer"]
    assert found[0][1] is gan.d_optimizer and built_for(gan.d_optimizer) is None
    gan.d_optimizer.build(gan.discriminator.trainable_weights)
    assert [id(v) for v in built_for(gan.d_optimizer)] == [id(v) for v in gan.discriminator.trainable_weights]


# ------------------------------------------------------------ custom loops
def _parts():
    keras.utils.set_random_seed(1)
    d = keras.Sequential([keras.Input((3,)), layers.Dense(2)], name="disc")
    g = keras.Sequential([keras.Input((2,)), layers.Dense(3)], name="gen")
    return d, g, keras.optimizers.Adam(0.01), keras.optimizers.Adam(0.02)


def _loop(directory, epochs: int):
    """A custom loop over two models and two optimizers (the gradients are made
    up: what is checked is that the optimizers' state comes back)."""
    d, g, d_opt, g_opt = _parts()
    tracker = BestWeightsTracker(g, str(directory / "gen.weights.h5"), resume=True, verbose=0,
                                 optimizer=g_opt, state={"disc": d, "d_opt": d_opt})
    for epoch in tracker.epochs(epochs):
        for step in range(3):
            scale = float(epoch * 3 + step + 1)
            d_opt.apply([ops.ones(v.shape) * scale for v in d.trainable_weights], d.trainable_weights)
            g_opt.apply([ops.ones(v.shape) / scale for v in g.trainable_weights], g.trainable_weights)
        tracker.update(epoch, {"val_loss": 1.0 / (epoch + 1)})
    tracker.finish()
    return d, g, d_opt, g_opt


def test_a_custom_loop_resumes_every_model_and_optimizer_in_state(tmp_path):
    whole = _loop(tmp_path / "whole", 4)
    _loop(tmp_path / "cut", 2)
    resumed = _loop(tmp_path / "cut", 4)  # new objects, optimizers not built: built from the state
    for a, b in zip(whole, resumed):
        _assert_same(_numpy(b.variables), _numpy(a.variables))
    assert int(keras.ops.convert_to_numpy(resumed[2].iterations)) == 12
    with h5py.File(tmp_path / "cut" / "keras_best_last.h5", "r") as f:
        assert sorted(f["state"]) == ["d_opt", "disc"]


class _Counter:
    def __init__(self):
        self.count, self.seen = 0, np.zeros(2)

    def get_state(self):
        return {"count": self.count, "seen": self.seen, "pair": (1, "a"), 3: None}

    def set_state(self, state):
        assert state["pair"] == (1, "a") and state[3] is None
        self.count, self.seen = state["count"], state["seen"]


def test_get_state_objects_and_seed_generators_come_back(tmp_path):
    def run(epochs):
        model, counter, rs = make_model(), _Counter(), np.random.RandomState(3)
        seed = keras.random.SeedGenerator(7)
        tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), resume=True, verbose=0,
                                     state={"counter": counter, "rs": rs, "seed": seed})
        for epoch in tracker.epochs(epochs):
            counter.count += 1
            counter.seen += rs.normal(size=2)
            keras.random.normal((2,), seed=seed)
            tracker.update(epoch, {"val_loss": 1.0})
        tracker.finish()
        return counter.count, counter.seen, rs.normal(), _numpy([seed.state])[0]

    whole = run(3)
    tmp_path = tmp_path / "cut"
    run(1)
    resumed = run(3)
    assert resumed[0] == whole[0] == 3
    np.testing.assert_array_equal(resumed[1], whole[1])
    assert resumed[2] == whole[2]
    np.testing.assert_array_equal(resumed[3], whole[3])


@pytest.mark.skipif(BACKEND != "torch", reason="torch optimizers: the torch backend")
def test_a_torch_optimizer_and_scheduler_resume_through_state_dict(tmp_path):
    import torch

    def run(directory, epochs):
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        tracker = BestWeightsTracker(model, str(directory / "b.weights.h5"), resume=True, verbose=0,
                                     state={"opt": opt, "sched": sched})
        x = torch.ones((4, 4))
        for epoch in tracker.epochs(epochs):
            for _ in range(2):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
            sched.step()
            tracker.update(epoch, {"val_loss": 1.0})
        tracker.finish()
        return model, opt, sched

    whole = run(tmp_path / "whole", 3)
    run(tmp_path / "cut", 1)
    resumed = run(tmp_path / "cut", 3)
    _assert_same(_numpy(resumed[0].weights), _numpy(whole[0].weights))
    assert resumed[2].state_dict() == whole[2].state_dict()
    a, b = whole[1].state_dict()["state"], resumed[1].state_dict()["state"]
    assert sorted(a) == sorted(b) and float(b[0]["step"]) == 6
    for key in a:
        for name in a[key]:
            np.testing.assert_array_equal(a[key][name].numpy(), b[key][name].numpy())


# ------------------------------------------------------------- refusals
@pytest.mark.parametrize("state, error, match", [
    ({"x": object()}, TypeError, r"`state\['x'\]` cannot be saved in the training state: a object is neither"),
    ({"a/b": _Counter()}, ValueError, r"`state` names must be non-empty strings .* Received: 'a/b'"),
    ({"x": None}, ValueError, r"`state\['x'\]` is None"),
    ([1], ValueError, r"`state` must be a dict of names"),
])
def test_what_cannot_be_saved_is_refused_at_construction(tmp_path, state, error, match):
    with pytest.raises(error, match=match):
        BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), resume=True, state=state)
    assert not (tmp_path / "keras_best.json").exists()


def test_a_get_state_value_that_cannot_be_stored_is_refused(tmp_path):
    class Odd:
        def get_state(self):
            return {"seen": {1, 2}}

        def set_state(self, state):
            pass

    with pytest.raises(TypeError, match=r"`state\['odd'\]`.get_state\(\) holds a set"):
        BestCheckpoint(str(tmp_path / "b.weights.h5"), resume=True, state={"odd": Odd()})


def test_state_needs_a_training_state(tmp_path):
    with pytest.raises(ValueError, match=r"`state` is about training states, and this run keeps none: pass resume=True"):
        BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), state={"c": _Counter()})


def test_resume_on_a_run_without_a_training_state_is_a_clear_error(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    fresh = make_model(seed=5)
    before = _numpy(fresh.weights)
    with pytest.raises(ValueError, match=r"kept no training state .* pass resume=False .* another directory"
                                         r".* keras_best.load_best\(model, "):
        BestWeightsTracker(fresh, str(tmp_path / "b.weights.h5"), resume=True, verbose=0)
    _assert_same(_numpy(fresh.weights), before)


# ---------------------------------------------------------- random state
def _draws():
    return np.random.normal(size=3).tolist(), random.random()


@pytest.mark.parametrize("stop", [False, True])
def test_a_resume_that_trains_nothing_leaves_the_global_random_state(tmp_path, stop):
    def run(model, epochs):
        tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), resume=True, verbose=0,
                                     optimizer=keras.optimizers.Adam(), patience=0 if stop else None)
        trained = []
        for epoch in tracker.epochs(epochs):
            trained.append(epoch)
            np.random.normal()
            tracker.update(epoch, {"val_loss": 1.0})
        tracker.finish()
        return trained

    assert run(make_model(), 2) == [0, 1]
    model = make_model()  # seeds the global generators: before the draws
    np.random.seed(11)
    random.seed(11)
    expected = _draws()
    np.random.seed(11)
    random.seed(11)
    assert run(model, 2) == []  # finished (or stopped early): nothing trained
    assert _draws() == expected


def test_a_finished_fit_resumed_leaves_the_global_random_state(tmp_path):
    def fit(model, epochs):
        x = np.ones((8, 4), "float32")
        model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=epochs, verbose=0, shuffle=False,
                  callbacks=[BestCheckpoint(str(tmp_path / "best.weights.h5"), resume=True)])

    def compiled():
        model = make_model()  # seeds the global generators: before the draws
        model.compile(keras.optimizers.Adam(), "mse")
        return model

    fit(compiled(), 2)
    model = compiled()
    np.random.seed(3)
    random.seed(3)
    expected = _draws()
    np.random.seed(3)
    random.seed(3)
    fit(model, 2)
    assert _draws() == expected
