"""Preemption: SIGTERM (or SIGUSR1) at any instant saves the training state at the
end of the batch, exits with 128 + signal, and a rerun ends bit-identical to an
uninterrupted run (custom loop); fit(): tests/test_fit_resume.py."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker, Preempted
from keras_best.runner.preemption import signals_of
from tests.conftest import make_model, run_json
from tests.workers.preempt_worker import BATCH, EPOCHS, SAMPLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "preempt_worker.py")
INSTANTS = int(os.environ.get("KB_PREEMPT_INSTANTS", "3"))
STEPS = SAMPLES // BATCH


class Worker:
    """The worker process, its stdout lines as they come."""

    def __init__(self, run_dir, out, how="loop", signals="auto"):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen([sys.executable, WORKER, str(run_dir), str(out), how, signals],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.strip())
                self.changed.notify_all()
        with self.changed:
            self.lines.append("EOF")
            self.changed.notify_all()

    def wait_for(self, predicate, timeout=120):
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.lines), timeout), self.lines[-5:]

    def finish(self, timeout=120):
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.proc.stderr.read()


def batches_seen(lines):
    return sum(1 for x in lines if x.startswith("BATCH"))


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its final arrays and its record."""
    d = tmp_path_factory.mktemp("reference")
    rc, err = Worker(d / "run", d / "out.npz").finish()
    assert rc == 0, err
    return _arrays(d / "out.npz"), run_json(d / "run")


def _decisions(record):
    return record["best"], [(k["path"], k["epoch"], k["value"]) for k in record["kept"]], [
        (h["epoch"], h["step"], h["value"], h["improved"], h["saved"]) for h in record["history"]
        if h.get("validated", True)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_at_random_instants_resumes_bit_identically(tmp_path, reference):
    want_arrays, want_record = reference
    rng = random.Random(int(os.environ.get("KB_PREEMPT_SEED", "0")))
    preempted_at = []
    for trial in range(INSTANTS):
        run, out = tmp_path / f"run{trial}", tmp_path / f"out{trial}.npz"
        after = rng.randrange(EPOCHS * STEPS)  # a batch to land in, plus a random part of it
        worker = Worker(run, out)
        worker.wait_for(lambda lines, after=after: batches_seen(lines) > after or "EOF" in lines)
        time.sleep(rng.uniform(0, 0.03))
        worker.proc.send_signal(signal.SIGTERM)
        rc, err = worker.finish()
        assert rc in (128 + signal.SIGTERM, 0), err  # 0: it had finished before the signal
        record = run_json(run)  # never inconsistent: a valid record whatever the instant
        if rc:
            last = record["last"]
            assert not out.exists()
            assert f"BATCH {last['epoch']} {last['step']}" == [x for x in worker.lines if x.startswith("BATCH")][-1]
            preempted_at.append((last["epoch"], last["step"]))
            again = Worker(run, out)
            again.wait_for(lambda lines: any(x.startswith("READY") for x in lines) or "EOF" in lines)
            ready = next(x for x in again.lines if x.startswith("READY"))
            step = last["step"] + 1
            assert ready == (f"READY {last['epoch']} {step}" if step is not None else ready)
            rc, err = again.finish()
            assert rc == 0, err
        got = _arrays(out)
        assert sorted(got) == sorted(want_arrays)
        for key in want_arrays:  # weights, optimizer slots, iterations, best: bit for bit
            np.testing.assert_array_equal(got[key], want_arrays[key], err_msg=f"{key} after {preempted_at}")
        assert _decisions(run_json(run)) == _decisions(want_record)
    print(f"preempted at (epoch, step): {preempted_at}; {len(preempted_at)} of {INSTANTS} resumed bit-identical")
    assert preempted_at, "no signal landed during training"


@pytest.mark.slow
@pytest.mark.backend_neutral  # the same safe point on every backend: `after_batch`
@pytest.mark.timeout(600)
def test_a_loop_over_its_own_batches_stops_at_the_next_batch_with_after_batch(tmp_path):
    # issue 25: in a loop that iterates its own batches a SIGTERM took effect only at update().
    run, out = tmp_path / "run", tmp_path / "out.npz"
    worker = Worker(run, out, how="handloop")
    worker.wait_for(lambda lines: batches_seen(lines) > STEPS + 2 or "EOF" in lines)  # mid-epoch 2
    worker.proc.send_signal(signal.SIGTERM)
    rc, err = worker.finish()
    assert rc == 128 + signal.SIGTERM, err
    assert "keras-best: Preempted by SIGTERM" in err
    last = run_json(run)["last"]
    batches = [x for x in worker.lines if x.startswith("BATCH")]
    assert f"BATCH {last['epoch']} {last['step']}" == batches[-1]  # saved at the batch the signal came in
    again = Worker(run, out, how="handloop")
    rc, err = again.finish()
    assert rc == 0, err
    assert again.lines[0] == f"READY {last['epoch']} {last['step'] + 1}"
    following = (last["epoch"], last["step"] + 1) if last["step"] + 1 < STEPS else (last["epoch"] + 1, 0)
    assert [x for x in again.lines if x.startswith("BATCH")][0] == "BATCH {} {}".format(*following)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fit_saves_the_state_at_the_batch_and_continues_at_the_next_one(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out.npz"
    worker = Worker(run, out, how="fit")
    worker.wait_for(lambda lines: batches_seen(lines) > STEPS + 3 or "EOF" in lines)  # epoch 2, batch 4
    worker.proc.send_signal(signal.SIGTERM)
    rc, err = worker.finish()
    assert rc == 128 + signal.SIGTERM, err
    record = run_json(run)
    epoch, step = record["last"]["epoch"], record["last"]["step"]
    assert epoch >= 1 and step is not None
    rc, err = Worker(run, out, how="fit").finish()
    assert rc == 0, err
    record = run_json(run)
    assert [h["epoch"] for h in record["history"] if h.get("validated", True)] == list(range(EPOCHS))
    got = _arrays(out)
    # The interrupted epoch goes on at the next batch: no batch is trained twice (tests/test_fit_resume.py).
    assert int(got["iterations"]) == EPOCHS * STEPS
    from tests.workers.preempt_worker import build

    model = build()
    model.load_weights(os.path.join(run, record["best"]["path"]))


def _tracker(tmp_path, **options):
    model = make_model()
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), resume=True, optimizer=optimizer,
                              verbose=0, **options)


def test_a_real_signal_in_process_saves_at_the_batch_and_raises_preempted(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    tracker = _tracker(tmp_path, preempt_signals=["SIGUSR1"])
    assert signal.getsignal(signal.SIGUSR1) != before
    seen = []
    with pytest.raises(Preempted) as caught:
        for step, batch in tracker.batches(0, range(10)):
            seen.append(batch)
            if step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)
    assert seen == [0, 1, 2] and caught.value.code == 128 + signal.SIGUSR1
    assert (caught.value.epoch, caught.value.step) == (0, 2)
    assert signal.getsignal(signal.SIGUSR1) == before  # the previous handler is back
    record = run_json(tmp_path)
    assert record["last"] == {"path": "keras_best_last.h5", "epoch": 0, "step": 2}
    again = _tracker(tmp_path, preempt_signals=["SIGUSR1"])
    assert (again.initial_epoch, again.initial_step) == (0, 3)
    assert [b for _, b in again.batches(0, range(10))] == list(range(3, 10))
    again.update(0, {"val_loss": 0.5})
    assert [b for _, b in again.batches(1, range(4))] == [0, 1, 2, 3]  # later epochs start at 0
    again.finish()


def test_the_hand_written_check_then_finish_raises_preempted(tmp_path, capsys):
    tracker = _tracker(tmp_path, preempt_signals="SIGUSR1")  # verbose=0
    tracker.update(0, {"val_loss": 0.5})
    for step in range(5):
        if step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        if tracker.preempted:
            assert tracker.save_state(1, step).endswith("keras_best_last.h5")
            break
    with pytest.raises(Preempted, match=r"Preempted by SIGUSR1: the training state at epoch 2, batch 2 is saved"):
        tracker.finish()
    # announced on stderr whatever `verbose`, so a job's log says why it ended
    assert "keras-best: Preempted by SIGUSR1: the training state at epoch 2, batch 2" in capsys.readouterr().err
    record = run_json(tmp_path)
    assert record["last"]["epoch"] == 1 and record["last"]["step"] == 1 and record["best"]["epoch"] == 0


def test_no_signal_changes_nothing_and_handlers_come_back(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    tracker = _tracker(tmp_path)  # "auto": SIGTERM, since resume=True
    assert signal.getsignal(signal.SIGTERM) != before and not tracker.preempted
    assert [s for s, _ in tracker.batches(0, "abc")] == [0, 1, 2]
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    assert signal.getsignal(signal.SIGTERM) == before
    plain = BestWeightsTracker(make_model(), str(tmp_path / "other" / "b.weights.h5"), verbose=0)
    assert signal.getsignal(signal.SIGTERM) == before  # no training state kept: nothing watched
    plain.finish()


@pytest.mark.parametrize(
    "value, message",
    [
        ("SIGKILL", "SIGKILL cannot be caught by any process"),
        (["SIGTERM", "SIGNOPE"], r'must be "auto", None, or signal names or numbers'),
        (3.5, r"Received: preempt_signals=3.5"),
    ],
)
def test_bad_signals_are_refused_at_construction(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        _tracker(tmp_path, preempt_signals=value)
    assert not (tmp_path / "keras_best.json").exists()


def test_signals_without_a_training_state_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"pass resume=True \(or save_last=True\) too"):
        BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), preempt_signals=["SIGTERM"])
    assert signals_of(None, True) == () and signals_of("auto", False) == ()
    assert signals_of([signal.SIGUSR1, "usr1", int(signal.SIGUSR1)], True) == (signal.SIGUSR1,)


@pytest.mark.backend_neutral  # the signal handlers alone
def test_a_second_signal_ends_the_process_at_once(tmp_path):
    code = (
        "import os, signal, time, keras\n"
        "from keras_best import BestWeightsTracker\n"
        "m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])\n"
        f"t = BestWeightsTracker(m, {str(tmp_path / 'b.weights.h5')!r}, resume=True, verbose=0)\n"
        "print('READY', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)  # noted: the loop would stop at its next batch
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # the second one: as without keras-best
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_a_tracker_made_in_another_thread_warns_and_watches_nothing(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    caught = []

    def make():
        with pytest.warns(UserWarning, match="only when the tracker is created in the main thread"):
            caught.append(_tracker(tmp_path))

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    assert len(caught) == 1 and signal.getsignal(signal.SIGTERM) == before
    caught[0].close()


def test_a_preemption_before_any_batch_writes_nothing(tmp_path):
    tracker = _tracker(tmp_path, preempt_signals=["SIGUSR1"])
    os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.raises(Preempted):
        list(tracker.batches(0, range(3)))
    # A preemption before any batch: nothing to save, nothing written, the directory free again.
    assert tracker.preempted and not (tmp_path / "keras_best.json").exists()
    _tracker(tmp_path).close()
