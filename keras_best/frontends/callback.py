"""`BestCheckpoint`: the tracker as a `keras.callbacks.Callback` for `fit()`."""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_best.core import cadence
from keras_best.core.formats import ORBAX, resolve_format
from keras_best.core.monitor import Decision
from keras_best.core.objective import MonitorSpec
from keras_best.core.options import Options, flag
from keras_best.core.paths import RunPath
from keras_best.frontends import checks
from keras_best.frontends.fit_resume import FitResume
from keras_best.frontends.fit_session import FitSession
from keras_best.frontends.tracker import UNBOUND, BestWeightsTracker
from keras_best.keras_adapter.fit import clear_initial_epoch, set_initial_epoch
from keras_best.storage import files
from keras_best.training_state.ema import EmaWatch


class BestCheckpoint(keras.callbacks.Callback):
    """A drop-in replacement for `keras.callbacks.ModelCheckpoint`.

    Takes every argument of `ModelCheckpoint` with the same meaning (note its
    defaults: `save_best_only=False`, `verbose=0`), and adds the tracker's
    options: `keep_top_k` (default "auto": as ModelCheckpoint, every file a
    name with placeholders tells apart is kept, and a fixed name is one file,
    the best; never a worse epoch over the best), `patience` (sets
    `model.stop_training`),
    `restore_best_weights`, `save_last`/`resume` (continue an interrupted
    `fit()` at the right epoch with the best value kept), `min_delta`,
    `start_from_epoch`, and `require` (constraints; `monitor` may also be a
    list of log keys or a callable, see `BestWeightsTracker`). Saves are
    atomic and recorded in `keras_best.json`, so `load_best(model, directory)`
    works for `fit()` runs too.

    `.weights.h5` and `.keras` files and training states are written in a
    background thread (`async_save=True`, the default): an epoch end waits
    only for host copies of the variables, and `on_train_end` waits for the
    writes. A write error is raised from the
    next epoch end or from `fit()`'s end, with the previous best intact.
    `async_save=False` writes before each epoch end returns.

    One deliberate difference: an unknown `mode` raises `ValueError` (Keras
    warns and falls back to "auto").

    Example:

    ```python
    model.fit(x, y, validation_data=(vx, vy), epochs=50, callbacks=[
        BestCheckpoint("runs/exp1/best.weights.h5", monitor="val_loss",
                       save_best_only=True, patience=5,
                       restore_best_weights=True)])
    ```
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        monitor: MonitorSpec = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: Any = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        *,
        keep_top_k: Any = "auto",
        **options: Any,
    ) -> None:
        super().__init__()
        filepath = files.fspath(filepath)
        if save_freq != "epoch" and (not isinstance(save_freq, int) or isinstance(save_freq, bool) or save_freq < 1):
            raise ValueError(
                f"Unrecognized save_freq: {save_freq}. "
                "Expected save_freq are 'epoch' or integer values"
            )
        checks.check_placeholders(RunPath(filepath), save_freq=save_freq)
        Options.check_names("BestCheckpoint", options)
        if "baseline" in options:
            raise TypeError("BestCheckpoint takes `initial_value_threshold` (as ModelCheckpoint), not `baseline`.")
        if options.get("save_format") is None:
            fmt = resolve_format(filepath, None, flag("save_weights_only", save_weights_only),
                                 sharded=options.get("max_shard_size") is not None,
                                 orbax=keras.backend.backend() == "jax")
            options["save_format"] = None if fmt == ORBAX else fmt  # inferred: names a save, not a run directory
        if isinstance(keep_top_k, str) and keep_top_k == "auto":
            # As ModelCheckpoint: every file its name tells apart is kept; a fixed name is one file.
            keep_top_k = None if RunPath(filepath).fields else 1
        self.save_freq = save_freq
        self.tracker = BestWeightsTracker(
            UNBOUND, filepath, monitor, verbose=verbose, save_best_only=save_best_only, mode=mode,
            baseline=initial_value_threshold, keep_top_k=keep_top_k, **options)
        # When to update: at epoch ends, or every `save_freq` batches counted as ModelCheckpoint does.
        self._cadence = cadence.every(epoch=True) if save_freq == "epoch" else cadence.every(batches=save_freq)
        self._since_save = cadence.Progress()
        self._ema: EmaWatch | None = None
        self._epoch = 0
        self._session = FitSession(self)  # replaced at each on_train_begin
        self._fit = FitResume()  # continues an epoch at the batch a training state stands at

    # ModelCheckpoint attribute names, for code that reads them.
    @property
    def best(self) -> float | None:
        return self.tracker.best

    @property
    def best_epoch(self) -> int | None:
        """The epoch of `best` (0-based, as in Keras callbacks)."""
        return self.tracker.best_epoch

    @property
    def best_path(self) -> str | None:
        """The path of the best file kept on disk (`None` before the first)."""
        return self.tracker.best_path

    @property
    def filepath(self) -> str:
        return self.tracker.filepath

    @property
    def monitor(self) -> Any:
        return self.tracker.monitor

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._session = FitSession(self)  # the other callbacks' state, save on exception
        if self.tracker.model is not self.model:
            checks.check_train_begin(self.tracker.objective, self.model)  # not after a whole epoch
            # Every read of the variables goes through `self.model`: on JAX, it puts their values back.
            self._fit.attach(self.model, self.tracker.options.resume)
            callbacks = self._session.states.parts() if self._session.states is not None else []
            self.tracker.bind(self.model, model_source=lambda: self.model, epochs=(self.params or {}).get("epochs"),
                              parts=[self._fit.part, *callbacks])
            # What keras.callbacks.BackupAndRestore does: continue after the last saved
            # epoch, or run none if the resumed run had already stopped early.
            if self.tracker.stopped:
                set_initial_epoch(self.model, (self.params or {}).get("epochs", self.tracker.initial_epoch))
            elif self.tracker.initial_epoch or self.tracker.initial_step:  # mid-epoch: the batch too
                set_initial_epoch(self.model, self._fit.start(self.tracker.initial_epoch, self.tracker.initial_step))
        self._session.begin()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._session.epoch_begin()
        self._fit.epoch_begin(epoch)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._fit.batch_begin(batch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._fit.skipped(batch):  # drawn again, trained before the resume
            return
        ema = self._ema_watch()
        steps = (self.params or {}).get("steps")
        if ema.active and (steps is None or batch == steps - 1):
            ema.saw_training()
        self._since_save = self._since_save.after_batch(self._epoch, batch)
        if self._cadence.due(self._since_save.moment(cadence.BATCH)):
            self._since_save = self._since_save.saved()
            self._act(self.tracker.decide(self._epoch, self._logs(logs), step=batch))
        self.tracker.after_batch(self._epoch, batch)

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch == 0 and self._ema is not None and self._ema.active:
            self._ema_watch().saw_validation()

    def _ema_watch(self) -> EmaWatch:
        """The EMA fingerprints (`keras_best.training_state.ema`), once the
        optimizer is built. Reads `self.model`: on JAX, that puts the
        variables' values back, for the fingerprints to read."""
        optimizer = getattr(self.model, "optimizer", None)
        if self._ema is None or (not self._ema.active and getattr(optimizer, "built", False)):
            self._ema = EmaWatch(optimizer)
        return self._ema

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._fit.done()
        if self._cadence.due(cadence.Moment(cadence.EPOCH)):
            logs = self._logs(logs)
            ema = self._ema_watch()
            swap, exchange = ema.arrangement() if ema.active else (False, False)
            if swap:  # the evaluated (EMA) weights into the model for the save, and back
                ema.swap()
            try:
                self._act(self.tracker.decide(epoch, logs, swapped=ema.pairs if exchange else ()))
            finally:
                if swap:
                    ema.swap()
        if self.tracker.preempted:  # after the epoch's update, or when there was none
            self.tracker.save_state(epoch)
            self.tracker.finish()  # raises Preempted

    def _logs(self, logs: dict[str, Any] | None) -> dict[str, Any]:
        """The logs, or a `fit()`-worded error when a monitored key is missing
        from logs that hold validation values (`checks.validated`: without
        them, the update is recorded and decides nothing; `finish()` warns if
        validation never came)."""
        logs = dict(logs or {})
        missing = [n for n in self.tracker.objective.names if n not in logs]
        if missing and self.tracker.options.needs_monitor and checks.validated(
                self.tracker.objective, logs):
            raise ValueError(
                f"BestCheckpoint monitors {missing[0]!r}, which is not among the fit() logs: {sorted(logs)}. "
                "Fix `monitor=` (a metric compiled into the model, with `val_` for its validation value)."
            )
        return logs

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._session.end()
        self._fit.done()
        if self.tracker.resume:
            clear_initial_epoch(self.model)  # a later fit() starts where it is told
        self.tracker.finish()

    def _act(self, decision: Decision) -> None:
        if decision.should_stop:
            self.model.stop_training = True
