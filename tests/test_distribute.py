"""Under tf.distribute: only the chief writes, every worker decides the same.

The strategies run in subprocesses (tests/workers/): two logical CPU devices
must be configured before TensorFlow starts, and MultiWorkerMirroredStrategy
needs one process per worker (here two, on free localhost ports).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from keras_best.runner import distribute
from keras_best.storage import manifest
from tests.conftest import make_model, perturb, run_json, weights_equal
from tests.processes import ROOT, WORKERS, free_ports, readme_script, run_all

TIMEOUT = 240  # seconds for a whole subprocess group; they take ~10-30 s


def _tf_config(task_type: str | None, index: int = 0, chief: bool = False) -> str:
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    if chief:
        cluster["chief"] = ["localhost:3"]
    config = {"cluster": cluster}
    if task_type:
        config["task"] = {"type": task_type, "index": index}
    return json.dumps(config)


# ------------------------------------------------------------------ who is chief
@pytest.mark.parametrize(
    "config,expected",
    [
        (None, True),
        (_tf_config("worker", 0), True),
        (_tf_config("worker", 1), False),
        (_tf_config("chief", 0, chief=True), True),
        (_tf_config("worker", 0, chief=True), False),
        (_tf_config("evaluator", 0), False),
        (_tf_config(None), True),
    ],
    ids=["no-tf-config", "worker0", "worker1", "chief", "worker0-with-chief", "evaluator", "no-task"],
)
def test_is_chief(monkeypatch, config, expected):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    assert distribute.is_chief() is expected


def test_invalid_tf_config(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON.*Received: '\{not json'"):
        BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"))


# ------------------------------------------------------------ non-chief workers
def _leftovers(directory) -> list[str]:
    return [p for p in os.listdir(directory) if p.startswith(distribute.SCRATCH_PREFIX)]


@pytest.fixture
def scratch(monkeypatch, tmp_path):
    """A private temp root, to see what non-chief workers leave behind."""
    root = tmp_path / "scratch"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_non_chief_write_goes_to_a_scratch_dir_that_is_removed(scratch, tmp_path):
    seen = []

    def write(path):
        with open(path, "wb") as f:
            f.write(b"content")
        seen.append(path)

    target = str(tmp_path / "run" / ".kb-tmp-0123456789ab-best.weights.h5")
    distribute.write_durably(target, write, chief=False)
    assert os.path.dirname(os.path.dirname(seen[0])) == str(scratch)
    assert seen[0].endswith("best.weights.h5")  # Keras checks the suffix
    assert not (tmp_path / "run").exists() and list(scratch.iterdir()) == []


def test_non_chief_scratch_is_removed_when_the_save_fails(scratch, tmp_path):
    def write(path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        distribute.write_durably(str(tmp_path / "x.weights.h5"), write, chief=False)
    assert list(scratch.iterdir()) == []


SEQUENCE = [3.0, 2.0, 2.5, 1.0, 1.5, 1.6, 0.5]  # patience 2 stops at epoch 5


def _drive(tracker, model):
    decisions = []
    for epoch, value in enumerate(SEQUENCE):
        perturb(model, epoch)
        decisions.append(tracker.update(epoch, {"val_loss": value}))
        if decisions[-1].should_stop:
            break
    tracker.finish()
    return [(d.improved, d.best, d.should_stop, d.saved_path) for d in decisions]


@pytest.mark.parametrize("save_format,name", [(None, "b-{epoch}.weights.h5"), ("savedmodel", "export")])
def test_non_chief_decides_like_the_chief_and_writes_nothing(monkeypatch, scratch, tmp_path,
                                                            save_format, name):
    options = dict(monitor="val_loss", patience=2, save_last=True, keep_top_k=None,
                   restore_best_weights=True, save_format=save_format, verbose=0,
                   export_at_finish=save_format == "savedmodel")
    chief_model, worker_model = make_model(), make_model()
    chief = _drive(BestWeightsTracker(chief_model, str(tmp_path / "chief" / name), **options), chief_model)
    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 1))
    worker_tracker = BestWeightsTracker(worker_model, str(tmp_path / "worker" / name), **options)
    worker = _drive(worker_tracker, worker_model)

    assert [d[:3] for d in worker] == [d[:3] for d in chief]
    assert [d[3] and os.path.basename(d[3]) for d in worker] == [d[3] and os.path.basename(d[3]) for d in chief]
    assert not (tmp_path / "worker").exists()  # not even the directory or its lock
    assert _leftovers(scratch) == []
    assert weights_equal(worker_model, chief_model)  # restore_best_weights on every worker
    assert worker_tracker.best_epoch == 3 and worker_tracker.stopped


def test_non_chief_callback_writes_nothing(monkeypatch, scratch, tmp_path, data):
    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 1))
    x, y = data
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    callback = BestCheckpoint(str(tmp_path / "run" / "best.keras"), monitor="loss", save_best_only=True)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[callback])
    assert callback.tracker.best_epoch is not None
    assert not (tmp_path / "run").exists() and _leftovers(scratch) == []
    with pytest.raises(FileNotFoundError, match="keras_best.json"):
        load_best(model, str(tmp_path / "run"))


# ---------------------------------------------------- one process: nothing to agree
def test_without_a_strategy_values_pass_through(model):
    values = {"val_loss": 0.25, "acc": float("nan")}
    assert distribute.strategy_of(model) is None
    assert distribute.worker_count(None) == 1
    out = distribute.agree(values, model, epoch=0, step=None, chief=True)
    assert out == {"val_loss": 0.25, "acc": out["acc"]} and np.isnan(out["acc"])


def test_strategy_is_found_from_the_model_outside_the_scope():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = make_model()
    assert distribute.strategy_of(model) is strategy  # no scope active here
    assert distribute.worker_count(strategy) == 1
    assert distribute.agree({"val_loss": 1.5}, model, epoch=3, step=None, chief=True) == {"val_loss": 1.5}


def test_load_weights_in_one_process_is_keras_load_weights(tmp_path, model):
    other = make_model(seed=4)
    other.save_weights(str(tmp_path / "o.weights.h5"))
    distribute.load_weights(model, str(tmp_path / "o.weights.h5"), chief=True)
    assert weights_equal(model, other)


# ------------------------------------------------------------- real strategies
def _run(commands: list[list[str]], logs: list[str], env, cwd: str = ROOT) -> float:
    return run_all(commands, logs, env, TIMEOUT, cwd)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return dict(env, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def _weights(npz: str) -> list[np.ndarray]:
    with np.load(npz) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def _same(model: keras.Model, arrays: list[np.ndarray]) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), arrays, strict=True))


@pytest.mark.slow
def test_mirrored_strategy_on_two_devices(tmp_path):
    from tests.workers.multiworker_worker import build_model

    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    seconds = _run([[sys.executable, os.path.join(WORKERS, "mirrored_worker.py"), str(run), str(out)]],
                       [str(tmp_path / "mirrored.log")], _env())
    result = json.loads((out / "mirrored.json").read_text())
    print(f"MirroredStrategy, 2 logical CPUs: {seconds:.1f} s wall")
    assert result["replicas"] == 2

    # fit() + BestCheckpoint: the record matches Keras' own history.
    fit = result["fit"]
    losses = fit["val_loss"]
    assert fit["stopped"] and len(losses) == fit["best_epoch"] + 1 + 2  # patience 2
    assert fit["best"] == losses[fit["best_epoch"]]
    model = build_model()
    record = load_best(model, str(run / "fit"))
    assert (record.epoch, record.value) == (fit["best_epoch"], fit["best"])
    assert _same(model, _weights(str(out / "fit.npz")))  # restore_best_weights == file

    # Custom loop with strategy.run: .keras file loadable with the stock loader.
    loop = result["loop"]
    assert loop["stop_epoch"] == loop["best_epoch"] + 2 < 39
    best = _weights(str(out / "loop.npz"))
    assert _same(keras.models.load_model(str(run / "loop" / "best.keras")), best)
    model = build_model()
    assert load_best(model, str(run / "loop")).epoch == loop["best_epoch"] and _same(model, best)
    assert sorted(os.listdir(run / "loop")) == sorted(
        ["best.keras", "keras_best_last.h5", manifest.MANIFEST_NAME, manifest.HISTORY_NAME])


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_two_workers(tmp_path):
    from tests.workers.multiworker_worker import build_model

    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    ports = ",".join(map(str, free_ports(2)))
    scratch = [tmp_path / "tmp0", tmp_path / "tmp1"]  # each worker's TMPDIR
    for s in scratch:
        s.mkdir()
    script = os.path.join(WORKERS, "multiworker_worker.py")
    seconds = _run(
        [[sys.executable, script, str(i), ports, str(run), str(out)] for i in (0, 1)],
        [str(tmp_path / f"worker{i}.log") for i in (0, 1)],
        [_env(TMPDIR=str(s)) for s in scratch],
    )
    w = [json.loads((out / f"worker{i}.json").read_text()) for i in (0, 1)]
    print(f"MultiWorkerMirroredStrategy, 2 workers: {seconds:.1f} s wall "
          f"({w[0]['seconds']:.1f} s inside worker 0, phases at {w[0].get('phases')})")
    assert [x["chief"] for x in w] == [True, False]

    # 1. Same decisions everywhere: same history, same stop epoch.
    sync = [x["sync"] for x in w]
    assert sync[0] == sync[1]
    # Only the chief, which saves, prints the Keras-style lines.
    assert any("saving model to" in line for line in w[0]["printed"])
    assert any("early stopping" in line for line in w[0]["printed"])
    assert w[1]["printed"] == []
    assert sync[0]["stop_epoch"] == sync[0]["best_epoch"] + 2 < 39
    assert {h[2] for h in sync[0]["history"]} == {0.5}  # the per-worker float, averaged
    # One set of files, by the chief (it holds the lock), loadable.
    data = run_json(str(run / "sync"))
    kept = [k["path"] for k in data["kept"]]
    assert kept == [f"w-{sync[0]['best_epoch'] + 1:02d}.weights.h5"]
    assert sorted(os.listdir(run / "sync")) == sorted(
        kept + ["keras_best_last.h5", manifest.MANIFEST_NAME, manifest.HISTORY_NAME])  # lock gone with finish()
    model = build_model()
    record = load_best(model, str(run / "sync"))
    assert (record.epoch, record.value) == (sync[0]["best_epoch"], sync[0]["best"])
    assert _same(model, _weights(str(out / "worker0.npz")))
    assert _same(model, _weights(str(out / "worker1.npz")))  # mirrored: the same weights

    # 2. A plain float that differs by worker: decided on the mean (3.0), so
    #    both stop at epoch 2 (alone, worker 0 would never stop).
    assert [x["plain"] for x in w] == [{"stop_epoch": 2, "values": [3.0, 3.0, 3.0]}] * 2
    assert sorted(n for n in os.listdir(run / "plain") if n.endswith(".keras")) == [
        "m-01.keras", "m-02.keras", "m-03.keras"]
    keras.models.load_model(str(run / "plain" / "m-03.keras"))
    for x in w:
        assert any("Metric 'val_loss' differs by worker (5, 1); every worker uses their mean, 3" in m
                   for m in x["warnings"])
        assert any("Metric 'local' differs by worker" in m for m in x["warnings"])

    # 3. SavedModel exported at finish() by the chief.
    assert (run / "export" / "best" / "saved_model.pb").exists()
    loaded = tf.saved_model.load(str(run / "export" / "best"))
    assert loaded.serve(np.ones((1, 4), "float32")).shape == (1, 1)

    # 4. Workers disagreeing on the epoch both get the error, nobody hangs.
    for x in w:
        assert "called update() with different arguments" in x["mismatch"]
        assert "(epoch, step) per worker = [(0, None), (1, None)]" in x["mismatch"]

    # 5. Two workers that both consider themselves the chief: both get the error.
    for x in w:
        assert x["two_chiefs"].startswith("2 of the 2 workers consider themselves the chief")

    # Non-chief scratch saves were all removed.
    for s in scratch:
        assert _leftovers(s) == []


# ------------------------------------------------------------------- README
@pytest.mark.slow
def test_readme_distributed_example_runs_as_written(tmp_path):
    """README's train_dist.py, unchanged: one process (MirroredStrategy), then
    two MultiWorkerMirroredStrategy workers with TF_CONFIG as its bash block sets it."""
    script = tmp_path / "train_dist.py"
    script.write_text(readme_script("Save this as `train_dist.py`"))
    pattern = r"best epoch (\d+) val_loss (\S+)"

    one = tmp_path / "one"
    one.mkdir()
    _run([[sys.executable, str(script)]], [str(tmp_path / "one.log")], _env(), cwd=str(one))
    assert re.search(pattern, (tmp_path / "one.log").read_text())
    assert load_best(_readme_model(), str(one / "runs" / "dist")).path.endswith("best.weights.h5")

    two = tmp_path / "two"
    two.mkdir()
    workers = json.dumps([f"localhost:{p}" for p in free_ports(2)])
    envs = [_env(TF_CONFIG=json.dumps({"cluster": {"worker": json.loads(workers)},
                                       "task": {"type": "worker", "index": i}})) for i in (0, 1)]
    logs = [str(tmp_path / f"worker{i}.log") for i in (0, 1)]
    seconds = _run([[sys.executable, str(script)]] * 2, logs, envs, cwd=str(two))
    print(f"README train_dist.py, 2 workers: {seconds:.1f} s")
    found = [re.search(pattern, open(log).read()) for log in logs]
    assert all(found) and found[0].groups() == found[1].groups()  # same stop, same best
    epoch, value = int(found[0].group(1)), float(found[0].group(2))
    record = load_best(_readme_model(), str(two / "runs" / "dist"))
    assert (record.epoch, record.value) == (epoch, pytest.approx(value))
    assert sorted(os.listdir(two / "runs" / "dist")) == ["best.weights.h5", "keras_best.json", "keras_best_history.jsonl"]


def _readme_model() -> keras.Model:
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
