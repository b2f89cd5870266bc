"""An Optuna worker for the shared-storage tests: several run side by side.

Each worker loads the study from the shared storage, runs `StudyBest.optimize`
with a `MedianPruner`, and after every trial checks the invariant the test
cares about: a trial among the study's top k both before and after the check
still has its files. It prints one `VIOLATION ...` line per breach and
`DONE <trials run>` at the end.

Usage: python optuna_worker.py STORAGE_URL STUDY_NAME DIRECTORY N_TRIALS KEEP_TOP_K [tracker|fit]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_best.integrations.optuna import StudyBest  # noqa: E402

EPOCHS = 6
# The learning rate of trial n is SCHEDULE[n]: good ones first (so the pruner has
# completed trials to compare with), then hopeless ones (pruned) among more good ones.
GOOD = [0.05, 0.2, 0.1, 0.15, 0.08, 0.12, 0.3, 0.25, 0.06]
BAD = [1e-6, 2e-6, 3e-6, 4e-6]
SCHEDULE = GOOD[:3] + [lr for pair in zip(BAD, GOOD[3:]) for lr in pair] + GOOD[3 + len(BAD):]


class ScheduleSampler(optuna.samplers.BaseSampler):
    """Trial n gets `SCHEDULE[n]`, whichever process runs it.

    (Not `study.enqueue_trial`: with SQLite, two processes can both pop the same
    waiting trial, since SQLite ignores SELECT ... FOR UPDATE.)
    """

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return SCHEDULE[trial.number % len(SCHEDULE)]


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [1.5]], dtype="float32") + 0.1).astype("float32")
    return x[:64], y[:64], x[64:], y[64:]


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])


def val_loss(model: keras.Model, vx: np.ndarray, vy: np.ndarray) -> float:
    """The validation loss, computed the same way in training and after `load_best`."""
    return float(np.mean(np.square(model(vx, training=False).numpy() - vy)))


def make_objective(best: StudyBest, front: str = "tracker", epochs: int = EPOCHS):
    x, y, vx, vy = data()

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-6, 0.5, log=True)
        model = build()
        optimizer = keras.optimizers.SGD(lr)
        if front == "fit":
            model.compile(optimizer, "mse")
            callback = best.callback(trial, monitor="val_loss")
            model.fit(x, y, validation_data=(vx, vy), batch_size=64, epochs=epochs, verbose=0,
                      callbacks=[callback])
            return callback.best
        tracker = best.tracker(trial, model, monitor="val_loss", verbose=0)
        for epoch in range(epochs):
            with tf.GradientTape() as tape:
                loss = keras.ops.mean(keras.ops.square(model(x, training=True) - y))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            tracker.update(epoch, {"val_loss": val_loss(model, vx, vy)})
        tracker.finish()
        return tracker.best

    return objective


def top_k(study: optuna.Study, k: int) -> set[int]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return {t.number for t in sorted(done, key=lambda t: (t.value, t.number))[:k]}


def make_checker(best: StudyBest, k: int):
    def check(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        before = top_k(study, k)
        present = {n for n in before if os.path.isdir(best.trial_directory(n))}
        after = top_k(study, k)
        for n in (before & after) - present:
            print(f"VIOLATION trial {n} is among the top {k} but its files are gone", flush=True)

    return check


def storage_for(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def main(url: str, study_name: str, directory: str, n_trials: str, keep_top_k: str, front: str = "tracker") -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage_for(url),
        sampler=ScheduleSampler(),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    best = StudyBest(directory, keep_top_k=int(keep_top_k))
    objective = make_objective(best, front)
    best.optimize(study, objective, n_trials=int(n_trials), callbacks=[make_checker(best, int(keep_top_k))])
    print(f"DONE {n_trials}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
