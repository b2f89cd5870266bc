"""average_best and `keras-best average`: the uniform (or greedy) average of a run's best kept files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_best import AverageRecord, BestWeightsTracker, average_best, load_best
from keras_best.cli.commands import main
from tests.conftest import make_model, perturb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUES = [0.5, 0.25, 0.375, 0.3125, 0.9]  # kept top 3: epochs 1, 3, 2 (best first)


def _run(directory, make=make_model, values=VALUES, name="e{epoch}.weights.h5", keep_top_k=3, **options):
    """A finished run over scripted values; returns the weights of each epoch."""
    model = make()
    tracker = BestWeightsTracker(model, str(directory / name), keep_top_k=keep_top_k, verbose=0, **options)
    weights = []
    for epoch, v in enumerate(values):
        perturb(model, 10 + epoch)
        weights.append(model.get_weights())
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    return weights


def _mean(weights, epochs):
    return [np.mean([weights[e][i].astype("float64") for e in epochs], axis=0) for i in range(len(weights[0]))]


def _close(model_weights, expected):
    assert len(model_weights) == len(expected)
    for a, b in zip(model_weights, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_average_of_the_three_best_is_their_numpy_mean(tmp_path):
    weights = _run(tmp_path)
    model = make_model(seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no BatchNormalization, k <= kept: nothing to warn about
        record = average_best(model, tmp_path, k=3)
    assert isinstance(record, AverageRecord)
    assert record.epochs == [1, 3, 2] and [m.value for m in record.members] == [0.25, 0.3125, 0.375]
    assert record.paths == [os.path.join(str(tmp_path), f"e{e + 1}.weights.h5") for e in (1, 3, 2)]
    assert (record.score, record.scores, record.statistics, record.notes) == (None, (), "none", ())
    _close(model.get_weights(), _mean(weights, [1, 3, 2]))
    assert not np.allclose(model.get_weights()[0], weights[1][0]), "an average, not the best file"


def test_k_one_is_load_best_exactly_and_k_two_the_two_best(tmp_path):
    weights = _run(tmp_path)
    one, best = make_model(seed=7), make_model(seed=8)
    average_best(one, tmp_path, k=1)
    load_best(best, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(one.get_weights(), best.get_weights()))
    two = make_model(seed=7)
    assert average_best(two, tmp_path, k=2).epochs == [1, 3]
    _close(two.get_weights(), _mean(weights, [1, 3]))


def test_k_larger_than_the_kept_files_averages_all_of_them_with_a_note(tmp_path):
    weights = _run(tmp_path)
    model = make_model(seed=7)
    with pytest.warns(UserWarning, match=r"k=5 but the run .* keeps 3 files: all of them are averaged"):
        record = average_best(model, tmp_path, k=5)
    assert record.epochs == [1, 3, 2] and "keep_top_k" in record.notes[0]
    _close(model.get_weights(), _mean(weights, [1, 3, 2]))


def test_by_ranks_the_kept_files_by_another_metric(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=3, verbose=0)
    weights = []
    for epoch, (loss, acc) in enumerate([(0.5, 0.9), (0.25, 0.5), (0.375, 0.8)]):
        perturb(model, 10 + epoch)
        weights.append(model.get_weights())
        tracker.update(epoch, {"val_loss": loss, "val_acc": acc})
    tracker.finish()
    fresh = make_model(seed=7)
    assert average_best(fresh, tmp_path, k=2, by="val_acc").epochs == [0, 2]
    _close(fresh.get_weights(), _mean(weights, [0, 2]))


class Counter(keras.layers.Layer):
    """A layer with an integer state (a step counter) beside a float weight."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        self.count = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="count")

    def call(self, x):
        return x * self.scale


def _counter_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Counter()])


def test_integer_variables_come_from_the_best_file(tmp_path):
    model = _counter_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=3, verbose=0)
    weights = []
    for epoch, v in enumerate(VALUES):
        perturb(model, 10 + epoch)
        model.layers[-1].count.assign(100 + epoch)
        weights.append(model.get_weights())
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    fresh = _counter_model(seed=3)
    record = average_best(fresh, tmp_path, k=3)
    assert record.epochs == [1, 3, 2]
    counter = fresh.layers[-1]
    assert keras.backend.standardize_dtype(counter.count.dtype) == "int32"
    assert int(keras.ops.convert_to_numpy(counter.count)) == 101, "the best's (epoch 1), not an average (102)"
    floats = [i for i, w in enumerate(weights[0]) if w.dtype.kind == "f"]
    expected = _mean(weights, [1, 3, 2])
    _close([fresh.get_weights()[i] for i in floats], [expected[i] for i in floats])


# ---------------------------------------------------------- BatchNormalization
def _bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(momentum=0.9),
                             keras.layers.Dense(1)])


def test_batch_norm_statistics_are_recomputed_over_data(tmp_path):
    weights = _run(tmp_path, make=_bn_model)
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    model = _bn_model(seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = average_best(model, tmp_path, k=3, data=(x, np.zeros(64)), batch_size=32)
    assert record.statistics == "recomputed" and record.notes == ()
    mean = _mean(weights, [1, 3, 2])  # kernel, bias, gamma, beta, moving mean, moving variance, kernel, bias
    got = model.get_weights()
    _close([got[i] for i in (0, 1, 2, 3, 6, 7)], [mean[i] for i in (0, 1, 2, 3, 6, 7)])
    h = x.astype("float64") @ mean[0] + mean[1]  # what Dense computes for the averaged weights
    batches = [h[:32], h[32:]]
    np.testing.assert_allclose(got[4], np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[5], np.mean([b.var(axis=0) for b in batches], axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[4], mean[4]), "recomputed, not averaged"
    assert model.layers[1].momentum == 0.9, "the layer's momentum is put back"


def test_batch_norm_statistics_from_a_dataset_of_batches(tmp_path):
    _run(tmp_path, make=_bn_model)
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    by_array, by_batches = _bn_model(seed=7), _bn_model(seed=7)
    average_best(by_array, tmp_path, data=x, batch_size=16)
    average_best(by_batches, tmp_path, data=((x[i:i + 16], None) for i in range(0, 64, 16)))
    _close(by_batches.get_weights(), by_array.get_weights())


def test_without_data_the_statistics_are_averaged_and_a_note_says_so(tmp_path):
    weights = _run(tmp_path, make=_bn_model)
    model = _bn_model(seed=7)
    with pytest.warns(UserWarning, match="averaged like the weights, not recomputed: pass data=") as caught:
        record = average_best(model, tmp_path, k=3)
    assert len([w for w in caught if "average_best" in str(w.message)]) == 1, "said once"
    assert record.statistics == "averaged" and "data=" in record.notes[0]
    _close(model.get_weights(), _mean(weights, [1, 3, 2]))


# ----------------------------------------------------------------- greedy soup
def test_greedy_soup_adds_only_members_that_improve_the_score(tmp_path):
    weights = _run(tmp_path, values=[0.5, 0.25, 0.375, 0.3125, 0.9], keep_top_k=4)  # ranked: 1, 3, 2, 0
    scores = iter([0.5, 0.6, 0.55, 0.7])  # best alone, +3 (better), +2 (worse), +0 (better)
    trials = [[1], [1, 3], [1, 3, 2], [1, 3, 0]]
    seen = []

    def val_accuracy(model):  # "accuracy": higher is better, inferred
        _close(model.get_weights(), _mean(weights, trials[len(seen)]))  # evaluated on the trial soup
        seen.append(len(seen))
        return next(scores)

    model = make_model(seed=7)
    record = average_best(model, tmp_path, k=4, evaluate=val_accuracy)
    assert [c.epoch for c in record.candidates] == [1, 3, 2, 0]
    assert record.epochs == [1, 3, 0] and record.scores == (0.5, 0.6, 0.55, 0.7) and record.score == 0.7
    _close(model.get_weights(), _mean(weights, [1, 3, 0]))


def test_greedy_soup_with_mode_min_keeps_the_best_alone_when_nothing_improves(tmp_path):
    weights = _run(tmp_path)
    scores = iter([1.0, 1.5, 1.0])  # nothing beats the best alone (an equal score is no improvement)
    model = make_model(seed=7)
    record = average_best(model, tmp_path, k=3, evaluate=lambda m: next(scores), mode="min")
    assert record.epochs == [1] and record.score == 1.0
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights[1]))


def test_greedy_soup_with_data_returns_the_statistics_it_evaluated(tmp_path):
    _run(tmp_path, make=_bn_model)
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    evaluated = []

    def loss(model):
        evaluated.append(model.get_weights())
        return [3.0, 2.0, 2.5][len(evaluated) - 1]

    model = _bn_model(seed=7)
    record = average_best(model, tmp_path, k=3, data=x, evaluate=loss)
    assert record.epochs == [1, 3] and record.statistics == "recomputed"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), evaluated[1]))


def test_greedy_soup_needs_a_direction_it_cannot_infer(tmp_path):
    _run(tmp_path)
    with pytest.raises(ValueError, match='Cannot infer whether evaluate=.*Pass `mode="min"`'):
        average_best(make_model(), tmp_path, evaluate=lambda m: 0.0)
    with pytest.raises(ValueError, match='`mode` must be one of "min", "max"'):
        average_best(make_model(), tmp_path, evaluate=lambda m: 0.0, mode="up")


# ---------------------------------------------------------------- formats, errors
def test_a_keras_archive_run(tmp_path):
    weights = _run(tmp_path, name="e{epoch}.keras")
    model = make_model(seed=7)
    assert average_best(model, tmp_path, k=3).paths[0].endswith("e2.keras")
    _close(model.get_weights(), _mean(weights, [1, 3, 2]))


def _big(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64) for _ in range(3)])


def test_a_sharded_run(tmp_path):
    weights = _run(tmp_path, make=_big, name="e{epoch}.weights.json", max_shard_size=20_000 / 1024**3)
    assert len([n for n in os.listdir(tmp_path) if n.startswith("e2_")]) >= 2, "several shards"
    model = _big(seed=7)
    assert average_best(model, tmp_path, k=3).epochs == [1, 3, 2]
    _close(model.get_weights(), _mean(weights, [1, 3, 2]))


def test_refuses_savedmodel_runs_other_architectures_and_bad_k(tmp_path):
    _run(tmp_path)
    with pytest.raises(ValueError, match="architecture"):
        average_best(make_model(units=5), tmp_path)
    for k in (0, 1.5, True):
        with pytest.raises(ValueError, match="`k` must be an int >= 1"):
            average_best(make_model(), tmp_path, k=k)
    with pytest.raises(FileNotFoundError, match="keras_best.json"):
        average_best(make_model(), tmp_path / "nothing")
    path = tmp_path / "keras_best.json"
    record = json.loads(path.read_text())
    record["save_format"] = "savedmodel"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="keeps SavedModel exports, which average_best does not average"):
        average_best(make_model(), tmp_path)


# ------------------------------------------------------------------------- CLI
@pytest.mark.slow  # a fresh interpreter imports Keras (about 10 s); the command's path is the same on every backend
@pytest.mark.backend_neutral
def test_cli_averages_a_keras_run_into_a_file_stock_keras_reads(tmp_path):
    run = tmp_path / "run"
    weights = _run(run, name="e{epoch}.keras")
    out = tmp_path / "soup.weights.h5"
    done = subprocess.run([sys.executable, "-m", "keras_best", "average", str(run), "-k", "3", "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epochs 2, 4, 3" in done.stdout and str(out) in done.stdout
    assert [n for n in os.listdir(tmp_path) if n != "run"] == ["soup.weights.h5"], "no temp file left"
    model = make_model(seed=7)
    model.load_weights(str(out))  # stock Keras
    _close(model.get_weights(), _mean(weights, [1, 3, 2]))


def test_cli_needs_the_model_of_a_weights_run_and_writes_a_keras_file(tmp_path, capsys):
    run = tmp_path / "run"
    weights = _run(run)
    out = tmp_path / "soup.keras"
    assert main(["average", str(run), "-k", "2", "-o", str(out)]) == 1
    assert "--model FILE.keras" in capsys.readouterr().err and not out.exists()
    architecture = tmp_path / "arch.keras"
    make_model(seed=7).save(str(architecture))
    assert main(["average", str(run), "-o", str(tmp_path / "soup.txt"), "--model", str(architecture)]) == 1
    assert ".keras or .weights.h5" in capsys.readouterr().err
    assert main(["average", str(run), "-k", "2", "-o", str(out), "--model", str(architecture)]) == 0
    assert "epochs 2, 4" in capsys.readouterr().out
    _close(keras.saving.load_model(str(out)).get_weights(), _mean(weights, [1, 3]))
