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


def test_the_lock_file_is_gone_once_the_run_is_finished(tmp_path):
    from keras_best import BestWeightsTracker
    from tests.conftest import make_model

    tracker = BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), verbose=0)
    tracker.update(0, {"val_loss": 0.5})
    assert (tmp_path / ".keras_best.lock").exists()
    tracker.finish()
    assert not (tmp_path / ".keras_best.lock").exists()
    tracker.update(1, {"val_loss": 0.4})  # a later update takes it again
    assert (tmp_path / ".keras_best.lock").exists()
    tracker.finish()
    assert sorted(os.listdir(tmp_path)) == ["b.weights.h5", "keras_best.json", "keras_best_history.jsonl"]


_CONTENDER = """
import os, sys, time
from keras_best.storage.lock import DirectoryLock, RunDirectoryLocked
directory, rounds = sys.argv[1], int(sys.argv[2])
marker = os.path.join(directory, "holder")
held = 0
for _ in range(rounds):
    lock = DirectoryLock(directory)
    try:
        lock.acquire()
    except RunDirectoryLocked:
        continue
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if the other holds it too
    except FileExistsError:
        print("BOTH"); sys.exit(1)
    os.close(fd)
    os.unlink(marker)
    lock.release()
    held += 1
print("HELD", held)
"""


def test_processes_taking_and_releasing_it_never_hold_it_at_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, str(tmp_path), "3000"], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert all(int(o.split()[-1]) > 0 for o in outs), outs
    assert not (tmp_path / ".keras_best.lock").exists()
