"""`BestWeightsTracker`: keep the best model of a custom training loop."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from keras_best.core import retention
from keras_best.core.monitor import Decision, StopReason
from keras_best.core.objective import MonitorSpec, Objective
from keras_best.core.options import Options, integer, signature
from keras_best.core.paths import RunPath
from keras_best.core.retention import Record
from keras_best.frontends import checks, report
from keras_best.frontends.history import HistoryView
from keras_best.frontends.loop_resume import LoopResume
from keras_best.frontends.metrics import read_all
from keras_best.runner import distribute, interrupted
from keras_best.runner.preemption import SafePoints
from keras_best.runner.run import Run, SaveError, architecture_of
from keras_best.storage.manifest import RunRecord

__all__ = ["BestWeightsTracker", "SaveError", "architecture_of"]
_OPTIONS = tuple(f.name for f in dataclasses.fields(Options))
_STATE_KEYS = ("monitor", "mode", "require", "engine", "best", "kept", "last", "stopped", "export")  # state_dict()


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
            `"runs/exp1/{epoch:03d}-{val_loss:.4f}.weights.h5"`. Its directory
            is the run directory.
        monitor: the key of the metrics passed to `update()` to rank by; or a
            list of keys compared in order (later keys break exact ties of
            earlier ones, each in its own direction); or a callable taking the
            metrics dict and returning a number (see `keras_best.core.objective`).
        mode: "min", "max" or "auto" (inferred from the name or the Keras
            metric; an error when it cannot be), or one per `monitor` key.
        min_delta: an improvement must beat the best by more than this.
        baseline: initial best; nothing is saved until it is beaten (`initial_value_threshold`).
        keep_top_k: how many best files to keep (`None`: every file saved); above 1, any epoch
            entering the best k is saved.
        save_best_only: if False, save at every update (as ModelCheckpoint).
        save_last: also keep the latest training state (model, optimizer, epoch, tracker state) to resume from.
        keep_last: how many training states to keep (older ones: `keras_best_state-EPOCH[-STEP].h5`).
        archive_every: also save the model every this many epochs, in
            `filepath`'s format, and never delete those files (with top-k:
            a file kept by either rule stays). Needs a placeholder. A
            duration ("30min", "1h", "2d") keeps one per that much wall time.
        max_disk: bytes (an int, or "500MB", "20GB", "1.5GiB") for every file the run keeps; over it
            the lowest-priority files go (never the best nor the newest state: docs/run-directory.md).
        save_state_every: also write the training state every so many seconds (at a batch's end).
        save_state_every_batches: ... or every so many batches.
        save_random_state: keep the random state (Keras's `SeedGenerator`s, Python's, NumPy's,
            torch's) in the training state: a resumed run draws what an uninterrupted one would.
        patience: stop after this many updates in a row without improvement (`None`: never stop).
        start_from_epoch: updates before this epoch never count as patience.
        restore_best_weights: at `finish()`, put the best weights back into the model, read from
            the best's file (no host copy is kept; the optimizer's variables are left as they are).
        optimizer: the optimizer of a custom loop, saved in the training state
            (defaults to `model.optimizer` when the model is compiled); every other
            optimizer the model tracks (a GAN's `d_optimizer`...) is saved too.
        state: more objects for the training state, by name (`{"d_opt": d_opt}`): Keras
            models, optimizers, `SeedGenerator`s, objects with `get_state()`/`set_state()` or
            `state_dict()`/`load_state_dict()` (torch optimizers); others are refused here.
        resume: continue the run recorded in the directory (model, optimizers, best, patience,
            kept files, history); `initial_epoch` says where. Implies `save_last`.
        save_format: "weights", "keras" or "savedmodel" (default: from the file name).
        max_shard_size: GB per shard: sharded sets as `model.save_weights(path, max_shard_size=)`
            writes (a `.weights.json` `filepath`), kept and loaded as one unit.
        export_at_finish: with `save_format="savedmodel"`, export the best once, at `finish()`.
        stop_on_non_finite: stop at once when the monitored value (as read) is NaN/inf.
        stopping_threshold: stop as soon as a (feasible) monitored value reaches this one (`<=`
            with mode "min", `>=` with "max"); that epoch is saved first when it is the best.
        divergence_threshold: stop as soon as the monitored value is worse than this one, or NaN.
        verbose: 0 silent, 1 one line per decision (as Keras), 2 also evictions.
        smooth: decide (best, patience, thresholds, top k) on `("mean", n)` of the last n validations or
            `("ema", alpha)`, `s = alpha * value + (1 - alpha) * s`; the file kept is the epoch's whose
            smoothed value is best; records hold the raw value too (`raw`; docs/smoothing.md).
        require: constraints an epoch must meet to be best or enter the top k, e.g. `{"val_recall":
            (">=", 0.9)}` (ops `>=`, `>`, `<=`, `<`, `==`) or a callable `metrics -> bool`; epochs
            that break them count as not improving for `patience`.
        preempt_signals: the signals that announce a preemption (SIGTERM from Slurm,
            Kubernetes, spot VMs): the training state is written at the next safe point (a
            batch's end in `fit()`, `batches()`, `run()`, or where your loop checks `preempted`),
            then `Preempted` exits with status 128 + signal; rerun with `resume=True`. "auto":
            SIGTERM when a training state is kept; a list such as `["SIGTERM", "SIGUSR1"]`; or
            `None`. A second signal ends the process at once (`keras_best.runner.preemption`).
        async_save: write in a background thread (default): `update()` waits only for host copies;
            a write error is raised by the next `update()` or `finish()`, the previous best intact;
            `False` writes before `update()` returns.
        max_host_memory: bytes (or "4GB", "1.5GiB") that saves may hold on the host (`None`: one save, weights and
            optimizer; a slow disk makes `update()` wait). `0` (or less than one save) copies
            nothing: files are written in the training thread, one variable at a time, as
            `ModelCheckpoint` does (docs/performance.md: memory against blocked time).
        loggers: objects told of each new best (`on_best(event)`, in the training thread) and,
            once every file is on disk, of the run's end (`on_finish(event)` with the best's files):
            e.g. `keras_best.mlflow.MlflowLogger()` (`keras_best.runner.loggers`).
        save_on_exception: when an exception ends training (`fit()`, or the body of
            `for epoch in tracker.epochs(n)`), write the training state as of the last batch
            done and say so on stderr; the best is untouched (default: when a training state
            is kept; `keras_best.runner.interrupted`).
        storage_options: for a remote `filepath` (`s3://`, `gs://`...), fsspec's arguments of its file system
            (`{"endpoint_url": ..., "key": ..., "secret": ...}`, `{"profile": ...}`: docs/remote-storage.md).

    Example:

    ```python
    tracker = BestWeightsTracker(model, "runs/exp1/best.weights.h5",
                                 monitor="val_loss", patience=5)
    for epoch in tracker.epochs(100):  # resumes where the run left off; ends at early stop
        train_one_epoch()
        tracker.update(epoch, {"val_loss": val_loss_metric})
    tracker.finish()
    ```

    Package-internal, for `BestCheckpoint`: `BestWeightsTracker(UNBOUND, ...)`
    (no model yet), `bind(model, model_source=)`, `decide(..., swapped=)`.
    """

    def __init__(self, model: Any, filepath: str, monitor: MonitorSpec = "val_loss", **options: Any) -> None:
        o = self.options = Options.create(type(self).__name__, monitor=monitor, **options)
        self.path = RunPath(filepath, o.save_format)
        self.filepath, self.directory = self.path.filepath, self.path.directory
        self.objective = Objective(o.monitor, o.mode, o.require)
        checks.check_placeholders(self.path, o)
        self._run = Run(self.path, o, self.objective, checks.check_format(self.filepath, o))
        self._reporter = report.Reporter(self.objective, o.baseline, o.save_best_only, o.keep_top_k, o.recorded())
        self._safe = SafePoints(self._run, o)  # periodic training states, preemption
        self._history = HistoryView(self._run)
        self.model, self._model_source = None, lambda: self.model
        self._loop = LoopResume()  # the data order of the resumed epoch (`batches()`)
        if model is not UNBOUND:
            self.bind(model, parts=[self._loop.part])

    def __getattr__(self, name: str) -> Any:
        if name in _OPTIONS and "options" in self.__dict__:  # tracker.keep_top_k, tracker.monitor...
            return getattr(self.options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def bind(self, model: Any, model_source: Callable[[], Any] | None = None, epochs: int | None = None,
             parts: Sequence[Any] = ()) -> None:
        """Attach the model (the constructor does; `BestCheckpoint` at `on_train_begin`).
        `model_source()`, called before each read of the variables, returns `model` with
        their values in place (`fit()` on JAX detaches them during an epoch). `epochs`: where
        training ends, if known (`fit()`'s): see `Run.train_until`. `parts`: more training-state
        parts (`fit()`'s batch position and other callbacks: `keras_best.training_state`)."""
        checks.check_model(model, self.options)  # and its optimizer
        self.model, self._model_source = model, model_source or (lambda: self.model)
        checks.resolve_modes(self.objective, model)
        self._run.open(model, self.optimizer, epochs, parts)
        report.say_resumed(self._reporter, self._run, self.verbose, epochs)
        self._safe.start(self.initial_epoch, self.initial_step)

    @property
    def mode(self) -> str | list[str | None] | None:
        """The resolved mode: "min"/"max" (one per name of a list `monitor`), `None` while unresolved."""
        return self.objective.mode_spec

    @property
    def optimizer(self) -> Any:
        return checks.optimizer_of(self.model, self.options)

    @property
    def best(self) -> float | None:
        """The best monitored value so far (`None` before one; with `smooth=`, smoothed: see `best_raw`)."""
        return (self._run.state.engine or {}).get("best")

    @property
    def best_raw(self) -> float | None:
        """The monitored value of the best epoch as read, before `smooth=` (else `best`)."""
        return self._run.state.best_raw()

    @property
    def best_epoch(self) -> int | None:
        return (self._run.state.engine or {}).get("best_epoch")

    @property
    def best_path(self) -> str | None:
        """Path of the best file kept on disk (`None` if none is)."""
        record = self._run.state.best_record()
        return None if record is None else self.path.shown(record.path)

    @property
    def kept(self) -> list[Record]:
        """Records of the files kept on disk, best first."""
        return retention.ranked(self._run.state.kept, self.objective.engine_modes)

    @property
    def history(self) -> Sequence[dict[str, Any]]:
        """One entry per update (epoch, step, value, improved, saved, wait, metrics), read-only."""
        return self._history

    @property
    def initial_epoch(self) -> int:
        """The epoch to continue at (after `resume=True`; 0 for a new run).
        After a state saved mid-epoch, that epoch: see `initial_step`."""
        return self._run.initial_epoch

    @property
    def initial_step(self) -> int:
        """The batch of `initial_epoch` to continue at: 0, or after a training
        state saved mid-epoch (`update(..., step=)`, a preemption) the batch
        after it. `batches()` skips the batches before it."""
        return self._run.initial_step

    @property
    def preempted(self) -> bool:
        """True once a preemption signal came (see `preempt_signals`). A loop
        that does not use `batches()` checks it after each batch:
        `if tracker.preempted: tracker.save_state(epoch, step); break`, then
        `tracker.finish()` raises `Preempted`."""
        return self._safe.preempted

    def save_state(self, epoch: int, step: int | None = None) -> str:
        """Write the training state now, as of `epoch` (and `step`, the last batch
        done), and wait until it is durable; return its path. Decides nothing (an
        update without validation values). Needs `resume=True` or `save_last=True`."""
        checks.check_keeps_state(self.options)
        self._write_state(integer("epoch", epoch, 0, allow_none=False), integer("step", step, 0))
        self.flush()
        return self.path.shown(self._run.state.last["path"])

    def batches(self, epoch: int, data: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """`enumerate(data)` for one epoch, made resumable and preemptible.

        In the resumed epoch it skips the batches a mid-epoch training state already covers
        (`initial_step`), drawn in the uninterrupted run's order (`keras_best.frontends.loop_resume`);
        after each batch it calls `after_batch()` (periodic training states, preemption).

        ```python
        for epoch in tracker.epochs(100):
            for step, (x, y) in tracker.batches(epoch, train_batches):
                train_step(x, y)
            tracker.update(epoch, {"val_loss": val_loss})
        ```
        """
        self._safe.end_if_preempted()  # a signal between epochs: the state written last is current
        for step, batch in self._loop.batches(epoch, data, self.initial_epoch, self.initial_step):
            yield step, batch
            self.after_batch(epoch, step)

    def after_batch(self, epoch: int, step: int) -> None:
        """A safe point, after training batch `step` of `epoch` (`batches()` and `fit()`
        call it; a hand-written loop may too). Writes the training state when
        `save_state_every(_batches)` say it is due (in the background); after a
        preemption signal writes it, waits until it is durable, and raises `Preempted`."""
        if self._safe.due(epoch, step):
            self._write_state(epoch, step)
            if self.preempted:
                self.flush()
                self._safe.end_if_preempted()

    def _write_state(self, epoch: int, step: int | None) -> None:
        """Record an update that writes the training state and decides nothing
        (none when the update of `(epoch, step)` already wrote it)."""
        if self._run.state.at != (epoch, step):
            self._apply(epoch, step, {}, None)

    @property
    def stopped(self) -> bool:
        """True once early stopping fired (also after `resume=True`)."""
        return self._run.state.stopped is not None

    @property
    def stop_reason(self) -> StopReason:
        return StopReason((self._run.state.stopped or {}).get("reason", ""))

    def epochs(self, epochs: int) -> Iterator[int]:
        """The epochs left to train, up to `epochs`: from `initial_epoch` (0
        for a new run, the next one after `resume=True`), none once the run
        has stopped, and no more after an `update()` that said `should_stop`.
        The loop of the class example, which a rerun of the same script
        cannot get wrong."""
        end = integer("epochs", epochs, 0, allow_none=False)

        def left(start: int) -> Iterator[int]:
            self._run.train_until(end)  # none left: a resume keeps the process's random state
            report.say_resumed(self._reporter, self._run, self.verbose, end, complete=True)
            for epoch in range(start, end):
                if self.stopped:
                    return
                self._safe.end_if_preempted()  # the state written by the last update is current
                yield epoch

        return interrupted.guard(left(self.initial_epoch), self._safe, self._model_source, self)

    def update(self, epoch: int, metrics: Mapping[str, Any], step: int | None = None) -> Decision:
        """Read `metrics`, decide, save if better; return the `Decision`.

        `metrics` maps names to `keras.metrics.Metric` objects (read with
        `.result()`, not reset), tensors, numpy scalars or floats. `epoch` is
        0-based, as in Keras callbacks; each update must come after the one
        before (a later epoch, or a later `step` of the same epoch).
        """
        return self.decide(epoch, metrics, step)

    def decide(self, epoch: int, metrics: Mapping[str, Any], step: int | None = None, swapped: Sequence = ()) -> Decision:
        """`update()`, where the variable pairs in `swapped` trade places in
        this update's training state (the EMA weights `fit()` swapped in:
        `keras_best.training_state.ema`). Package-internal: `BestCheckpoint`."""
        if self.model is None:
            raise ValueError("The tracker has no model yet. Pass `model=` to the constructor.")
        epoch, step = integer("epoch", epoch, 0, allow_none=False), integer("step", step, 0)
        values = distribute.agree(read_all(metrics), self.model, epoch=epoch, step=step, chief=self._run.chief)
        validated = checks.validated(self.objective, values)
        if validated:
            checks.check_update(self.objective, self.options, self.path, values, step, self.model, metrics)
        previous_best = self.best
        plan = self._apply(epoch, step, values, self.objective.score(values) if validated else None, swapped)
        decision = dataclasses.replace(plan.decision, saved_path=plan.save_as and self.path.shown(plan.save_as),
                                       evicted=tuple(self.path.shown(p) for p in plan.evict))
        if self._run.chief and (validated or decision.saved_path):  # workers decide alike; the chief speaks
            report.announce(self._reporter, decision, previous_best, self.verbose, self._run.writer)
        return decision

    def _apply(self, epoch: int, step: int | None, values: Mapping, score: Any, swapped: Sequence = ()) -> Any:
        """Carry out one update with the live model; a training state written restarts the state cadence."""
        plan = self._run.update(self._model_source(), self.optimizer, epoch, step, values, score, swapped=swapped)
        if plan.write_state:
            self._safe.written()
        return plan

    def finish(self) -> None:
        """Wait for writes; restore the best weights or export if asked.
        Releases the run directory's lock (a later `update()` takes it again).
        A background write that failed raises `SaveError` here, after the
        best weights that are on disk were restored (if asked)."""
        report.warn_if_never_validated(self.history, self.objective.name)
        self._safe.end_if_preempted()  # the run is not over: nothing restored or exported
        try:
            self._run.finish(self._model_source(),
                             on_restore=report.say_restored if self._run.chief and self.verbose else None)
        finally:
            self._safe.close()
        self._safe.end_if_preempted()  # a signal during finish(): the state written last is current

    def flush(self) -> None:
        """Wait until every save so far is on disk and recorded (as `finish()`,
        keeping the lock). Raises `SaveError` if a background write failed;
        the tracker then holds the previous best, as the directory does."""
        self._run.writer.flush()
        self._run.raise_write_error()

    def close(self) -> None:
        """Abandon the run without finishing it: wait for background writes and
        release the run directory's lock; no weights restored, nothing exported
        (`finish()` is the normal end). Raises `SaveError` if a write failed."""
        try:
            self._run.close()
        finally:
            self._safe.close()

    def run(self, train_step: Callable[..., Any], validation_step: Callable[..., Any], train_data: Iterable[Any],
            validation_data: Iterable[Any], epochs: int,
            metrics: Iterable[Any] | Mapping[str, Any] = ()) -> Sequence[dict[str, Any]]:
        """Drive a whole custom loop: train, validate, update, stop early.

        Calls `train_step(*batch)` for each training batch and
        `validation_step(*batch)` for each validation batch, resets `metrics`
        (Keras Metric objects, keyed by their `name`) at the start of each
        epoch, shows a `keras.utils.Progbar` line per epoch, and calls
        `finish()`. Loops over `epochs(epochs)`: a resumed run continues at
        `initial_epoch`, one that already stopped trains nothing. Returns
        `history`. E.g. `tracker.run(train_step, val_step, train_ds, val_ds,
        epochs=20, metrics=[train_loss, val_loss])`.
        """
        from keras_best.frontends.loop import run_epochs

        run_epochs(self, train_step, validation_step, train_data, validation_data, epochs, metrics)
        self.finish()
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """The tracker's decisions as plain JSON-able data (keras_best.json's
        fields, with the history)."""
        record = self._run.record().to_json()
        return {**{k: record[k] for k in _STATE_KEYS}, "history": list(self.history)}

    def load_state_dict(self, data: Mapping[str, Any]) -> None:
        """Take the decisions of `state_dict()` (validated as keras_best.json is)."""
        self._run.adopt(RunRecord.from_json({"format": "keras_best", "version": 1, **data}, "state_dict"))


UNBOUND = object()  # a tracker whose model comes later, with `bind()` (BestCheckpoint)
BestWeightsTracker.__init__.__signature__ = signature("self", "model", "filepath")  # help() shows every option
