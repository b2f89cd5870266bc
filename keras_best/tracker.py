"""`BestWeightsTracker`: keep the best model of a custom training loop."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
import warnings
from typing import Any, Callable, Iterable, Mapping

from keras_best import distribute, files, manifest, retention, savers, state
from keras_best.h5_layout import host_copies
from keras_best.lock import DirectoryLock
from keras_best.metrics import direction_of, read_all
from keras_best.monitor import Decision, Monitor, StopReason
from keras_best.objective import Objective, Score
from keras_best.paths import RunPath, prepare_directory
from keras_best.report import Reporter
from keras_best.retention import Record
from keras_best.writer import Transaction, Writer


class BestWeightsTracker:
    """Keeps the best model of a training loop on disk, and stops early.

    Call `update(epoch, metrics)` once per epoch (or per `step`) with your
    validation metrics; when the monitored value improves the model is saved
    atomically, and `keras_best.json` beside it records the run.

    Args:
        model: the `keras.Model` being trained.
        filepath: where to save. `.weights.h5` saves weights, `.keras` the
            full model, and with `save_format="savedmodel"` a directory gets a
            TensorFlow SavedModel export. May hold `{epoch}` (1-based, as in
            Keras) and any metric key with a format spec, e.g.
            `"runs/exp1/{epoch:03d}-{val_loss:.4f}.weights.h5"`. Its directory is
            the run directory.
        monitor: the key of the metrics passed to `update()` to rank by; or a
            list of keys compared in order (later keys break exact ties of
            earlier ones, each in its own direction); or a callable taking the
            metrics dict and returning a number (see `keras_best.objective`).
        mode: "min", "max" or "auto" (inferred from the name or the Keras
            metric; an error when it cannot be), or one per `monitor` key.
        min_delta: an improvement must beat the best by more than this.
        baseline: initial best; nothing is saved until it is beaten (the same
            as `initial_value_threshold` of `keras.callbacks.ModelCheckpoint`).
        keep_top_k: how many best files to keep (`None`: keep every file
            saved). Above 1, any epoch entering the best k is saved.
        save_best_only: if False, save at every update (as ModelCheckpoint).
        save_last: also keep the latest training state (model, optimizer,
            epoch and tracker state) to resume from.
        patience: stop after this many updates in a row without improvement
            (`None`: never stop).
        start_from_epoch: updates before this epoch never count as patience.
        restore_best_weights: at `finish()`, put the best weights back into
            the model (from memory, no disk read).
        optimizer: the optimizer of a custom loop, saved in the training state
            (defaults to `model.optimizer` when the model is compiled).
        resume: continue the run recorded in the directory: model, optimizer,
            best value, patience counter, kept files and history come back,
            and `initial_epoch` says where to continue. Implies `save_last`.
        save_format: "weights", "keras" or "savedmodel" (default: from the
            file name).
        export_at_finish: with `save_format="savedmodel"`, keep weights while
            training and export the best model once, at `finish()`.
        stop_on_non_finite: stop at once when the monitored value is NaN/inf.
        verbose: 0 silent, 1 one line per decision (as Keras), 2 also evictions.
        require: constraints an epoch must meet to be best or enter the top
            k, e.g. `{"val_recall": (">=", 0.9)}` (ops `>=`, `>`, `<=`, `<`,
            `==`) or a callable `metrics -> bool`. Epochs that break them
            count as not improving for `patience`.
        async_save: write `.weights.h5` files and the record in a background
            thread (default): `update()` only waits for a host copy of the
            weights, and a write error is raised from the next `update()` or
            `finish()` (the previous best stays intact and recorded).
            `finish()` waits for the writes, and so does interpreter exit.
            `False` writes everything before `update()` returns. `.keras` and
            SavedModel files are always written in the training thread. The
            host arrays of a written snapshot are reused by the next one (no
            page faults in the training thread), so one copy of the weights
            stays in host memory between saves; not when `restore_best_weights`
            or `save_last` share them.

    Example:

    ```python
    tracker = BestWeightsTracker(model, "runs/exp1/best.weights.h5",
                                 monitor="val_loss", patience=5)
    for epoch in range(tracker.initial_epoch, 100):
        train_one_epoch()
        decision = tracker.update(epoch, {"val_loss": val_loss_metric})
        if decision.should_stop:
            break
    tracker.finish()
    ```
    """

    def __init__(
        self,
        model: Any,
        filepath: str,
        monitor: str = "val_loss",
        mode: str = "auto",
        min_delta: float = 0.0,
        baseline: float | None = None,
        keep_top_k: int | None = 1,
        save_best_only: bool = True,
        save_last: bool = False,
        patience: int | None = None,
        start_from_epoch: int = 0,
        restore_best_weights: bool = False,
        optimizer: Any = None,
        resume: bool = False,
        save_format: str | None = None,
        export_at_finish: bool = False,
        stop_on_non_finite: bool = False,
        verbose: int = 1,
        require: Any = None,
        async_save: bool = True,
    ) -> None:
        self.path = RunPath(filepath)
        filepath, self.directory = self.path.filepath, self.path.directory
        self.objective = Objective(monitor, mode, require)
        if keep_top_k is not None and (
            not isinstance(keep_top_k, int) or isinstance(keep_top_k, bool) or keep_top_k < 1
        ):
            raise ValueError(
                "`keep_top_k` must be an int >= 1, or None to keep every saved file. "
                f"Received: keep_top_k={keep_top_k!r}"
            )
        self.format = savers.resolve_format(filepath, save_format)
        if export_at_finish and self.format != savers.SAVEDMODEL:
            raise ValueError(
                '`export_at_finish=True` needs save_format="savedmodel". '
                f"Received: save_format={save_format!r}, filepath={filepath}"
            )
        if keep_top_k is not None and keep_top_k > 1 and not self.path.fields:
            raise ValueError(
                f"keep_top_k={keep_top_k} keeps several files, so `filepath` needs a "
                "placeholder that differs per epoch, e.g. 'best-{epoch:03d}.weights.h5'. "
                f"Received: filepath={filepath}"
            )
        self.filepath = filepath
        self.monitor = monitor
        self._monitor_options = dict(
            min_delta=min_delta,
            baseline=baseline,
            patience=patience,
            start_from_epoch=start_from_epoch,
            stop_on_non_finite=stop_on_non_finite,
        )
        # Validate the numbers now, not at the first update.
        self._engine = Monitor(self.objective.engine_modes, **self._monitor_options)
        self.keep_top_k = keep_top_k
        self.save_best_only = save_best_only
        self.save_last = save_last or resume
        self.restore_best_weights = restore_best_weights
        self.resume = resume
        self.export_at_finish = export_at_finish
        self.verbose = verbose
        self._reporter = Reporter(self.objective, baseline, save_best_only, keep_top_k)
        self._optimizer = optimizer
        self._saver = savers.saver_for(savers.WEIGHTS if export_at_finish else self.format)

        self.history: list[dict[str, Any]] = []
        self._kept: list[Record] = []
        self._best_at: tuple[int, int | None] | None = None  # (epoch, step) of the engine's best
        self._last: dict[str, Any] | None = None
        self._stopped: dict[str, Any] | None = None
        self._export: str | None = None
        self._architecture: str | None = None
        self._best_weights: list[Any] | None = None
        self._rollback: Any = None
        self._checked_keys = False
        self.initial_epoch = 0
        self.model = None
        self._chief = distribute.is_chief()
        self.async_save = bool(async_save)
        self._writer = Writer(self.directory, enabled=self._chief, background=self.async_save)
        self._lock = None
        if self._chief:
            prepare_directory(self.directory)
            if not files.is_remote(self.directory):
                self._lock = DirectoryLock(self.directory)
        if model is not _LATER:
            self.bind(model)

    # ------------------------------------------------------------------ setup
    def bind(self, model: Any) -> None:
        """Attach the model (done by the constructor; the callback does it late)."""
        _check_model(model)
        self.model = model
        self._acquire_lock()
        if self._chief:
            self._recover()
        if self.directory_has_run():
            if self.resume:
                self._restore()
            elif self._chief:
                data = manifest.read(self.directory)
                best = data.get("best") or {}
                warnings.warn(
                    f"{self.directory} already holds a keras-best run (best epoch "
                    f"{best.get('epoch')}, {data.get('monitor')}={best.get('value')}). "
                    "Starting a new run there; pass resume=True to continue it instead.",
                    stacklevel=3,
                )

    def mode_hint(self, direction: str | None, name: str | None = None) -> None:
        """Resolve `mode="auto"` of `name` (default: the primary metric) from a
        Keras metric's direction ("up"/"down")."""
        if self.objective.hint(name or self.objective.name, direction):
            self._engine = Monitor(self.objective.engine_modes, **self._monitor_options)

    @property
    def mode(self) -> str | list[str | None] | None:
        """The resolved mode ("min"/"max"; one per name for a list `monitor`;
        `None` while "auto" is not resolved yet)."""
        return self.objective.mode_spec

    def directory_has_run(self) -> bool:
        return files.exists(manifest.manifest_path(self.directory))

    @property
    def optimizer(self) -> Any:
        if self._optimizer is not None:
            return self._optimizer
        return getattr(self.model, "optimizer", None)

    # --------------------------------------------------------------- public
    @property
    def best(self) -> float | None:
        """The best monitored value so far (`None` before the first improvement)."""
        return self._engine.best

    @property
    def best_epoch(self) -> int | None:
        return self._engine.best_epoch

    @property
    def best_path(self) -> str | None:
        """Path of the best file kept on disk (`None` if none is)."""
        record = self._best_record()
        return None if record is None else self.path.shown(record.path)

    @property
    def kept(self) -> list[Record]:
        """Records of the files kept on disk, best first."""
        return retention.ranked(self._kept, self._mode_or_min())

    @property
    def stopped(self) -> bool:
        """True once early stopping fired (also after `resume=True`)."""
        return self._stopped is not None

    @property
    def stop_reason(self) -> StopReason:
        return StopReason(self._stopped["reason"]) if self._stopped else StopReason.NONE

    def update(self, epoch: int, metrics: Mapping[str, Any], step: int | None = None) -> Decision:
        """Read `metrics`, decide, save if better; return the `Decision`.

        `metrics` maps names to `keras.metrics.Metric` objects (read with
        `.result()`, not reset), tensors, numpy scalars or floats. `epoch` is
        0-based, as in Keras callbacks.
        """
        if self.model is None:
            raise ValueError("The tracker has no model yet. Pass `model=` to the constructor.")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"`epoch` must be an int >= 0. Received: epoch={epoch!r}")
        values = distribute.agree(read_all(metrics), self.model, epoch=epoch, step=step, chief=self._chief)
        self._first_update_checks(metrics, values)
        value = self.objective.score(values)
        self._acquire_lock()
        error = self._take_write_error()
        if error is not None:
            raise error from error.__cause__
        previous, best_weights = self.state_dict(), self._best_weights
        self._rollback = (previous, best_weights, epoch)  # given back if a background write fails
        try:
            return self._decide_and_save(epoch, step, values, value)
        except BaseException as e:
            # The run directory still holds the previous state (see
            # writer.commit): forget this update too, so both agree.
            self.load_state_dict(previous)
            self._best_weights = best_weights
            if isinstance(e, OSError) and not isinstance(e, SaveError):
                raise SaveError(self._save_error_message(epoch, e)) from e
            raise

    def finish(self) -> None:
        """Wait for writes; restore the best weights or export if asked.

        Releases the run directory's lock; a later `update()` takes it again.
        A background write that failed raises `SaveError` here, after the
        best weights that are on disk were restored (if asked).
        """
        error = None
        try:
            self._writer.flush()
            error = self._take_write_error()
            if self.export_at_finish and error is None:
                self._export_best()
            if self.restore_best_weights and self._best_weights is not None:
                self.model.set_weights(self._best_weights)
            self._writer.close()
            error = error or self._take_write_error()
        finally:
            if self._lock is not None:
                self._lock.release()
        if error is not None:
            raise error from error.__cause__

    def flush(self) -> None:
        """Wait until every save so far is on disk and recorded (what `finish()`
        waits for, keeping the run directory's lock). Raises `SaveError` if a
        background write failed; the tracker then holds the previous best, as
        the directory does."""
        self._writer.flush()
        error = self._take_write_error()
        if error is not None:
            raise error from error.__cause__

    def close(self) -> None:
        """Abandon the run without finishing it: wait for background writes and
        release the run directory's lock; no weights restored, nothing exported
        (`finish()` is the normal end). Raises `SaveError` if a write failed."""
        try:
            self._writer.close()
            error = self._take_write_error()
        finally:
            if self._lock is not None:
                self._lock.release()
        if error is not None:
            raise error from error.__cause__

    def _take_write_error(self) -> SaveError | None:
        """A background write's error as a `SaveError`, once; the tracker's
        state rolls back to what the run directory holds (the update before)."""
        failed = self._writer.take_error()
        if failed is None:
            return None
        cause, txn = failed
        epoch = None
        if txn.rollback is not None:
            previous, best_weights, epoch = txn.rollback
            self.load_state_dict(previous)
            self._best_weights = best_weights
        if isinstance(cause, SaveError):
            return cause
        error = SaveError(self._save_error_message(epoch, cause) if epoch is not None else
                          f"Writing into {self.directory!r} failed: {cause!r}.")
        error.__cause__ = cause
        return error

    def run(
        self,
        train_step: Callable[..., Any],
        validation_step: Callable[..., Any],
        train_data: Iterable[Any],
        validation_data: Iterable[Any],
        epochs: int,
        metrics: Iterable[Any] | Mapping[str, Any] = (),
    ) -> list[dict[str, Any]]:
        """Drive a whole custom loop: train, validate, update, stop early.

        Calls `train_step(*batch)` for each training batch and
        `validation_step(*batch)` for each validation batch, resets `metrics`
        (Keras Metric objects, keyed by their `name`) at the start of each
        epoch, shows a `keras.utils.Progbar`, and calls `finish()`. Starts at
        `initial_epoch` (so a resumed run continues). Returns `history`.

        ```python
        tracker.run(train_step, val_step, train_ds, val_ds, epochs=20,
                    metrics=[train_loss, val_loss])
        ```
        """
        import keras

        named = dict(metrics) if isinstance(metrics, Mapping) else {m.name: m for m in metrics}
        for epoch in range(self.initial_epoch, 0 if self.stopped else epochs):
            for m in named.values():
                m.reset_state()
            if self.verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            progbar = keras.utils.Progbar(_length(train_data), verbose=1 if self.verbose else 0)
            for i, batch in enumerate(train_data):
                _call(train_step, batch)
                progbar.update(i + 1, [(k, float(v.result())) for k, v in named.items() if not k.startswith("val_")])
            for batch in validation_data:
                _call(validation_step, batch)
            progbar.update(progbar._seen_so_far, [(k, float(v.result())) for k, v in named.items()], finalize=True)
            decision = self.update(epoch, named)
            if decision.should_stop:
                break
        self.finish()
        return self.history

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The tracker's own state as plain JSON-able data."""
        return {
            "monitor": self.objective.monitor_spec,
            "mode": self.mode,
            "engine": self._engine.state_dict(),
            "kept": [r.to_json() for r in self._kept],
            "last": copy.deepcopy(self._last),
            "history": list(self.history),
            "stopped": copy.deepcopy(self._stopped),
            "export": self._export,
            "best_at": self._best_at,
        }

    def load_state_dict(self, data: Mapping[str, Any]) -> None:
        for key in ("monitor", "mode", "engine", "kept", "history"):
            if key not in data:
                raise ValueError(f"Required state attribute {key!r} is absent.")
        self.objective.load_modes(data["mode"])
        self._engine = Monitor(self.objective.engine_modes, **self._monitor_options)
        self._engine.load_state_dict(data["engine"])
        self._kept = [Record.from_json(r) for r in data["kept"]]
        self._last = copy.deepcopy(data.get("last"))
        self.history = list(data["history"])
        self._stopped = copy.deepcopy(data.get("stopped"))
        self._export = data.get("export")
        best_at = data.get("best_at")
        self._best_at = None if best_at is None else (best_at[0], best_at[1])

    # ------------------------------------------------------------- internal
    def _acquire_lock(self) -> None:
        if self._lock is not None and not self._lock.held:
            self._lock.acquire()

    def _recover(self) -> None:
        """Finish a transaction a crash interrupted; remove stray temp files."""
        if self.directory_has_run():
            manifest.roll_forward(self.directory, manifest.read(self.directory))
        elif files.isdir(self.directory):
            manifest.remove_tmp_files(self.directory)

    def _save_error_message(self, epoch: int, error: OSError) -> str:
        if not files.isdir(self.directory):
            where = f"the run directory {self.directory!r} no longer exists (was it removed?)"
        else:
            where = f"writing into {self.directory!r} failed: {error}"
        best = self._best_record()
        kept = (f"The previous best (epoch {best.epoch + 1}, {self.objective.name}={best.value:.5f}, "
                f"{best.path}) is intact and still recorded." if best else "Nothing was saved before.")
        return (f"Epoch {epoch + 1}: could not save: {where}. {kept} Free disk space or fix "
                "the directory, then call update() again or resume with resume=True.")

    def _best_record(self) -> Record | None:
        """The one record that `best_path`, the manifest, `load_best` and
        `restore_best_weights` all mean: the engine's best when it is kept."""
        return retention.best_record(self._kept, self._mode_or_min(), self._best_at)

    def _mode_or_min(self) -> tuple[str, ...]:
        return self.objective.engine_modes

    def _first_update_checks(self, metrics: Mapping[str, Any], values: Mapping[str, float]) -> None:
        # The keys are checked at every update (a key missing later must not
        # silently read as NaN); the mode and architecture once.
        needs_value = self.save_best_only or self.keep_top_k is not None or (
            self._monitor_options["patience"] is not None or self.restore_best_weights
        )
        self.objective.check_keys(values, needs_monitor=needs_value)
        missing = [f for f in self.path.metric_fields() if f not in values]
        if missing:
            raise ValueError(
                f"`filepath` uses {missing}, which are not among the metrics given to "
                f"update(): {sorted(values)}. Received: filepath={self.filepath}"
            )
        if self._checked_keys:
            return
        for name in self.objective.unresolved:
            self.mode_hint(direction_of(metrics.get(name)), name)
        self.objective.finalize()  # a name still unresolved raises: asks for mode="min" or "max"
        self._architecture = self._architecture or architecture_of(self.model)
        self._checked_keys = True

    def _decide_and_save(self, epoch: int, step: int | None, values: dict[str, float], score: Score) -> Decision:
        previous_best = self._engine.best
        decision, value = self._engine.step(epoch, score), score.primary
        if decision.improved:
            self._best_at = (epoch, step)
        if self.save_best_only is False:
            save = True
        elif self.keep_top_k is None or self.keep_top_k == 1:
            save = decision.improved
        else:
            save = decision.improved or (
                _beats_baseline(value, self._engine)
                and retention.admits(self._kept, value, self.keep_top_k, self._mode_or_min(),
                                     score.ties, score.feasible, self._best_at)
            )
        txn = Transaction(state={}, rollback=self._rollback)
        saved_path, evicted, reuse, snapshot = None, [], None, None
        if save:
            rel = self.path.format(epoch, step, values)
            if self.export_at_finish:
                rel += ".weights.h5"  # weights while training; exported at finish()
            tmp_rel = files.tmp_path(rel)
            snapshot = self._saver.snapshot(self.model)  # on every worker: may be collective
            reuse = getattr(snapshot, "by_variable", None)  # its host copies, shared below
            self._add_write(txn, tmp_rel, snapshot.write, snapshot.detached)
            txn.renames.append((tmp_rel, rel))
            record = Record(epoch, value, rel, dict(values), step, score.ties, score.feasible)
            self._kept, evicted_records, _ = retention.retain(
                self._kept, record, self.keep_top_k, self._mode_or_min(), self._best_at)
            evicted = [r.path for r in evicted_records]
            txn.deletes.extend(evicted)
            saved_path = self.path.shown(rel)
        shared = self.save_last or (decision.improved and self.restore_best_weights)
        if hasattr(snapshot, "recyclable") and not shared:
            snapshot.recyclable = True  # nothing else holds its arrays: reused once written
        if decision.improved and self.restore_best_weights:
            self._best_weights = host_copies(self.model.weights, reuse)
        if self.save_last:
            tmp_rel = files.tmp_path(state.LAST_NAME)
            arrays = (  # host copies, sharing those taken above
                host_copies(self.model.weights, reuse),
                host_copies(state.optimizer_variables(self.optimizer, self.model), reuse),
            )
            self._add_write(txn, tmp_rel, lambda p: state.write(p, *arrays, epoch=epoch, step=step), True)
            txn.renames.append((tmp_rel, state.LAST_NAME))
            self._last = {"path": state.LAST_NAME, "epoch": epoch, "step": step}
        if decision.should_stop:
            self._stopped = {"epoch": epoch, "step": step, "reason": decision.stop_reason.value}
        self.history.append(
            {
                "epoch": epoch,
                "step": step,
                "value": value,
                "improved": decision.improved,
                "saved": None if saved_path is None else files.basename(saved_path),
                "wait": decision.wait,
                "metrics": dict(values),
                **({"ties": list(score.ties)} if score.ties else {}),
                **({} if score.feasible else {"feasible": False}),
            }
        )
        txn.state = self._manifest_body()
        self._writer.submit(txn)
        decision = dataclasses.replace(decision, saved_path=saved_path, evicted=tuple(
            self.path.shown(p) for p in evicted))
        if self._chief:  # workers decide alike; the chief saves and speaks
            self._reporter.report(decision, previous_best, self.verbose)
        return decision

    def _add_write(self, txn: Transaction, tmp_rel: str, write: Callable[[str], None], detached: bool) -> None:
        """Have `write(path)` make the temp file `tmp_rel`: by the writer (in its
        thread with `async_save`) when it holds host copies only, else now."""
        if detached:
            txn.jobs.append((write, tmp_rel))  # dropped on non-chief workers (nothing to read)
        else:
            distribute.write_durably(files.join(self.directory, tmp_rel), write, self._chief)

    def _manifest_body(self) -> dict[str, Any]:
        best = self._best_record()
        return {
            "monitor": self.objective.monitor_spec,
            "mode": self.mode,
            "require": self.objective.require_spec,
            "save_format": self._saver.format,
            "filepath": self.path.template,
            "architecture": self._architecture,
            "best": None if best is None else best.to_json(),
            "best_at": self._best_at,
            "engine": self._engine.state_dict(),
            "options": {
                "min_delta": self._monitor_options["min_delta"],
                "baseline": self._monitor_options["baseline"],
                "patience": self._monitor_options["patience"],
                "start_from_epoch": self._monitor_options["start_from_epoch"],
                "keep_top_k": self.keep_top_k,
                "save_best_only": self.save_best_only,
            },
            "kept": [r.to_json() for r in retention.ranked(self._kept, self._mode_or_min())],
            "last": self._last,
            "stopped": self._stopped,
            "export": self._export,
            "history": list(self.history),  # a copy: a background writer may read it later
            "updated_at": time.time(),
        }

    def _restore(self) -> None:
        data = manifest.read(self.directory)
        if data.get("monitor") != self.objective.monitor_spec:
            raise ValueError(
                f"Cannot resume {self.directory}: it was recorded with monitor="
                f"{data.get('monitor')!r}, not {self.objective.monitor_spec!r}. Use the same monitor, "
                "or another directory for a new run."
            )
        if not self.objective.modes_compatible(data.get("mode")):
            raise ValueError(
                f"Cannot resume {self.directory}: it was recorded with mode="
                f"{data.get('mode')!r}, not {self.mode!r}."
            )
        if data.get("require") != self.objective.require_spec:
            raise ValueError(
                f"Cannot resume {self.directory}: it was recorded with require="
                f"{data.get('require')!r}, not {self.objective.require_spec!r}. Use the same "
                "constraints, or another directory for a new run."
            )
        recorded = data.get("architecture")
        if recorded and self.model.built and recorded != architecture_of(self.model):
            raise ValueError(
                f"Cannot resume {self.directory}: the model's architecture (weight "
                "shapes) differs from the one recorded there. Use the same model code, "
                "or another directory for a new run."
            )
        self.load_state_dict({**data, "history": data.get("history", [])})
        self._architecture = recorded
        last = data.get("last")
        if last and files.exists(files.join(self.directory, last["path"])):
            if not self.model.built:
                raise ValueError(
                    f"Cannot resume {self.directory}: the model is not built yet, so its "
                    "weights cannot be restored. Build it first (call it on a batch, or "
                    "`model.build(input_shape)`), then create the tracker."
                )
            epoch, _ = state.load(files.join(self.directory, last["path"]), self.model, self.optimizer)
            self.initial_epoch = epoch + 1
            if self.restore_best_weights and self._kept:
                self._best_weights = _read_weights_of(self.model, self._best_file_for_restore())
        elif self.history:
            self.initial_epoch = self.history[-1]["epoch"] + 1

    def _best_file_for_restore(self) -> str:
        record = self._best_record()
        return savers.weights_file(files.join(self.directory, record.path), self._saver.format)

    def _export_best(self) -> None:
        record = self._best_record()
        if record is None:
            return
        current = self.model.get_weights()
        try:
            # Other workers join the load's collective ops and export to scratch (distribute.py).
            distribute.load_weights(self.model, files.join(self.directory, record.path), self._chief)
            rel = record.path[: -len(".weights.h5")]
            tmp_rel = files.tmp_path(rel)
            exporter = savers.SavedModelSaver()
            distribute.write_durably(
                files.join(self.directory, tmp_rel), lambda p: exporter.write(self.model, p), self._chief
            )
            self._export = rel
            txn = Transaction(state=self._manifest_body(), renames=[(tmp_rel, rel)])
            self._writer.submit(txn)
        finally:
            self.model.set_weights(current)


_LATER = object()


class SaveError(OSError):
    """A save failed; the previous best and the record are intact."""


def architecture_of(model: Any) -> str:
    """A fingerprint of the model's variables (shapes and dtypes, in order)."""
    spec = [(list(v.shape), str(getattr(v, "dtype", ""))) for v in model.weights]
    return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:16]


def _read_weights_of(model: Any, path: str) -> list[Any]:
    current = model.get_weights()
    try:
        model.load_weights(path)
        return model.get_weights()
    finally:
        model.set_weights(current)


def _beats_baseline(value: float, engine: Monitor) -> bool:
    if engine.baseline is None:
        return True
    return value < engine.baseline if engine.mode == "min" else value > engine.baseline


def _check_model(model: Any) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` must be a keras.Model (Sequential, functional or subclassed). "
            f"Received: {type(model).__name__}"
        )


def _length(data: Any) -> int | None:
    try:
        n = len(data)
    except TypeError:
        return None
    return n if n >= 0 else None


def _call(fn: Callable[..., Any], batch: Any) -> Any:
    return fn(*batch) if isinstance(batch, (tuple, list)) else fn(batch)
