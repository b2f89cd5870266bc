"""KerasTuner: real searches on scikit-learn's digits keep only the top-k trials' files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.conftest import BACKEND
from tests.processes import ROOT, WORKERS, free_ports, run_all

keras_tuner = pytest.importorskip("keras_tuner", reason="needs keras-tuner (the keras-tuner extra)")
if BACKEND == "tensorflow":  # KerasTuner's run_trial imports TensorBoard's hparams plugin on TensorFlow
    pytest.importorskip("tensorboard", reason="KerasTuner needs tensorboard on TensorFlow")
load_digits = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn").load_digits

from keras_best.integrations.keras_tuner import CHECKPOINT_NAME, KEEP_FILES, SearchBest  # noqa: E402
from keras_best.storage import manifest  # noqa: E402

pytestmark = pytest.mark.slow
X, Y = load_digits(return_X_y=True)
X = (X / 16).astype("float32")
DATA = dict(x=X[:1200], y=Y[:1200], validation_data=(X[1200:], Y[1200:]), verbose=0)


def build(hp):
    model = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(hp.Int("units", 4, 32, step=4), activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(hp.Float("lr", 1e-3, 3e-2, sampling="log")),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def kept(project_dir):
    """Trial ids whose run files are on disk."""
    return {n[len("trial_"):] for n in os.listdir(project_dir) if n.startswith("trial_")
            and os.path.exists(os.path.join(project_dir, n, manifest.MANIFEST_NAME))}


def top_k(oracle, k):
    return {t.trial_id for t in oracle.get_best_trials(k) if t.status == "COMPLETED"}


class Recording(keras_tuner.RandomSearch):
    """Checks the disk at each trial's start (after SearchBest's cleanup) and records the callbacks."""

    def on_trial_begin(self, trial):
        self.checks = getattr(self, "checks", [])
        self.checks.append((kept(self.project_dir), top_k(self.oracle, self.keep)))
        super().on_trial_begin(trial)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        self.seen = [type(c).__name__ for c in kwargs["callbacks"]]
        return super()._build_and_fit_model(trial, *args, **kwargs)


def test_random_search_keeps_exactly_the_top_k_trials_after_every_trial(tmp_path):
    tuner = Recording(build, objective="val_accuracy", max_trials=5, seed=1, directory=tmp_path,
                      project_name="p")
    tuner.keep = 2
    best = SearchBest(keep_top_k=2)
    assert best.wrap(tuner) is tuner
    tuner.search(epochs=2, **DATA)

    assert len(tuner.checks) == 5 and all(on_disk == expected for on_disk, expected in tuner.checks)
    assert kept(tuner.project_dir) == top_k(tuner.oracle, 2) and len(kept(tuner.project_dir)) == 2
    assert "SaveBestEpoch" not in tuner.seen and "_TrialCheckpoint" in tuner.seen
    for trial_id in {t.trial_id for t in tuner.oracle.trials.values()} - kept(tuner.project_dir):
        assert sorted(os.listdir(best.trial_directory(trial_id))) == sorted(KEEP_FILES)
    assert json.load(open(tmp_path / "p" / "keras_best_study.json"))["framework"] == "keras_tuner"

    # get_best_models loads the kept trials: each model scores what the oracle recorded.
    trials = tuner.oracle.get_best_trials(2)
    for model, trial in zip(tuner.get_best_models(2), trials):
        assert model.evaluate(X[1200:], Y[1200:], verbose=0)[1] == pytest.approx(trial.score, abs=1e-6)
    with pytest.raises(ValueError, match=r"2 best trials only \(keep_top_k=2\). Received: num_models=3"):
        tuner.get_best_models(3)
    removed = next(t for t in tuner.oracle.trials.values() if t.trial_id not in kept(tuner.project_dir))
    with pytest.raises(FileNotFoundError, match=f"Trial {removed.trial_id} keeps no model"):
        tuner.load_model(removed)

    # load_best: the weights behind the best score, in a model of the best hyper-parameters.
    model = tuner.hypermodel.build(tuner.get_best_hyperparameters()[0])
    record = best.load_best(model)
    assert record.trial_id == trials[0].trial_id and record.value == pytest.approx(trials[0].score)
    assert model.evaluate(X[1200:], Y[1200:], verbose=0)[1] == pytest.approx(trials[0].score, abs=1e-6)
    assert best.best_path() == os.path.join(best.trial_directory(trials[0]), CHECKPOINT_NAME)
    stock = tuner.hypermodel.build(tuner.get_best_hyperparameters()[0])
    stock.load_weights(best.best_path())  # a plain Keras weights file

    # keras-best inspect on the project: the kept trials, best first.
    out = subprocess.run([sys.executable, "-m", "keras_best", "inspect", str(tmp_path / "p")], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, check=True).stdout
    assert "KerasTuner search 'p'" in out and "2 kept trials" in out
    first, second = (out.index(f"trial_{t.trial_id}") for t in trials)
    assert first < second


@pytest.mark.once  # the saving and loading it reaches: test_random_search_keeps_exactly_the_top_k_trials_after_every_trial
def test_hyperband_continues_from_kept_weights_and_ends_with_the_top_k(tmp_path):
    tuner = keras_tuner.Hyperband(build, objective="val_loss", max_epochs=4, factor=2, seed=2,
                                  directory=tmp_path, project_name="hb")
    best = SearchBest(keep_top_k=2, patience=2).wrap(tuner)._keras_best
    tuner.search(**DATA)
    trials = list(tuner.oracle.trials.values())
    continued = [t for t in trials if "tuner/trial_id" in t.hyperparameters.values]
    assert continued and all(t.status == "COMPLETED" for t in trials), [t.message for t in trials]
    assert kept(tuner.project_dir) == top_k(tuner.oracle, 2)
    for model, trial in zip(tuner.get_best_models(2), tuner.oracle.get_best_trials(2)):
        assert model.evaluate(X[1200:], Y[1200:], verbose=0)[0] == pytest.approx(trial.score, rel=1e-5)
    assert best.load_best(tuner.get_best_models(1)[0]).value == pytest.approx(tuner.oracle.get_best_trials(1)[0].score)


def test_patience_stops_a_trial_early(tmp_path):
    tuner = keras_tuner.RandomSearch(build, objective="val_loss", max_trials=1, directory=tmp_path,
                                     project_name="es")
    SearchBest(patience=1, min_delta=10.0).wrap(tuner)  # no epoch after the first can improve enough
    tuner.search(epochs=8, **DATA)
    (trial,) = tuner.oracle.trials.values()
    lines = open(os.path.join(tuner.get_trial_dir(trial.trial_id), manifest.HISTORY_NAME)).read().splitlines()
    assert 1 < len(lines) < 8


@pytest.mark.parametrize(
    "objective, options, match",
    [
        ("val_accuracy", {"monitor": "val_loss"}, "maximizes its objective.*lowest 'val_loss'"),
        ("val_loss", {"mode": "max"}, r"pass mode='min'"),
        ("val_loss", {"save_best_only": False}, "chooses `save_best_only` itself"),
        ("val_loss", {"filepath": "x.weights.h5"}, "chooses `filepath` itself"),
    ],
)
def test_options_that_contradict_the_tuner_are_refused_before_any_trial(tmp_path, objective, options, match):
    tuner = keras_tuner.RandomSearch(build, objective=objective, max_trials=1, directory=tmp_path,
                                     project_name="bad")
    with pytest.raises(ValueError, match=match):
        SearchBest(**options).wrap(tuner)
    assert not any(n.startswith("trial_") for n in os.listdir(tuner.project_dir))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep_top_k` must be an int >= 1"):
        SearchBest(keep_top_k=0)
    with pytest.raises(TypeError, match="Expected a `keras_tuner.Tuner`"):
        SearchBest().wrap(object())
    with pytest.raises(ValueError, match="wrap\\(tuner\\)` first"):
        SearchBest().best_path()
    tuner = keras_tuner.RandomSearch(build, objective="val_loss", max_trials=1, directory=tmp_path,
                                     project_name="p", executions_per_trial=2)
    with pytest.raises(ValueError, match="executions_per_trial=1"):
        SearchBest().wrap(tuner)
    tuner = keras_tuner.RandomSearch(build, objective="val_loss", max_trials=1, directory=tmp_path,
                                     project_name="q")
    best = SearchBest()
    best.wrap(tuner)
    with pytest.raises(ValueError, match="no completed trial yet"):
        best.best_path()


@pytest.mark.once  # the saving and loading it reaches: test_random_search_keeps_exactly_the_top_k_trials_after_every_trial
def test_distributed_search_one_chief_two_workers(tmp_path):
    (port,) = free_ports(1)
    base = {**os.environ, "PYTHONPATH": ROOT, "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port)}
    roles = ["chief", "tuner0", "tuner1"]
    command = [sys.executable, os.path.join(WORKERS, "keras_tuner_worker.py"), str(tmp_path), "6", "2"]
    logs = [str(tmp_path / f"{r}.log") for r in roles]
    run_all([command] * 3, logs, [{**base, "KERASTUNER_TUNER_ID": r} for r in roles], timeout=400)
    worker_logs = [open(log).read() for log in logs[1:]]
    assert all("DONE" in text for text in worker_logs) and not any("VIOLATION" in t for t in worker_logs)
    project = tmp_path / "search"
    trials = {n[len("trial_"):]: json.load(open(project / n / "trial.json"))
              for n in os.listdir(project) if n.startswith("trial_")}
    assert len(trials) == 6 and all(t["status"] == "COMPLETED" for t in trials.values())
    assert all("RAN " in text for text in worker_logs)  # both workers ran trials
    ranked = sorted(trials, key=lambda i: (-trials[i]["score"], int(i)))
    assert kept(project) == set(ranked[:2])
    assert np.isfinite([trials[i]["score"] for i in ranked[:2]]).all()
