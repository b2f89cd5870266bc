"""A custom loop resumed in the middle of an epoch over a source that shuffles when its
iterator is made (a generator drawing `np.random.permutation`, a torch
`DataLoader(shuffle=True)`, `tf.data` `shuffle(seed=)`) draws the uninterrupted run's
order: its final weights and optimizer variables are bit-identical."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_best import BestWeightsTracker, Preempted
from keras_best.frontends.loop_resume import LoopResume
from tests.conftest import BACKEND, run_json
from tests.test_fit_resume import assert_identical
from tests.workers import loop_resume_worker as worker
from tests.workers.loop_resume_worker import EPOCHS, SOURCES, STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "loop_resume_worker.py")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Each source's uninterrupted run."""
    return {s: worker.results(worker.train(str(tmp_path_factory.mktemp(s)), s, signals=None)) for s in SOURCES}


@pytest.mark.parametrize("source", SOURCES)
def test_a_preempted_loop_continues_at_the_next_batch_in_the_same_order(tmp_path, references, source):
    at = (1, 2)  # the middle of epoch 2
    with pytest.raises(Preempted):
        worker.train(str(tmp_path), source, at=at, signals=["SIGUSR1"])
    assert (run_json(tmp_path)["last"]["epoch"], run_json(tmp_path)["last"]["step"]) == at
    np.random.seed(123)  # the new process's generators stand anywhere
    got = worker.results(worker.train(str(tmp_path), source, signals=["SIGUSR1"]))
    assert_identical(got, references[source], f"a preemption at {at} ({source})")
    assert [h["epoch"] for h in run_json(tmp_path)["history"] if h.get("validated", True)] == list(range(EPOCHS))


@pytest.mark.parametrize("source", SOURCES)
def test_a_run_resumed_between_epochs_draws_the_same_order(tmp_path, references, source):
    """tf.data: the iterators of the epochs before are made again (its reshuffle seed)."""
    worker.train(str(tmp_path), source, epochs=2, signals=None)
    np.random.seed(123)
    assert_identical(worker.results(worker.train(str(tmp_path), source, signals=None)), references[source],
                     f"a resume at epoch 3 ({source})")


def test_without_the_epoch_start_state_the_order_differs(tmp_path, references):
    """The test above can fail: a state whose "loop" group is removed resumes epoch 2
    at batch 4 in another order (the process's generators as of the saved batch)."""
    import h5py

    with pytest.raises(Preempted):
        worker.train(str(tmp_path), "generator", at=(1, 2), signals=["SIGUSR1"])
    with h5py.File(tmp_path / run_json(tmp_path)["last"]["path"], "a") as f:
        assert int(f["loop/random/epoch"][()]) == 1
        del f["loop"]
    got = worker.results(worker.train(str(tmp_path), "generator", signals=["SIGUSR1"]))
    assert any(not np.array_equal(got[k], references["generator"][k]) for k in got)


def test_the_resumed_epoch_skips_the_consumed_batches_once_and_puts_the_random_state_back(tmp_path):
    def shuffled():
        order = list(range(10))
        random.shuffle(order)
        yield from order

    tracker = BestWeightsTracker(_model(), str(tmp_path / "b.weights.h5"), save_last=True,
                                 preempt_signals=None)
    random.seed(5)
    first = [b for _, b in tracker.batches(0, shuffled())]
    random.seed(5)
    for step, _ in tracker.batches(0, shuffled()):
        if step == 3:
            tracker.save_state(0, 3)
            after = random.random()  # what the run draws after batch 4
            break
    tracker.close()
    random.seed(99)
    again = BestWeightsTracker(_model(), str(tmp_path / "b.weights.h5"), resume=True, preempt_signals=None)
    assert (again.initial_epoch, again.initial_step) == (0, 4)
    steps = []
    for step, b in again.batches(0, shuffled()):
        if not steps:
            assert random.random() == after  # the state of the saved batch, not the epoch start's
        steps.append((step, b))
    assert steps == list(enumerate(first))[4:]
    assert [s for s, _ in again.batches(0, range(3))] == [0, 1, 2]  # skipped once only
    again.close()


def test_a_source_with_fewer_batches_than_the_state_covers_ends_the_epoch():
    loop = LoopResume()
    loop.take({"metrics": [], "random": {}})
    assert list(loop.batches(0, range(3), 0, 5)) == []
    assert list(loop.batches(1, range(2), 0, 5)) == [(0, 0), (1, 1)]


def _model():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(BACKEND != "torch", reason="one backend: the torch DataLoader of the torch guide's loop")
def test_sigterm_at_a_random_batch_of_a_real_process_resumes_bit_identically(tmp_path, references):
    after = random.Random(3).randrange(STEPS + 1, EPOCHS * STEPS - 2)  # past epoch 1
    run, out = tmp_path / "run", tmp_path / "out.npz"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    args = [sys.executable, WORKER, str(run), str(out), "dataloader"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = 0
    for line in proc.stdout:
        seen += line.startswith("BATCH")
        if seen > after:
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 143, proc.stderr.read()[-3000:]
    last = run_json(run)["last"]
    assert last["step"] is not None  # stopped mid-epoch
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    with np.load(out) as f:
        assert_identical({k: f[k] for k in f.files}, references["dataloader"], f"SIGTERM at {last}")
