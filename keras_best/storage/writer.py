"""Apply transactions to the run directory (see `journal` for the protocol).

A `Writer` commits each transaction at once (`background=False`) or hands it to
a background thread (`background=True`), so the training loop never waits for
the disk. In the background:

- At most one transaction is being written and at most one waits. A newer
  transaction merges with the waiting one (which has not started): files the
  older one would have written and the newer state no longer names (a best
  file evicted since, an older `keras_best_last.h5`) are never written, and
  their host copies are given back at once (`Transaction.done`, see
  `keras_best.storage.buffers`). So at most two transactions hold snapshots (the one
  being written and the one waiting), however fast improvements come. When the newer state still names a file of the waiting
  transaction (`keep_top_k > 1`) and the newer one brings a snapshot too,
  `submit` waits until the writer has started the older one instead.
- `wait_for` lets the training thread wait for the writer before it takes
  more host copies (`keras_best.runner.memory`: a run holds one save's
  copies by default, so with the default budget no transaction waits while
  another holding copies is written).
- The manifest is written last in each commit, and a merged transaction's
  state is the newer one, which names only files this commit writes or that
  exist already: the manifest never names a file that is not on disk.
- A failed commit is kept (`take_error`); the transactions after it are
  dropped (their state builds on the failed one), and the run directory still
  holds the state before the failed transaction. The tracker rolls its own
  state back to `Transaction.rollback` and raises from its next call.
- `flush()` waits for everything submitted; at interpreter exit every writer
  is flushed (an `atexit` hook), so a script that forgets `finish()` still
  leaves its last best on disk.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import sys
import threading
import traceback
import weakref
from typing import Callable

from keras_best.storage import files
from keras_best.storage.journal import Transaction, commit
from keras_best.storage.record import RunRecord

IDLE_EXIT_S = 5.0  # a background thread with nothing to do exits after this
WRITER_NICENESS = 10  # the writer thread's nice value, above the training threads'


class Writer:
    """Commits transactions for one run directory, at once or in the background.

    Only the chief of a distributed job writes: other workers are given a
    writer with `enabled=False`, which drops every transaction.
    """

    def __init__(self, directory: str, enabled: bool = True, background: bool = False) -> None:
        self.directory = directory
        self.enabled = enabled
        self.background = background
        self._cond = threading.Condition()
        self._pending: Transaction | None = None
        self._writing = False
        self._error: tuple[BaseException, Transaction] | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.before: RunRecord | None = None  # the last record committed (None: not known)
        self.submitted = 0  # transactions submitted, and how many of the first are durable (committed)
        self.durable = 0
        if background and enabled:
            _register(self)

    def submit(self, txn: Transaction) -> None:
        """Commit `txn` now, or queue it for the background thread.

        In the background, a transaction submitted after a failed one is
        dropped (see `take_error`).
        """
        if not self.enabled or not self.background:
            self.submitted += 1
        if not self.enabled:
            txn.over(True)  # another process writes: as if committed
            self.durable = self.submitted
            return
        if not self.background:
            committed = False
            try:
                self._commit(txn)
                committed = True
                self.durable = self.submitted
            finally:
                txn.over(committed)
            return
        with self._cond:
            self._closing = False
            while True:
                if self._error is not None:
                    _discard(self.directory, txn)
                    return
                if self._pending is None:
                    self._pending = txn
                    break
                merged = merge(self._pending, txn)
                if merged is not None:
                    self._pending = merged
                    break
                self._cond.wait()  # the waiting one keeps a snapshot we need: let it start
            self.submitted += 1  # with the lock held: the thread reads it with the pending transaction
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="keras-best-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _commit(self, txn: Transaction) -> None:
        before, self.before = self.before, None  # not known while a commit may fail half-way
        commit(self.directory, txn, before)
        self.before = txn.record

    def wait_for(self, ready: Callable[[], bool], poll_s: float = 0.05) -> None:
        """Wait until `ready()`, or until nothing is queued or being written
        (the back-pressure of a bounded host memory: `ready` is polled each
        time a transaction is over, and every `poll_s` seconds)."""
        with self._cond:
            while (self._pending is not None or self._writing) and self._error is None and not ready():
                self._cond.wait(poll_s)

    def flush(self) -> None:
        """Wait until every submitted transaction is committed (or failed)."""
        with self._cond:
            while self._pending is not None or self._writing:
                self._cond.wait()

    def take_error(self) -> tuple[BaseException, Transaction] | None:
        """The error of a failed background commit and its transaction, once;
        `None` when there was none. Submitting works again afterwards."""
        with self._cond:
            error, self._error = self._error, None
            return error

    def close(self) -> None:
        """Wait for everything submitted, then end the background thread now
        (instead of after `IDLE_EXIT_S` idle seconds). The writer stays usable:
        a later `submit` starts a new thread."""
        self.flush()
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self.enabled and files.is_remote(self.directory):
            with contextlib.suppress(OSError):  # best effort: the next start removes them too
                files.remove_leftovers(self.directory)

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                while self._pending is None:
                    if self._closing or (not self._cond.wait(IDLE_EXIT_S) and self._pending is None):
                        self._thread = None  # a later submit starts a new one
                        return
                txn, self._pending = self._pending, None
                covers = self.submitted  # a merged transaction holds every one submitted so far
                self._writing = True
                self._cond.notify_all()
            committed = False
            try:
                self._commit(txn)
                committed = True
                self.durable = covers
            except BaseException as e:  # noqa: BLE001 - kept, raised by the caller later
                traceback.clear_frames(e.__traceback__)  # their locals hold the snapshot
                with self._cond:
                    self._error = (e, dataclasses.replace(txn, jobs=[], done=[]))
                    if self._pending is not None:
                        _discard(self.directory, self._pending)
                        self._pending = None
            finally:
                txn.over(committed)
                txn = None  # free its snapshot now, not when the next one arrives
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()


def _lower_priority() -> None:
    """Run this (writer) thread at a lower CPU priority than training, so a
    write uses idle cycles instead of taking them from the training threads
    (Linux, where a thread has its own nice value; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICENESS))
    except (AttributeError, OSError):
        pass


def merge(older: Transaction, newer: Transaction) -> Transaction | None:
    """One transaction with the effect of committing `older` then `newer`,
    without writing what `newer` makes obsolete; `None` when both would keep a
    snapshot (the caller waits instead, to bound memory), or when `newer` makes
    obsolete a job of `older` that has started (`Transaction.started`).

    A file of `older` is obsolete when `newer` writes the same name or its
    state (the manifest after both) does not name it (a shard: its set's name).
    """
    rewritten = {final for _, final in newer.renames}
    named = newer.record.named_files()
    job_tmps = {tmp for _, tmp in older.jobs}
    sets = [final for _, final in older.renames if files.is_set_name(final)]
    kept_renames, kept_tmps, dropped_on_disk = [], set(), []
    for tmp, final in older.renames:
        name = next((s for s in sets if files.is_shard_of(final, s)), final)
        if name in rewritten or name not in named:
            if tmp not in job_tmps:
                dropped_on_disk.append(tmp)  # written already, in the caller's thread
        else:
            kept_renames.append((tmp, final))
            kept_tmps.add(tmp)
    renamed_tmps = {tmp for tmp, _ in older.renames}
    kept_jobs = [j for j in older.jobs if j[1] in kept_tmps or j[1] not in renamed_tmps]
    dropped_jobs = {tmp for _, tmp in older.jobs} - {tmp for _, tmp in kept_jobs}
    if (kept_jobs and newer.jobs) or dropped_jobs.intersection(older.started):
        return None
    for tmp, fn in older.done:
        if tmp in dropped_jobs:
            fn(False)  # never written: its host copies are free now
    for tmp, fn in newer.done:
        if tmp is None:
            fn(True)  # nothing rolls back to the state between the two any more
    deletes = []
    for rel in [d for d in older.deletes if d not in rewritten] + newer.deletes + dropped_on_disk:
        if rel not in deletes:
            deletes.append(rel)
    return Transaction(
        record=newer.record,
        jobs=kept_jobs + list(newer.jobs),
        renames=kept_renames + list(newer.renames),
        deletes=deletes,
        rollback=older.rollback,
        history=older.history + newer.history,
        history_head=older.history_head,
        done=[d for d in older.done if d[0] not in dropped_jobs] + [d for d in newer.done if d[0] is not None],
        sizes=newer.sizes,
        started=[t for t in older.started if t in kept_tmps] + list(newer.started),
    )


def _discard(directory: str, txn: Transaction) -> None:
    """Forget `txn`: remove the temp files already written for it."""
    job_tmps = {tmp for _, tmp in txn.jobs}
    for tmp, _ in txn.renames:
        if tmp not in job_tmps:
            files.remove(files.join(directory, tmp), missing_ok=True)
    txn.over(False)


_WRITERS: weakref.WeakSet = weakref.WeakSet()
_REGISTERED: list[bool] = []


def _register(writer: Writer) -> None:
    _WRITERS.add(writer)
    if not _REGISTERED:
        # Registered after TensorFlow is imported, so it runs before TF's own
        # exit hooks (atexit runs last-registered first).
        atexit.register(flush_all)
        _REGISTERED.append(True)


def flush_all() -> None:
    """Wait for every background writer (run at interpreter exit); report
    errors nobody took."""
    for writer in list(_WRITERS):
        writer.flush()
        failed = writer.take_error()
        if failed is not None:
            sys.stderr.write(
                f"keras-best: a background save into {writer.directory!r} failed and was "
                f"never reported (call tracker.finish()): {failed[0]!r}. The previous best "
                "there is intact.\n"
            )
