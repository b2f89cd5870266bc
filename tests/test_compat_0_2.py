"""A real keras-best 0.2 run directory (tests/data/run_0_2/, made by
tests/data/make_run_0_2.py with 0.2) still loads, resumes and is inspected."""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker, load_best
from keras_best.cli import main

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "run_0_2")
with open(os.path.join(DATA, "expected.json")) as _f:
    EXPECTED = json.load(_f)
OPTIONS = {"weights": ("{epoch:03d}-{val_loss:.4f}.weights.h5",
                       dict(keep_top_k=2, save_last=True, archive_every=3, patience=5)),
           "keras": ("best.keras", dict(keep_top_k=1))}


def make_model():
    """The fixture's model (same architecture; the seed gives other weights than its best)."""
    keras.utils.set_random_seed(EXPECTED["seed"] + 1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def best_weights(run):
    with np.load(os.path.join(DATA, f"best_{run}.npz")) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.fixture
def run_copy(tmp_path):
    def copy(run):
        directory = str(tmp_path / run)
        shutil.copytree(os.path.join(DATA, run), directory)
        return directory
    return copy


@pytest.mark.parametrize("run", ["weights", "keras"])
def test_load_best_loads_the_recorded_best(run_copy, run):
    directory, expected = run_copy(run), EXPECTED["runs"][run]
    model = make_model()
    rec = load_best(model, directory)
    assert (rec.epoch, rec.value) == (expected["best_epoch"], expected["best"])
    assert rec.path == os.path.join(directory, expected["best_path"])
    for got, want in zip(model.get_weights(), best_weights(run), strict=True):
        np.testing.assert_array_equal(got, want)


def test_resume_continues_the_run(run_copy):
    directory = run_copy("weights")
    template, options = OPTIONS["weights"]
    model = make_model()
    tracker = BestWeightsTracker(model, os.path.join(directory, template), monitor="val_loss", mode="min",
                                 optimizer=model.optimizer, resume=True, verbose=0, **options)
    assert tracker.initial_epoch == EXPECTED["runs"]["weights"]["epochs_done"]
    assert (tracker.best, tracker.best_epoch) == (0.5, 1)
    assert [h["value"] for h in tracker.history] == EXPECTED["values"]
    last = make_model()  # the weights resumed are the last epoch's (epoch 3, kept as 004-0.6000)
    last.load_weights(os.path.join(directory, "004-0.6000.weights.h5"))
    for got, want in zip(model.get_weights(), last.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)

    assert not tracker.update(4, {"val_loss": 0.55}).improved  # wait 2 -> 3
    decision = tracker.update(5, {"val_loss": 0.4})
    assert decision.improved and os.path.basename(decision.saved_path) == "006-0.4000.weights.h5"
    tracker.finish()
    assert sorted(n for n in os.listdir(directory) if n.endswith(".weights.h5")) == [
        "002-0.5000.weights.h5", "003-0.7000.weights.h5", "006-0.4000.weights.h5"]
    with open(os.path.join(directory, "keras_best.json")) as f:
        data = json.load(f)  # rewritten in the current schema
    assert data["version"] == 3 and data["best"] == {"epoch": 5, "value": 0.4, "path": "006-0.4000.weights.h5"}
    rec = load_best(make_model(), directory)
    assert (rec.epoch, rec.value, rec.path) == (5, 0.4, os.path.join(directory, "006-0.4000.weights.h5"))
    resumed = BestWeightsTracker(make_model(), os.path.join(directory, template), monitor="val_loss", mode="min",
                                 optimizer=keras.optimizers.Adam(0.01), resume=True, verbose=0, **options)
    assert (resumed.initial_epoch, resumed.best, resumed.best_epoch) == (6, 0.4, 5)
    assert [h["value"] for h in resumed.history] == [*EXPECTED["values"], 0.55, 0.4]
    resumed.finish()


@pytest.mark.parametrize("run", ["weights", "keras"])
def test_inspect_reads_the_run(run_copy, capsys, run):
    directory = run_copy(run)
    assert main(["inspect", directory, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    text = json.dumps(data)
    assert EXPECTED["runs"][run]["best_path"] in text
    assert main(["inspect", directory]) == 0
    out = capsys.readouterr().out
    assert EXPECTED["runs"][run]["best_path"] in out and "0.5" in out
