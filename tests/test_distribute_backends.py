"""torch.distributed (DDP) and JAX multi-process jobs: process 0 alone writes,
every process takes the same decisions.

Each job is two real processes on localhost (tests/workers/torch_ddp_worker.py
with gloo, tests/workers/jax_multiprocess_worker.py with
`jax.distributed.initialize` on CPU), run once per module; the tests read what
they left. A job needs its backend: these tests run in the torch and JAX venvs
(`KERAS_BACKEND=torch` / `jax`) and skip on the others.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker, load_best
from keras_best.runner import distribute
from keras_best.storage import manifest
from keras_best.storage.lock import LOCK_NAME
from tests.conftest import BACKEND, make_model, run_json
from tests.processes import ROOT, WORKERS, free_ports, readme_script, run_all
from tests.workers.shards import EPOCHS, build_model

TIMEOUT = 120  # seconds for the pair before they count as hung; they take ~10-20 s
SCRIPTS = {"torch": "torch_ddp_worker.py", "jax": "jax_multiprocess_worker.py"}
RECORD = [manifest.MANIFEST_NAME, manifest.HISTORY_NAME]  # the lock file goes with finish()


@dataclass
class Job:
    backend: str
    run: Path
    out: list[dict]
    logs: list[str]
    scratch: list[Path]
    seconds: float

    def weights(self, name: str) -> list[np.ndarray]:
        with np.load(self.run.parent / "out" / name) as f:
            return [f[f"arr_{i}"] for i in range(len(f.files))]


def _env(backend: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "MASTER_ADDR", "MASTER_PORT")}
    return dict(env, PYTHONPATH=ROOT, KERAS_BACKEND=backend, **extra)


@pytest.fixture(scope="module", params=list(SCRIPTS))
def job(request, tmp_path_factory) -> Job:
    """The two-process job of the current backend (the other one skips)."""
    backend = request.param
    if BACKEND != backend:
        pytest.skip(f"needs KERAS_BACKEND={backend} (this run: {BACKEND}); CI runs it in the {backend} venv")
    import fcntl
    import shutil

    # Once per test run: under pytest-xdist the first worker here runs the job, the other waits and reads it.
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent / f"{backend}-job" if shared else tmp_path_factory.mktemp("job")
    run, out = root / "run", root / "out"
    scratch = [root / "tmp0", root / "tmp1"]  # each process's TMPDIR
    logs = [str(root / f"process{i}.log") for i in (0, 1)]
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "seconds").exists():
            shutil.rmtree(root, ignore_errors=True)  # what a failed try left
            for d in [out] + scratch:
                d.mkdir(parents=True)
            port = str(free_ports(1)[0])
            commands = [[sys.executable, os.path.join(WORKERS, SCRIPTS[backend]), str(i), port, str(run), str(out)]
                        for i in (0, 1)]
            seconds = run_all(commands, logs, [_env(backend, TMPDIR=str(s)) for s in scratch], TIMEOUT)
            (root / "seconds").write_text(repr(seconds))
    seconds = float((root / "seconds").read_text())
    results = [json.loads((out / f"process{i}.json").read_text()) for i in (0, 1)]
    print(f"{backend}, 2 processes: {seconds:.1f} s wall ({results[0]['seconds']:.1f} s after start-up)")
    return Job(backend, run, results, logs, scratch, seconds)


@pytest.mark.slow
def test_process_zero_is_the_only_chief(job):
    assert [x["chief"] for x in job.out] == [True, False]
    assert [x["imported"] for x in job.out] == [[job.backend]] * 2  # never TensorFlow, nor the other backend


@pytest.mark.slow
def test_custom_loop_stops_at_the_same_epoch_everywhere(job):
    own = np.array([x["loop"]["own"] for x in job.out])  # what each process read from its shard
    loop = [{k: v for k, v in x["loop"].items() if k != "own"} for x in job.out]
    assert loop[0] == loop[1]  # same history, best and stop on both processes
    decided = np.array([value for _, value in loop[0]["history"]])
    assert not np.array_equal(own[0], own[1])
    assert np.array_equal(decided, (own[0] + own[1]) / 2)  # their mean, exactly (float64 on the wire)
    assert loop[0]["stop_epoch"] == loop[0]["best_epoch"] + 2 < EPOCHS - 1  # patience 2, well before the end
    # Each process read the loss of its own shard: decided on their mean, with a warning on both.
    for x in job.out:
        found = [re.search(r"Metric 'val_loss' differs by worker \((\S+), (\S+)\); every worker uses their "
                           r"mean, (\S+),", m) for m in x["warnings"]]
        a, b, mean = (float(v) for v in next(f for f in found if f).groups())
        assert a != b and mean == pytest.approx((a + b) / 2, rel=1e-5)
        assert loop[0]["history"][0][1] == pytest.approx(mean, rel=1e-5)  # epoch 0 decided on the mean


@pytest.mark.slow
def test_only_the_chief_writes_and_speaks(job):
    assert sorted(os.listdir(job.run / "loop")) == sorted(RECORD + ["best.weights.h5"])
    assert sorted(os.listdir(job.run / "fit")) == sorted(RECORD + ["best.keras"])
    # A run that raised may leave its lock file (when its process ended without closing the
    # tracker): then it is process 0's.
    bad_lock = job.run / "bad" / LOCK_NAME
    assert not bad_lock.exists() or json.loads(bad_lock.read_text())["pid"] == job.out[0]["pid"]
    for s in job.scratch:  # the non-chief's saves went to scratch directories, all removed
        assert [p for p in os.listdir(s) if p.startswith(distribute.SCRATCH_PREFIX)] == []
    chief, other = (open(log).read() for log in job.logs)
    assert "saving model to" in chief and "early stopping" in chief
    assert "Epoch " not in other


@pytest.mark.slow
def test_best_loads_with_stock_keras_loaders(job):
    loop = job.out[0]["loop"]
    record = run_json(job.run / "loop")
    assert (record["best"]["epoch"], record["best"]["value"]) == (loop["best_epoch"], loop["best"])
    model = build_model()
    model.load_weights(str(job.run / "loop" / record["best"]["path"]))
    chief = job.weights("process0.npz")  # restore_best_weights: the best epoch's weights
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), chief, strict=True))
    if job.backend == "torch":  # DDP kept the replicas equal: the other rank restored the same weights
        assert all(np.array_equal(a, b) for a, b in zip(chief, job.weights("process1.npz"), strict=True))
    assert load_best(build_model(), str(job.run / "loop")).epoch == loop["best_epoch"]


@pytest.mark.slow
def test_fit_with_best_checkpoint(job):
    fit = [x["fit"] for x in job.out]
    assert fit[0]["epochs"] == fit[1]["epochs"] == fit[0]["best_epoch"] + 3 < EPOCHS  # patience 2
    assert fit[0]["best"] == fit[1]["best"]
    if job.backend == "torch":  # each rank fits its own shard: decided on the mean of the two
        own = np.array([f["own"] for f in fit])
        assert not np.allclose(own[0], own[1])
        np.testing.assert_allclose(fit[0]["decided"], own.mean(axis=0), rtol=1e-6)
        assert fit[0]["decided"] == fit[1]["decided"]
        assert all(any("Metric 'loss' differs by worker" in m for m in x["warnings"]) for x in job.out)
    else:  # one model over both processes: JAX reduced the metrics, used as they are
        assert fit[0]["own"] == fit[1]["own"]
        assert fit[0]["best"] == fit[0]["own"][fit[0]["best_epoch"]]
    loaded = keras.models.load_model(str(job.run / "fit" / "best.keras"))
    assert load_best(build_model(), str(job.run / "fit")).epoch == fit[0]["best_epoch"]
    if job.backend == "jax":  # restore_best_weights on both processes == the chief's file
        for i in (0, 1):
            assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), job.weights(f"fit{i}.npz"),
                                                            strict=True))


@pytest.mark.slow
def test_different_epochs_raise_on_every_process(job):
    for x in job.out:
        assert "called update() with different arguments" in x["mismatch"]
        assert "(epoch, step) per worker = [(0, None), (1, None)]" in x["mismatch"]
    assert set(os.listdir(job.run / "bad")) <= {LOCK_NAME}  # nothing saved, at most the lock


@pytest.mark.slow
def test_two_chiefs_raise_on_every_process(job):
    hint = {"torch": "build the trackers after torch.distributed.init_process_group()",
            "jax": "build the trackers after jax.distributed.initialize()"}[job.backend]
    for x in job.out:
        assert x["two_chiefs"].startswith("2 of the 2 workers consider themselves the chief")
        assert hint in x["two_chiefs"]


# ------------------------------------------------------------------- README
BEST_LINE = r"best epoch (\d+) val_loss (\S+)"


def _readme_model() -> keras.Model:
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])


def _check_readme_run(directory: Path, printed: list[str]) -> None:
    """Both processes printed the same best; process 0 alone wrote it."""
    found = [re.findall(BEST_LINE, text) for text in printed]
    found = [f for group in found for f in group]
    assert len(found) == 2 and found[0] == found[1], printed
    record = load_best(_readme_model(), str(directory))
    assert (record.epoch, record.value) == (int(found[0][0]), pytest.approx(float(found[0][1])))
    assert sorted(os.listdir(directory)) == sorted(RECORD + ["best.weights.h5"])


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="the torch DDP example needs KERAS_BACKEND=torch")
def test_readme_torch_ddp_example_runs_as_written(tmp_path):
    """README's train_ddp.py, unchanged, under torchrun with two ranks."""
    (tmp_path / "train_ddp.py").write_text(readme_script("Save as `train_ddp.py`"))
    log = str(tmp_path / "torchrun.log")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_ports(1)[0]}", "train_ddp.py"]
    run_all([command], [log], _env("torch"), TIMEOUT, cwd=str(tmp_path))
    _check_readme_run(tmp_path / "runs" / "ddp", [open(log).read()])


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="the JAX multi-process example needs KERAS_BACKEND=jax")
def test_readme_jax_multiprocess_example_runs_as_written(tmp_path):
    """README's train_jax.py, unchanged, as two processes, as its bash line runs it."""
    (tmp_path / "train_jax.py").write_text(readme_script("Save as `train_jax.py`"))
    coordinator = f"localhost:{free_ports(1)[0]}"
    logs = [str(tmp_path / f"process{i}.log") for i in (0, 1)]
    run_all([[sys.executable, "train_jax.py", coordinator, "2", str(i)] for i in (0, 1)], logs, _env("jax"),
            TIMEOUT, cwd=str(tmp_path))
    _check_readme_run(tmp_path / "runs" / "jax", [open(log).read() for log in logs])


# ------------------------------------------------------------ one process
@pytest.mark.skipif(BACKEND == "tensorflow", reason="TF_CONFIG is read on the TensorFlow backend "
                    "(tests/test_distribute.py)")
def test_tf_config_means_nothing_on_other_backends(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert distribute.is_chief()
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "run" / "best.weights.h5"), verbose=0)
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    assert sorted(os.listdir(tmp_path / "run")) == sorted(RECORD + ["best.weights.h5"])


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed needs KERAS_BACKEND=torch")
def test_torch_process_group_of_one_has_nothing_to_agree(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert distribute.is_chief()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert distribute.agree({"val_loss": 0.5}, make_model(), epoch=0, step=None,
                                    chief=True) == {"val_loss": 0.5}
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(BACKEND != "jax", reason="JAX multi-process needs KERAS_BACKEND=jax")
def test_jax_without_distributed_initialize_is_one_process():
    import jax

    assert not jax.distributed.is_initialized()
    assert distribute.is_chief()
    assert distribute.agree({"val_loss": 0.5}, make_model(), epoch=0, step=None, chief=True) == {"val_loss": 0.5}
