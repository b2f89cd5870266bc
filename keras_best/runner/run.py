"""The run executor: carries out the policy's plans in one run directory.

`Run` owns the lock, crash recovery, resume, transactions and their rollback,
and the SavedModel export at the end. It decides nothing: whether to save,
under which name, what to evict and whether the run stops all come from
`keras_best.core.policy`; the front ends read metrics, call `update()` and speak.
What `Run` promises: the state it holds (best, kept files, history) is the
state the run directory holds once pending writes are done; a failed write
rolls both back to the update before; nothing is recorded until the files it
names are written; host memory stays within `max_host_memory` (`runner.memory`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping, Sequence

from keras_best.core.formats import ORBAX, WEIGHTS
from keras_best.core.names import SHARDED_STATE, shared_tmp_path
from keras_best.core.objective import Objective, Score
from keras_best.core.options import Options
from keras_best.core.paths import RunPath
from keras_best.core.policy import Plan, Policy, RunState
from keras_best.engines import engine_for
from keras_best.runner import distribute, loggers
from keras_best.runner.budget import DiskUsage
from keras_best.runner.export import export_best
from keras_best.runner.failures import SaveError, save_error_message
from keras_best.runner.memory import HostMemory
from keras_best.runner.resume import resume
from keras_best.runner.stale import StaleWatch
from keras_best.storage import aside, files, manifest
from keras_best.storage.buffers import HostBuffers, Streamed
from keras_best.storage.files import prepare_directory
from keras_best.storage.lock import DirectoryLock
from keras_best.storage.manifest import RunRecord
from keras_best.storage.writer import Transaction, Writer
from keras_best.training_state import objects, parts, rng, sharded, state
from keras_best.training_state.parts import architecture_of


@dataclasses.dataclass(frozen=True)
class _Undo:
    """What `Run` held before one update: given back when its write fails."""

    state: RunState
    history_len: int
    history_bytes: int
    unwritten_from: int
    best_weights: Any
    architecture: str | None
    epoch: int | None


class Run:
    """Lock, recovery, resume, transactions and export for one run directory."""

    def __init__(self, path: RunPath, options: Options, objective: Objective, save_format: str) -> None:
        self.path, self.directory = path, path.directory
        self.options, self.objective = options, objective
        self.buffers = HostBuffers()  # host copies reused from one save to the next
        self.engine = engine_for(WEIGHTS if options.export_at_finish else save_format, path.template,
                                 self.buffers, options.max_shard_size)
        self.sharded_state = self.engine.format == ORBAX  # training states saved through Orbax too
        self.policy = Policy(options, objective, state_suffix=SHARDED_STATE if self.sharded_state else ".h5")
        self.state = RunState()
        self.history: list[dict[str, Any]] = []
        self.history_bytes = 0
        self.unwritten_from = 0  # history[unwritten_from:] is not in the history file yet
        self.best_weights: list[Any] | None = None  # kept only where `memory.keeps_best` says so
        self.architecture: str | None = None
        self.initial_epoch = 0
        self.resumed = False  # whether open() continued a recorded run
        self.initial_step = 0
        self.random_before: tuple[Any, Any] | None = None  # (model, random state) before a resume
        self.tracked: list[tuple[str, Any]] = []  # the other optimizers the model tracks
        self.front_parts: Sequence[Any] = ()  # parts the front end adds (fit(): its position, its callbacks)
        objects.check(options.state)  # refuses at construction what cannot be saved
        self.chief = distribute.is_chief()
        self.writer = Writer(self.directory, enabled=self.chief, background=options.async_save)
        self.stale = StaleWatch(jax_only=True)
        self.memory = HostMemory(options.max_host_memory, self.writer, self.chief,
                                 self.engine.load if self.engine.format == ORBAX else None)
        self.disk = DiskUsage(options.max_disk, self.directory, self.writer)
        self.lock = None
        prepare_directory(self.directory, options.storage_options, create=self.chief)  # errors before training
        if self.chief and not files.is_remote(self.directory):
            self.lock = DirectoryLock(self.directory, on_takeover=self._taken_over)

    # -------------------------------------------------------------- start
    def open(self, model: Any, optimizer: Any, epochs: int | None = None, front_parts: Sequence[Any] = ()) -> None:
        """Take the lock, finish a crashed transaction, resume if asked (the
        lock is released again when any of it fails). `epochs`: where training
        will end, when known (`fit()`): see `train_until`. `front_parts`: state
        parts of the front end, saved and resumed with the others."""
        self.front_parts = tuple(front_parts)
        self.acquire()
        try:
            distribute.check_layout(model, self.engine.format)
            self.tracked = objects.tracked_optimizers(model) if self.options.keeps_state else []
            self._open(model, optimizer, epochs)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _open(self, model: Any, optimizer: Any, epochs: int | None) -> None:
        record = self._recover() if self.chief else None
        if self.engine.format == ORBAX:  # every process reads the run directory: once the chief recovered it
            distribute.barrier(model)
        if not self.has_run() or (self.chief and record is None):
            return
        if self.options.resume:
            resume(self, record or RunRecord.read(self.directory), model, optimizer, epochs)
        elif self.chief:  # its files move aside, never deleted (`keras_best.storage.aside`)
            best, moved = record.best, aside.move_aside(self.directory, record)
            warnings.warn(
                f"{self.directory} already holds a keras-best run (best epoch "
                f"{None if best is None else best.epoch + 1}, {record.monitor}="
                f"{None if best is None else best.value}). Starting a new run there; the old run's files "
                f"were moved to {files.join(self.directory, moved)} (load_best and inspect read it there). "
                "Pass resume=True to continue a run instead.", stacklevel=4)

    def _taken_over(self) -> None:
        """A newer tracker of this process takes this run directory: let this
        one's writes finish first, then write nothing more."""
        self.writer.flush()
        error = self.take_write_error()
        self.writer.enabled = False
        if error is not None:
            warnings.warn(f"The previous tracker of {self.directory!r}, replaced by a new one, had a "
                          f"failed save: {error}", stacklevel=5)

    def has_run(self) -> bool:
        return files.exists(manifest.manifest_path(self.directory))

    def acquire(self) -> None:
        if self.lock is not None and not self.lock.held:
            self.lock.acquire()

    def _recover(self) -> RunRecord | None:
        """Finish a transaction a crash interrupted; remove stray temp files."""
        if self.has_run():
            try:
                return manifest.roll_forward(self.directory, RunRecord.read(self.directory))
            except manifest.ManifestError as e:
                if self.options.resume:
                    raise manifest.ManifestError(
                        f"{e} Cannot resume from it: pass resume=False to start a new run in that "
                        "directory (the record is replaced at the first save), or choose another directory."
                    ) from e
                warnings.warn(f"{e} Starting a new run there: the record is replaced at the first save, and "
                              "nothing it names is touched.", stacklevel=5)
                manifest.remove_tmp_files(self.directory)
                return None
        manifest.remove_tmp_files(self.directory)
        return None

    def state_parts(self, model: Any, optimizer: Any, random: bool, swapped: Sequence = ()) -> list[Any]:
        """The parts of the training state (`keras_best.training_state`): the model, its optimizer,
        the other optimizers it tracks, the `state=` objects, the front end's parts (`fit()`'s position
        and other callbacks) and (if `random`) the random state."""
        extra = [*objects.parts_for(model, optimizer, self.tracked, self.options.state), *self.front_parts]
        return parts.for_model(model, optimizer, random=random, swapped=swapped, extra=extra)

    def train_until(self, epochs: int) -> None:
        """Training goes on up to `epochs` (`BestWeightsTracker.epochs`, `fit()`): when that
        trains nothing, the random state a resume restored goes back to what it was."""
        held, self.random_before = self.random_before, None
        if held is not None and self.initial_epoch >= epochs:
            rng.restore(*held)

    def adopt(self, record: RunRecord, directory: str | None = None) -> None:
        """Continue from `record`'s decisions (read from `directory`'s own
        history file; without one, the history is written anew at the next update)."""
        self.objective.load_modes(record.mode)
        self.state = dataclasses.replace(record.state, at=None)
        self.history = record.history(directory) if directory else [dict(h) for h in record.legacy_history or ()]
        mine = directory is not None and record.legacy_history is None
        self.history_bytes = record.history_bytes if mine else 0
        self.unwritten_from = len(self.history) if mine else 0
        self.architecture = record.architecture or self.architecture

    # ------------------------------------------------------------- update
    def update(self, model: Any, optimizer: Any, epoch: int, step: int | None, values: Mapping[str, float],
               score: Score | None, swapped: Sequence[tuple[Any, Any]] = ()) -> Plan:
        """Plan one update with the policy and carry it out; return the plan. `swapped`: the EMA
        (variable, average) pairs whose values trade places in this update's training state."""
        parts.require_built(model)
        if score is not None and self.chief:
            self.stale.check(model, values)  # JAX: trained values never written back into the model
        try:
            self.acquire()
        except OSError as e:  # e.g. a read-only directory: the lock file cannot be made
            raise SaveError(self._save_error_message(epoch, e)) from e
        self.raise_write_error()
        self._check_directory(epoch)
        suffix = ".weights.h5" if self.options.export_at_finish else ""  # exported at finish()
        self.state = self.disk.sized(self.state)
        plan = self.policy.plan(self.state, epoch, step, score, values,
                                lambda v: self.path.format(epoch, step, values, v) + suffix,
                                self.disk.estimate(model, optimizer))
        self.disk.warn(plan)
        undo = _Undo(self.state, len(self.history), self.history_bytes, self.unwritten_from,
                     self.best_weights, self.architecture, epoch)
        try:
            self._carry_out(plan, model, optimizer, epoch, step, undo, swapped)
        except BaseException as e:
            self._undo(undo)
            if isinstance(e, OSError) and not isinstance(e, SaveError):
                raise SaveError(self._save_error_message(epoch, e)) from e
            raise
        loggers.after_update(self.options.loggers if self.chief else (), self.directory, self.state.best_record(),
                             self.objective.name, (epoch, step))
        return plan

    def _carry_out(self, plan: Plan, model: Any, optimizer: Any, epoch: int, step: int | None, undo: _Undo,
                   swapped: Sequence[tuple[Any, Any]]) -> None:
        txn = Transaction(record=None, rollback=undo, deletes=list(plan.evict) + list(plan.drop_states),
                          sizes=self.disk.measured)
        reuse, snapshot, copies = None, None, []
        # Built first (optimizers not built yet): the best file holds what the state does.
        state_parts = plan.write_state and self.state_parts(model, optimizer, self.options.save_random_state, swapped)
        saves = plan.save_as is not None or plan.write_state
        stream = saves and self.memory.make_room(self.buffers, model, optimizer, state_parts or ())
        if plan.save_as is not None:
            snapshot = self.engine.snapshot(model, stream=stream)  # on every worker: may be collective
            reuse = getattr(snapshot, "by_variable", None)  # its host copies, shared below
            copies.extend((reuse or {}).values())
            collective = snapshot.collective  # every process writes its part (Orbax): the same temp name
            token = shared_tmp_path("", f"{plan.save_as}|{len(self.history)}") if collective else files.tmp_path("")
            for rel, write in snapshot.files(plan.save_as):  # one unit: renamed in one transaction
                tmp_rel = token + rel
                if collective:  # started now on every process; the chief's writer waits for it
                    snapshot.start(files.join(self.directory, tmp_rel))
                    txn.started.append(tmp_rel)
                txn.done.append((tmp_rel, lambda committed: snapshot.release()))
                self._add_write(txn, tmp_rel, write, snapshot.detached)
                txn.renames.append((tmp_rel, rel))
        replaced = None
        if plan.keep_host_copy and self.memory.keeps_best(model):
            replaced, self.best_weights = self.best_weights, self.buffers.copies(model.weights, reuse)
            copies.extend(self.best_weights)
        if plan.write_state:
            taken = (sharded.snapshot(state_parts, self.buffers, epoch, step, self.directory) if self.sharded_state
                     else state.snapshot(state_parts, Streamed() if stream else self.buffers, reuse, epoch, step))
            taken.add_to(txn, plan.state.last["path"], (lambda tmp, write: self._add_write(txn, tmp, write, False))
                         if stream else None)
            copies.extend(taken.arrays)
        if replaced is not None:
            # The previous best weights, once this best is recorded (a failed
            # write brings them back: see `_undo`).
            txn.done.append((None, lambda committed: committed and self.buffers.release(replaced)))
        # Keep free, between saves, the set this update took: the next update copies into it.
        self.buffers.allow(sum(getattr(a, "nbytes", 0) for a in {id(a): a for a in copies}.values()))
        self.architecture = self.architecture or architecture_of(model)
        self.state = plan.state
        self.history.append(plan.entry)
        written = self.unwritten_from
        txn.history = manifest.encode_history(self.history[written:])
        txn.history_head = lambda: manifest.encode_history(self.history[:written])
        self.history_bytes += len(txn.history)
        self.unwritten_from = len(self.history)
        txn.record = self.record()
        self.writer.submit(txn)

    def _check_directory(self, epoch: int) -> None:
        """Refuse to save into a removed run directory; start a new record in
        one that was removed and created again (its files went with it)."""
        if self.lock is None:
            return
        if not files.isdir(self.directory):
            raise SaveError(self._save_error_message(epoch, FileNotFoundError(self.directory)))
        if not self.lock.stale():
            return
        self.lock.release()
        self.lock.acquire()
        lost = self.state.best_record()
        self.state = RunState(at=self.state.at)
        self.history_bytes = self.unwritten_from = 0  # the whole history is written anew
        self.best_weights = None
        warnings.warn(
            f"The run directory {self.directory!r} was removed and created again: the files saved "
            f"there went with it{f' (the best, epoch {lost.epoch + 1})' if lost else ''}. Continuing "
            "with a new record there: the next improvement is saved as the best; the history is kept.",
            stacklevel=4,
        )

    def _add_write(self, txn: Transaction, tmp_rel: str, write: Callable[[str], None], detached: bool) -> None:
        """Have `write(path)` make the temp file `tmp_rel`: by the writer (in its
        thread with `async_save`) when it holds host copies only, else now."""
        if detached:
            txn.jobs.append((write, tmp_rel))  # dropped on non-chief workers (nothing to read)
        else:
            distribute.write_durably(files.join(self.directory, tmp_rel), write, self.chief)

    def record(self) -> RunRecord:
        """The record of the run as this process holds it."""
        return RunRecord(
            monitor=self.objective.monitor_spec,
            mode=self.objective.mode_spec,
            require=self.objective.require_spec,
            save_format=self.engine.format,
            filepath=self.path.template,
            architecture=self.architecture,
            state=self.state,
            options=self.options.recorded(),
            history_count=len(self.history),
            history_bytes=self.history_bytes,
        )

    # ----------------------------------------------------------- failures
    def _undo(self, undo: _Undo) -> None:
        self.state = undo.state
        del self.history[undo.history_len:]
        self.history_bytes, self.unwritten_from = undo.history_bytes, undo.unwritten_from
        self.best_weights, self.architecture = undo.best_weights, undo.architecture

    def take_write_error(self) -> SaveError | None:
        """A background write's error as a `SaveError`, once; the state rolls
        back to what the run directory holds (the update before)."""
        failed = self.writer.take_error()
        if failed is None:
            return None
        cause, txn = failed
        epoch = None
        if txn.rollback is not None:
            self._undo(txn.rollback)
            epoch = txn.rollback.epoch
        if isinstance(cause, SaveError):
            return cause
        error = SaveError(self._save_error_message(epoch, cause) if epoch is not None else
                          f"Writing into {self.directory!r} failed: {cause!r}.")
        error.__cause__ = cause
        return error

    def raise_write_error(self) -> None:
        error = self.take_write_error()
        if error is not None:
            raise error from error.__cause__

    def _save_error_message(self, epoch: int, error: OSError) -> str:
        return save_error_message(self.directory, self.state.best_record(), self.objective.name, epoch, error)

    # ---------------------------------------------------------------- end
    def finish(self, model: Any, on_restore: Callable[[int, int | None], None] | None = None) -> None:
        """Wait for writes; export and restore if asked; release the lock.
        `on_restore(epoch, step)` is called once the best weights are back."""
        error, restored = None, None
        try:
            self.writer.flush()
            self.engine.wait()  # this process's part of a collective save (Orbax)
            if self.engine.format == ORBAX:  # the chief's renames are done before every process reads the best
                distribute.barrier(model)
            self.buffers.clear()  # written: the free copies go before the export and the restore
            error = self.take_write_error()
            if self.options.export_at_finish and error is None:
                export_best(self, model)
            best = self.state.best_record()
            if self.options.restore_best_weights and self.memory.restore_best(
                    model, self.best_weights, self.buffers,
                    best and self.engine.weights_file(files.join(self.directory, best.path))):
                restored = best
            self.writer.close()
            error = error or self.take_write_error()
        finally:
            if self.lock is not None:
                self.lock.release()
        if on_restore is not None and restored is not None:
            on_restore(restored.epoch, restored.step)
        if error is None:
            loggers.at_finish(self.options.loggers if self.chief else (), self.directory, best, self.objective.name)
        if error is not None:
            raise error from error.__cause__

    def close(self) -> None:
        """Wait for writes and release the lock; no restore, no export."""
        try:
            self.writer.close()
            self.engine.wait()  # this process's part of a collective save (Orbax)
            self.buffers.clear()
            error = self.take_write_error()
        finally:
            if self.lock is not None:
                self.lock.release()
        if error is not None:
            raise error from error.__cause__
