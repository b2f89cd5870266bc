"""Two trackers on one run directory: a second process is refused; a killed
holder never leaves a stale lock; in one process the newer tracker takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from keras_best import BestWeightsTracker, RunDirectoryLocked
from tests.conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = textwrap.dedent(
    """
    import sys, time, keras
    from keras_best import BestWeightsTracker
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    t = BestWeightsTracker(model, sys.argv[1] + "/best.weights.h5", verbose=0)
    print("HOLDING", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout.readline().strip() == "HOLDING"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_second_process_on_same_directory_is_refused(tmp_path, holder, model):
    with pytest.raises(RunDirectoryLocked, match=rf"pid {holder.pid} .*another `filepath` directory"):
        BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0)


@pytest.mark.slow
def test_killed_holder_leaves_no_stale_lock(tmp_path, holder, model):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0)
    assert tracker.update(0, {"val_loss": 1.0}).improved


def test_newer_tracker_in_same_process_takes_over(tmp_path, model):
    old = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0)
    new = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0)
    with pytest.raises(RunDirectoryLocked, match="newer keras-best tracker in this process"):
        old.update(0, {"val_loss": 1.0})
    assert new.update(0, {"val_loss": 1.0}).improved


def test_lock_is_released_by_finish_and_taken_again_by_update(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0)
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    assert not tracker._run.lock.held
    tracker.update(1, {"val_loss": 0.5})
    assert tracker._run.lock.held


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TF_CONFIG names the chief on the TensorFlow backend "
                    "only (torch and JAX: tests/test_distribute_backends.py)")
def test_non_chief_worker_takes_no_lock(tmp_path, model, monkeypatch):
    monkeypatch.setenv(
        "TF_CONFIG",
        '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}',
    )
    worker = BestWeightsTracker(model, str(tmp_path / "run" / "best.weights.h5"), verbose=0)
    assert worker._run.lock is None
    assert not (tmp_path / "run").exists(), "a non-chief worker must leave nothing in the run directory"
