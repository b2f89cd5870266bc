"""Write errors (full disk, removed directory, permissions, Ctrl-C) surface as a
clear exception, and the previous best stays on disk, loadable and recorded."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker, SaveError, load_best
from keras_best.storage import files
from tests.conftest import run_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "write_error_worker.py")
HOWS = ["sync"] + (["async"] if "async_save" in inspect.signature(BestWeightsTracker).parameters else [])


def _worker_model() -> keras.Model:
    return keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(1)])


def _run_worker(kind: str, run_dir: str, how: str, drop_root_powers: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    prefix = []
    if drop_root_powers:
        # root ignores file permissions: drop the capabilities that let it.
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    out = subprocess.run(
        prefix + [sys.executable, WORKER, kind, run_dir, how], env=env, capture_output=True,
        text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_first_best_intact(run_dir: str) -> None:
    model = _worker_model()
    rec = load_best(model, run_dir)
    assert rec.epoch == 0 and rec.value == 1.0
    assert all(np.array_equal(w, np.zeros_like(w)) for w in model.get_weights())
    assert [n for n in os.listdir(run_dir) if files.is_tmp_name(n)] == []


@pytest.mark.slow
@pytest.mark.parametrize("how", HOWS)
def test_after_a_full_disk_training_carries_on_and_the_process_exits_cleanly(tmp_path, how):
    # h5py's state breaks (and the process may crash at a later close) after a
    # failed write; keras-best's file object never reports one to HDF5.
    run_dir = str(tmp_path / "run")
    result = _run_worker("fsize-carry-on", run_dir, how)  # asserts exit status 0
    assert result["raised"] == "SaveError", result
    assert result["carried_on"] == [2, 0.4]
    model = _worker_model()
    rec = load_best(model, run_dir)
    assert (rec.epoch, rec.value) == (2, 0.4)
    assert all(np.array_equal(w, np.full_like(w, 3.0)) for w in model.get_weights())
    assert [h["epoch"] for h in run_json(run_dir)["history"]] == [0, 1, 2]


FULL_DISK_SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
from keras_best import BestWeightsTracker, SaveError
run, how, suffix = sys.argv[1], sys.argv[2], sys.argv[3]
model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(1)])  # 530 KB
tracker = BestWeightsTracker(model, os.path.join(run, "e{epoch}" + suffix), keep_top_k=2, verbose=0,
                             async_save=how == "async")
out = []
model.set_weights([np.full(w.shape, 0.0, w.dtype) for w in model.weights])
tracker.update(0, {"val_loss": 1.0}); tracker.flush()
with open(os.path.join(run, "filler"), "wb") as f:  # the disk fills up
    try:
        f.write(b"x" * (4 << 20))
    except OSError:
        pass
for epoch in (1, 2):
    model.set_weights([np.full(w.shape, float(epoch), w.dtype) for w in model.weights])
    try:
        tracker.update(epoch, {"val_loss": 1.0 - epoch / 10}); tracker.flush()
        out.append("saved")
    except SaveError as e:
        out.append("No space left" in str(e) and "SaveError")
os.remove(os.path.join(run, "filler"))  # space freed: carry on
model.set_weights([np.full(w.shape, 3.0, w.dtype) for w in model.weights])
tracker.update(1, {"val_loss": 0.7})
tracker.finish()
out.append([tracker.best_epoch, tracker.best])
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def small_disk(tmp_path):
    """A real 1.5 MB file system (tmpfs), where writes fail with ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.backend_neutral  # the writes from host copies: the same code on every backend
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_a_really_full_file_system_then_freed_space(small_disk, how, suffix):
    # With plain h5py writing the file, HDF5's state broke after the first
    # ENOSPC ("Can't decrement id ref count", a RuntimeError and not a
    # SaveError, and at worst SIGSEGV at close). A `.keras` archive's weights
    # member is written by h5py the same way, inside the zip file.
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(small_disk), how, suffix], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == ["SaveError", "SaveError", [1, 0.7]], out
    model = _worker_model()
    assert load_best(model, str(small_disk)).epoch == 1
    assert all(np.array_equal(w, np.full_like(w, 3.0)) for w in model.get_weights())


@pytest.mark.slow
@pytest.mark.backend_neutral
@pytest.mark.parametrize("how", HOWS)
def test_full_disk_raises_clearly_and_keeps_previous_best(tmp_path, how):
    run_dir = str(tmp_path / "run")
    result = _run_worker("fsize", run_dir, how)
    assert result["raised"] == "SaveError", result
    assert "previous best (epoch 1" in result["message"] and "intact" in result["message"]
    assert "File too large" in result["message"] or "[Errno 27]" in result["message"]
    assert result["best_after"] == 1.0, "the failed epoch must not become the in-memory best"
    _assert_first_best_intact(run_dir)


@pytest.mark.slow
@pytest.mark.backend_neutral
@pytest.mark.parametrize("how", HOWS)
def test_read_only_directory_raises_clearly_and_keeps_previous_best(tmp_path, how):
    run_dir = tmp_path / "run"
    is_root = os.geteuid() == 0
    if is_root and shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux's setpriv: permissions cannot be enforced")
    result = _run_worker("chmod", str(run_dir), how, drop_root_powers=is_root)
    assert result["raised"] == "SaveError", result
    assert "Permission denied" in result["message"]
    assert result["cause"] == "PermissionError"
    _assert_first_best_intact(str(run_dir))


def test_removed_run_directory_raises_clearly(tmp_path, model):
    run_dir = tmp_path / "run"
    # Synchronous: the first save must be on disk before the directory goes
    # (tests/test_async_writer.py covers the background case).
    tracker = BestWeightsTracker(model, str(run_dir / "best.weights.h5"), verbose=0,
                                 **({"async_save": False} if len(HOWS) > 1 else {}))
    tracker.update(0, {"val_loss": 1.0})
    shutil.rmtree(run_dir)
    with pytest.raises(SaveError, match="no longer exists"):
        tracker.update(1, {"val_loss": 0.5})
        tracker.finish()
    assert tracker.best == 1.0


class _InterruptedSave(keras.Sequential):
    """A real model whose next save is interrupted by Ctrl-C half-way."""

    interrupt = False

    def save_weights(self, filepath, **kwargs):
        super().save_weights(filepath, **kwargs)  # a complete temp file exists...
        if self.interrupt:
            raise KeyboardInterrupt  # ...when Ctrl-C arrives


def test_ctrl_c_during_a_save_keeps_previous_best_and_record(tmp_path):
    model = _InterruptedSave([keras.Input((4,)), keras.layers.Dense(3)])
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0,
                                 **({"async_save": False} if len(HOWS) > 1 else {}))
    first = [w.copy() for w in model.get_weights()]
    tracker.update(0, {"val_loss": 1.0})
    model.set_weights([w + 1 for w in first])
    model.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        tracker.update(1, {"val_loss": 0.5})
    assert tracker.best == 1.0 and tracker.best_epoch == 0
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    rec = load_best(fresh, tmp_path)
    assert rec.epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), first))
    assert [n for n in os.listdir(tmp_path) if files.is_tmp_name(n)] == []
    assert [h["epoch"] for h in run_json(str(tmp_path))["history"]] == [0]
    model.interrupt = False
    assert tracker.update(1, {"val_loss": 0.5}).improved  # the run goes on normally
