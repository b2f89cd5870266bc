"""Background writes: the writer's queue (one in flight, one waiting, merges),
errors raised later with the previous best intact, flush at finish() and at
interpreter exit, and the tracker / fit() front ends on top of it.

No timing assertions: a "slow disk" is a job that waits for an event the test
sets, so every interleaving is forced, not hoped for.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import subprocess
import sys
import threading
import weakref

import keras
import numpy as np
import pytest

from keras_best import BestCheckpoint, BestWeightsTracker, SaveError, load_best
from keras_best.core.policy import RunState
from keras_best.core.retention import Record
from keras_best.storage import files, manifest
from keras_best.storage.lock import LOCK_NAME
from keras_best.storage.manifest import RunRecord
from keras_best.storage.writer import Transaction, Writer, merge
from tests.conftest import make_model, run_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 60  # seconds: only reached when something is broken


# ------------------------------------------------------------------ helpers
class Job:
    """A snapshot stand-in: `write(path)` writes `payload`, after `gate` opens."""

    def __init__(self, payload: bytes, gate: threading.Event | None = None, fail: BaseException | None = None):
        self.payload, self.gate, self.fail = payload, gate, fail
        self.started = threading.Event()
        self.calls = 0

    def write(self, path: str) -> None:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        with open(path, "wb") as f:
            f.write(self.payload)


def run_record(kept, last=None, export=None):
    """A record naming `kept` (the first is the best), as the tracker writes it."""
    records = tuple(Record(i, 0.1 * i, p) for i, p in enumerate(kept))
    best_at = (0, None) if kept else None
    engine = {"best": 0.0, "best_epoch": 0, "wait": 0} if kept else None
    return RunRecord(monitor="val_loss", mode="min", state=RunState(
        engine=engine, kept=records, best_at=best_at, export=export,
        last=None if last is None else {"path": last, "epoch": 0, "step": None}))


def save_txn(directory, name, job, kept, deletes=(), rollback=None):
    """A transaction as the tracker makes it: write `name`, name `kept`."""
    tmp = files.tmp_path(name)
    return Transaction(
        record=run_record(kept),
        jobs=[(job.write, tmp)], renames=[(tmp, name)], deletes=list(deletes), rollback=rollback,
    )


def record_txn(kept, rollback=None):
    return Transaction(record=run_record(kept), rollback=rollback)


def listing(directory):
    return sorted(n for n in os.listdir(directory) if n not in (manifest.MANIFEST_NAME, manifest.HISTORY_NAME, LOCK_NAME))


def recorded(directory):
    return [r["path"] for r in run_json(str(directory))["kept"]]


@pytest.fixture
def writer(tmp_path):
    w = Writer(str(tmp_path), background=True)
    yield w
    w.flush()


# ------------------------------------------------------------- the queue
def test_submit_returns_before_the_write_and_flush_waits(tmp_path, writer):
    gate = threading.Event()
    job = Job(b"a", gate)
    writer.submit(save_txn(tmp_path, "a.bin", job, ["a.bin"]))
    assert job.started.wait(WAIT)
    flushing = threading.Thread(target=writer.flush)
    flushing.start()
    flushing.join(0.2)
    assert flushing.is_alive() and not os.path.exists(tmp_path / "a.bin")  # still writing: flush waits
    gate.set()
    flushing.join(WAIT)
    writer.flush()
    assert not flushing.is_alive() and (tmp_path / "a.bin").read_bytes() == b"a"
    assert recorded(tmp_path) == ["a.bin"]


def test_a_newer_save_replaces_a_waiting_one_which_is_never_written(tmp_path, writer):
    gate = threading.Event()
    first, second, third = Job(b"1", gate), Job(b"2"), Job(b"3")
    writer.submit(save_txn(tmp_path, "e1.bin", first, ["e1.bin"]))
    assert first.started.wait(WAIT)  # in flight, blocked
    writer.submit(save_txn(tmp_path, "e2.bin", second, ["e2.bin"], deletes=["e1.bin"]))  # waits
    writer.submit(save_txn(tmp_path, "e3.bin", third, ["e3.bin"], deletes=["e2.bin"]))  # replaces it
    gate.set()
    writer.flush()
    assert second.calls == 0 and third.calls == 1
    assert listing(tmp_path) == ["e3.bin"] and recorded(tmp_path) == ["e3.bin"]


def test_a_replaced_snapshot_is_freed_at_once(tmp_path, writer):
    gate = threading.Event()
    blocker = Job(b"0", gate)
    writer.submit(save_txn(tmp_path, "best.bin", blocker, ["best.bin"]))
    assert blocker.started.wait(WAIT)
    waiting = Job(b"1")
    alive = weakref.ref(waiting)
    writer.submit(save_txn(tmp_path, "best.bin", waiting, ["best.bin"]))
    del waiting
    writer.submit(save_txn(tmp_path, "best.bin", Job(b"2"), ["best.bin"]))
    gc.collect()
    assert alive() is None, "a replaced snapshot must not stay in memory"
    gate.set()
    writer.flush()
    assert (tmp_path / "best.bin").read_bytes() == b"2"


def test_a_written_snapshot_is_freed_at_once(tmp_path, writer):
    job = Job(b"a")
    alive = weakref.ref(job)
    writer.submit(save_txn(tmp_path, "a.bin", job, ["a.bin"]))
    del job
    writer.flush()
    gc.collect()
    assert alive() is None, "the writer must not hold the last snapshot while idle"


def test_record_only_updates_merge_and_keep_the_waiting_file(tmp_path, writer):
    gate = threading.Event()
    blocker, waiting = Job(b"0", gate), Job(b"1")
    writer.submit(save_txn(tmp_path, "e0.bin", blocker, ["e0.bin"]))
    assert blocker.started.wait(WAIT)
    writer.submit(save_txn(tmp_path, "e1.bin", waiting, ["e1.bin", "e0.bin"]))
    for _ in range(5):  # epochs that did not improve: the record only
        writer.submit(record_txn(["e1.bin", "e0.bin"]))
    gate.set()
    writer.flush()
    assert waiting.calls == 1
    assert listing(tmp_path) == ["e0.bin", "e1.bin"] and recorded(tmp_path) == ["e1.bin", "e0.bin"]


def test_two_snapshots_that_must_both_be_kept_make_submit_wait(tmp_path, writer):
    """keep_top_k > 1: the newer record still names the waiting file, so the
    newer snapshot is not queued beside it (memory stays at two snapshots)."""
    gate = threading.Event()
    blocker, waiting, newest = Job(b"0", gate), Job(b"1"), Job(b"2")
    writer.submit(save_txn(tmp_path, "e0.bin", blocker, ["e0.bin"]))
    assert blocker.started.wait(WAIT)
    writer.submit(save_txn(tmp_path, "e1.bin", waiting, ["e1.bin", "e0.bin"]))
    done = threading.Event()

    def submit_newest():
        writer.submit(save_txn(tmp_path, "e2.bin", newest, ["e2.bin", "e1.bin", "e0.bin"]))
        done.set()

    thread = threading.Thread(target=submit_newest)
    thread.start()
    assert not done.wait(0.3), "submit must wait while two snapshots are queued"
    gate.set()
    thread.join(WAIT)
    assert done.is_set()
    writer.flush()
    assert (waiting.calls, newest.calls) == (1, 1)
    assert listing(tmp_path) == ["e0.bin", "e1.bin", "e2.bin"]
    assert recorded(tmp_path) == ["e2.bin", "e1.bin", "e0.bin"]


@pytest.mark.parametrize(
    "older_final,newer,kept_job",
    [
        ("a", dict(renames=["a"], kept=["a"]), False),  # rewritten by the newer one
        ("a", dict(renames=["b"], kept=["b"], deletes=["a"]), False),  # evicted since
        ("a", dict(renames=["b"], kept=["b", "a"]), True),  # still named: needed
        ("a", dict(renames=[], kept=["a"]), True),  # the record only
        ("a", dict(renames=[], kept=[]), False),  # named by nobody
    ],
)
@pytest.mark.parametrize("started", [False, True])
def test_merge_rules(older_final, newer, kept_job, started):
    older = Transaction(record=run_record([older_final]), jobs=[(print, "t-" + older_final)],
                        renames=[("t-" + older_final, older_final)], deletes=["old"], rollback="older",
                        started=["t-" + older_final] if started else [])
    txn = Transaction(
        record=run_record(newer["kept"]),
        jobs=[(print, "t2-" + r) for r in newer["renames"]],
        renames=[("t2-" + r, r) for r in newer["renames"]],
        deletes=newer.get("deletes", []), rollback="newer",
    )
    merged = merge(older, txn)
    if (kept_job and txn.jobs) or (started and not kept_job):
        assert merged is None  # both hold a snapshot; or a started write (Orbax's) would be left half-made
        return
    assert merged.record is txn.record and merged.rollback == "older"
    assert (("t-" + older_final) in [t for _, t in merged.jobs]) == kept_job
    assert merged.started == (["t-" + older_final] if started else [])
    assert "old" in merged.deletes
    assert merged.record.named_files() >= {final for _, final in merged.renames}


def test_named_files_reads_every_reference():
    assert run_record(["a", "b"], last="l", export="x").named_files() == {"a", "b", "l", "x"}
    assert run_record([]).named_files() == set()


# ------------------------------------------------------------------ errors
def test_a_failed_write_is_kept_and_what_came_after_it_is_dropped(tmp_path, writer):
    writer.submit(save_txn(tmp_path, "e0.bin", Job(b"0"), ["e0.bin"], rollback="r0"))
    writer.flush()
    gate = threading.Event()
    failing = Job(b"1", gate, fail=OSError(28, "No space left on device"))
    later = Job(b"2")
    writer.submit(save_txn(tmp_path, "e1.bin", failing, ["e1.bin"], deletes=["e0.bin"], rollback="r1"))
    assert failing.started.wait(WAIT)
    writer.submit(save_txn(tmp_path, "e2.bin", later, ["e2.bin"], deletes=["e1.bin"], rollback="r2"))
    gate.set()
    writer.flush()
    error, txn = writer.take_error()
    assert isinstance(error, OSError) and "No space" in str(error) and txn.rollback == "r1"
    assert later.calls == 0
    assert listing(tmp_path) == ["e0.bin"] and recorded(tmp_path) == ["e0.bin"]  # previous state
    assert writer.take_error() is None
    writer.submit(save_txn(tmp_path, "e3.bin", Job(b"3"), ["e3.bin"], deletes=["e0.bin"]))
    writer.flush()
    assert listing(tmp_path) == ["e3.bin"]


def test_a_synchronous_writer_raises_at_once(tmp_path):
    writer = Writer(str(tmp_path), background=False)
    with pytest.raises(OSError, match="No space"):
        writer.submit(save_txn(tmp_path, "a.bin", Job(b"a", fail=OSError(28, "No space left")), ["a.bin"]))
    assert listing(tmp_path) == []


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = Writer(str(tmp_path), enabled=False, background=True)
    job = Job(b"a")
    writer.submit(save_txn(tmp_path, "a.bin", job, ["a.bin"]))
    writer.flush()
    assert job.calls == 0 and os.listdir(tmp_path) == []


# ---------------------------------------------------------- the tracker
@contextlib.contextmanager
def slow_disk(tracker, busy_for=None):
    """Hold the tracker's writer busy until the block exits, or for `busy_for`
    seconds (a slow disk)."""
    gate = threading.Event()
    job = Job(b"", gate)
    tmp = files.tmp_path("slow-disk")
    tracker._run.writer.submit(Transaction(record=tracker._run.record(), jobs=[(job.write, tmp)], deletes=[tmp]))
    assert job.started.wait(WAIT)
    timer = None
    if busy_for is not None:
        timer = threading.Timer(busy_for, gate.set)
        timer.start()
    try:
        yield gate
    finally:
        gate.set()
        if timer is not None:
            timer.cancel()


def pattern(model, epoch):
    return [np.full(w.shape, epoch + 1e-3 * i, w.dtype) for i, w in enumerate(model.get_weights())]


def holds_epoch(path, epoch):
    model = make_model()
    model.load_weights(path)
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), pattern(model, epoch)))


def test_updates_do_not_wait_for_a_slow_disk(tmp_path):
    model = make_model()
    # A budget of many saves: updates run ahead of the disk (by default, one save: they wait, test_memory.py).
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.h5"), verbose=0, max_host_memory=1 << 30)
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    with slow_disk(tracker) as gate:
        for epoch, value in [(1, 0.9), (2, 0.95), (3, 0.8), (4, 0.85)]:
            model.set_weights(pattern(model, epoch))
            tracker.update(epoch, {"val_loss": value})
            assert not gate.is_set()  # returned while the disk is still busy
        assert recorded(tmp_path) == ["01.weights.h5"]  # nothing of it on disk yet
    tracker.finish()
    assert listing(tmp_path) == ["04.weights.h5"] and recorded(tmp_path) == ["04.weights.h5"]
    assert holds_epoch(str(tmp_path / "04.weights.h5"), 3)
    assert [h["epoch"] for h in run_json(str(tmp_path))["history"]] == [0, 1, 2, 3, 4]
    rec = load_best(make_model(), tmp_path)
    assert (rec.epoch, rec.value) == (3, 0.8)


@pytest.mark.parametrize("keep_top_k,save_last", [(1, True), (3, False), (None, True)])
def test_directory_and_record_agree_after_a_burst_of_improvements(tmp_path, keep_top_k, save_last):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.h5"), verbose=0,
                                 keep_top_k=keep_top_k, save_last=save_last)
    values = [1.0, 0.9, 0.95, 0.7, 0.8, 0.6, 0.65, 0.5, 0.55, 0.4, 0.45, 0.3]
    # With save_last or top-k, a second snapshot waits for the disk (memory
    # bound): the slow disk frees itself after a while.
    with slow_disk(tracker, busy_for=0.5):
        for epoch, value in enumerate(values[:6]):
            model.set_weights(pattern(model, epoch))
            tracker.update(epoch, {"val_loss": value})
    for epoch, value in enumerate(values[6:], start=6):  # and with the disk free
        model.set_weights(pattern(model, epoch))
        tracker.update(epoch, {"val_loss": value})
    tracker.finish()
    data = run_json(str(tmp_path))
    kept = {r["path"]: r["epoch"] for r in data["kept"]}
    assert listing(tmp_path) == sorted(kept) + (["keras_best_last.h5"] if save_last else [])
    assert all(holds_epoch(str(tmp_path / p), e) for p, e in kept.items())
    assert data["best"]["epoch"] == 11 and len(data["history"]) == len(values)
    if keep_top_k == 3:
        assert sorted(kept.values()) == [9, 10, 11]  # 0.4, 0.45, 0.3


def test_update_waits_rather_than_queue_a_third_snapshot(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.h5"), verbose=0, keep_top_k=3)
    done = threading.Event()

    def train():
        for epoch, value in enumerate([1.0, 0.9, 0.8]):
            model.set_weights(pattern(model, epoch))
            tracker.update(epoch, {"val_loss": value})
        done.set()

    with slow_disk(tracker):
        thread = threading.Thread(target=train)
        thread.start()
        # epoch 0 waits for the disk; epoch 1 (also kept) would be a third copy
        assert not done.wait(0.3)
    thread.join(WAIT)
    assert done.is_set()
    tracker.finish()
    assert listing(tmp_path) == ["01.weights.h5", "02.weights.h5", "03.weights.h5"]


@pytest.fixture
def full_disk(monkeypatch):
    """While on, writing a model file fails as on a full disk (ENOSPC)."""
    real = files.write_h5

    def write(path, fill):
        if path.endswith(".weights.h5"):
            raise OSError(28, "No space left on device")
        real(path, fill)

    class Switch:
        def on(self):
            monkeypatch.setattr(files, "write_h5", write)

        def off(self):
            monkeypatch.setattr(files, "write_h5", real)

    return Switch()


def test_background_error_is_raised_by_the_next_update(tmp_path, full_disk):
    model = make_model()
    run = tmp_path / "run"
    tracker = BestWeightsTracker(model, str(run / "best.weights.h5"), verbose=0)
    model.set_weights(pattern(model, 0))
    tracker.update(0, {"val_loss": 1.0})
    tracker._run.writer.flush()
    full_disk.on()
    model.set_weights(pattern(model, 1))
    tracker.update(1, {"val_loss": 0.5})  # returns: the write fails in the background
    tracker._run.writer.flush()
    with pytest.raises(SaveError, match=r"Epoch 2: could not save: .*No space left on device. The previous "
                                        r"best \(epoch 1, val_loss=1.00000, best.weights.h5\) is intact") as info:
        tracker.update(2, {"val_loss": 0.4})
    assert isinstance(info.value.__cause__, OSError)
    assert (tracker.best, tracker.best_epoch) == (1.0, 0)  # back to what was saved
    assert [h["epoch"] for h in tracker.history] == [0]
    full_disk.off()
    assert tracker.update(1, {"val_loss": 0.5}).improved  # the run goes on
    tracker.finish()
    assert recorded(run) == ["best.weights.h5"] and holds_epoch(str(run / "best.weights.h5"), 1)


def test_a_removed_run_directory_is_refused_at_once_and_a_new_one_starts_a_new_record(tmp_path):
    model = make_model()
    run = tmp_path / "run"
    tracker = BestWeightsTracker(model, str(run / "e{epoch}.weights.h5"), verbose=0, keep_top_k=2)
    model.set_weights(pattern(model, 0))
    tracker.update(0, {"val_loss": 1.0})
    tracker.flush()
    shutil.rmtree(run)
    with pytest.raises(SaveError, match=r"no longer exists \(was it removed\?\). The files saved there "
                                        r"went with it: no best of this run is on disk any more"):
        tracker.update(1, {"val_loss": 0.5})
    os.makedirs(run)
    with pytest.warns(UserWarning, match=r"was removed and created again: the files saved there went with "
                                         r"it \(the best, epoch 1\)"):
        decision = tracker.update(1, {"val_loss": 2.0})  # worse than the lost best: the new best
    assert decision.improved and tracker.best == 2.0 and tracker.best_epoch == 1
    tracker.flush()
    assert recorded(run) == ["e2.weights.h5"] and os.path.exists(run / LOCK_NAME)
    assert tracker._run.lock.held and not tracker._run.lock.stale()
    other = subprocess.run([sys.executable, "-c", f"""
import fcntl, os
fd = os.open({str(run / LOCK_NAME)!r}, os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print("got it")
except OSError:
    print("locked")
"""], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "locked"  # the lock was taken again
    tracker.finish()
    assert [h["epoch"] for h in run_json(run)["history"]] == [0, 1]


def test_flush_waits_and_raises_a_background_error(tmp_path, full_disk):
    model = make_model()
    run = tmp_path / "run"
    tracker = BestWeightsTracker(model, str(run / "best.weights.h5"), verbose=0)
    model.set_weights(pattern(model, 0))
    with slow_disk(tracker) as gate:
        tracker.update(0, {"val_loss": 1.0})
        assert not os.path.exists(run / "best.weights.h5")
        gate.set()
        tracker.flush()
        assert holds_epoch(str(run / "best.weights.h5"), 0) and recorded(run) == ["best.weights.h5"]
    full_disk.on()
    tracker.update(1, {"val_loss": 0.5})
    with pytest.raises(SaveError, match="No space left on device") as info:
        tracker.flush()
    assert isinstance(info.value.__cause__, OSError)
    assert tracker.best == 1.0
    tracker.flush()  # raised once


def test_background_error_is_raised_by_finish_after_restoring_the_best(tmp_path, full_disk):
    model = make_model()
    run = tmp_path / "run"
    tracker = BestWeightsTracker(model, str(run / "best.weights.h5"), verbose=0, restore_best_weights=True)
    model.set_weights(pattern(model, 0))
    tracker.update(0, {"val_loss": 1.0})
    tracker._run.writer.flush()
    full_disk.on()
    model.set_weights(pattern(model, 1))
    tracker.update(1, {"val_loss": 0.5})
    model.set_weights(pattern(model, 2))
    with pytest.raises(SaveError, match="previous best .*intact") as info:
        tracker.finish()
    assert info.value.__cause__ is not None
    assert tracker.best == 1.0
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), pattern(model, 0)))
    assert tracker._run.lock is None or not tracker._run.lock.held


def test_sync_mode_writes_before_update_returns(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0, async_save=False)
    assert not tracker._run.writer.background
    model.set_weights(pattern(model, 0))
    tracker.update(0, {"val_loss": 1.0})
    assert recorded(tmp_path) == ["best.weights.h5"] and holds_epoch(str(tmp_path / "best.weights.h5"), 0)
    tracker.finish()


def test_fit_with_background_writes(tmp_path, data):
    x, y = data
    model = make_model()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    cb = BestCheckpoint(str(tmp_path / "best.weights.h5"), save_best_only=True, monitor="loss",
                        restore_best_weights=True)
    assert cb.tracker.async_save
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[cb])
    fresh = make_model()
    fresh.compile(keras.optimizers.Adam(0.01), "mse")
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(str(tmp_path / "best.weights.h5"))  # stock loader, optimizer included
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights()))
    assert int(fresh.optimizer.iterations.numpy()) > 0
    assert BestCheckpoint(str(tmp_path / "x.weights.h5"), async_save=False).tracker.async_save is False


def test_a_keras_file_is_written_in_the_background(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.keras"), verbose=0)
    model.set_weights(pattern(model, 0))
    with slow_disk(tracker):
        tracker.update(0, {"val_loss": 1.0})
        # Not even under its temp name: the writer is still busy.
        assert not any(n.endswith("best.keras") for n in os.listdir(tmp_path))
        model.set_weights(pattern(model, 1))  # training goes on
    tracker.finish()
    loaded = keras.models.load_model(str(tmp_path / "best.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), pattern(model, 0)))


# ------------------------------------------------------- interpreter exit
EXIT_SCRIPT = r"""
import os, sys, threading, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from keras_best import BestWeightsTracker
from keras_best.storage.lock import LOCK_NAME
from keras_best.storage.writer import Transaction
from tests.conftest import make_model

run = sys.argv[1]
model = make_model()
tracker = BestWeightsTracker(model, os.path.join(run, "best.weights.h5"), verbose=0)
started = threading.Event()

def slow(path):  # a slow disk: still writing when the script ends
    started.set()
    time.sleep(1.0)
    open(path, "wb").close()

tracker._run.writer.submit(Transaction(record=tracker._run.record(), jobs=[(slow, ".kb-tmp-000000000000-slow")],
                                   deletes=[".kb-tmp-000000000000-slow"]))
started.wait()
model.set_weights([w * 0 + 7 for w in model.get_weights()])
tracker.update(0, {"val_loss": 1.0})
print("EXITING", flush=True)  # no finish(): atexit must flush
"""


def test_pending_writes_are_flushed_at_interpreter_exit(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(run)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EXITING" in out.stdout
    data = run_json(run)
    assert data["best"]["path"] == "best.weights.h5"
    model = make_model()
    model.load_weights(str(run / "best.weights.h5"))
    assert all(np.all(w == 7) for w in model.get_weights())
    assert [n for n in os.listdir(run) if files.is_tmp_name(n)] == []



def test_the_console_names_the_saves_still_being_written(tmp_path, capsys):
    # issue 25: after kill -9 the epochs the console had shown as saved were not on disk.
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.h5"), verbose=1, save_best_only=True,
                                 max_host_memory=1 << 30)
    with slow_disk(tracker):
        for epoch, v in enumerate([1.0, 0.9, 0.8]):
            tracker.update(epoch, {"val_loss": v})
        lines = [line for line in capsys.readouterr().out.splitlines() if line]
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".weights.h5")]  # none durable yet
    tracker.flush()
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".weights.h5")) == ["03.weights.h5"]  # the best
    tracker.update(3, {"val_loss": 0.95})
    lines += [line for line in capsys.readouterr().out.splitlines() if line]
    assert [line.split(", saving model to")[0] for line in lines] == [
        "Epoch 1: val_loss improved from inf to 1.00000",
        "Epoch 2: val_loss improved from 1.00000 to 0.90000",
        "Epoch 3: val_loss improved from 0.90000 to 0.80000",
        "Epoch 4: val_loss did not improve from 0.80000",  # every earlier save is on disk: no note
    ]
    assert lines[0].endswith("01.weights.h5")
    assert lines[1].endswith("02.weights.h5 (the save of epoch 1 is still being written)")
    assert lines[2].endswith("03.weights.h5 (the saves of epochs 1, 2 are still being written)")
    tracker.finish()
