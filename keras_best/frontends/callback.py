"""`BestCheckpoint`: the tracker as a `keras.callbacks.Callback` for `fit()`."""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_best.core import formats
from keras_best.core.monitor import Decision
from keras_best.core.objective import MonitorSpec
from keras_best.core.options import Options, flag
from keras_best.core.paths import RunPath
from keras_best.frontends.tracker import _LATER, BestWeightsTracker
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
        if save_freq == "epoch" and "batch" in RunPath(filepath).fields:
            raise ValueError(
                "`filepath` uses {batch}, but with save_freq='epoch' saves happen at epoch "
                "ends, where there is no batch. Use {epoch}, or an int save_freq to save "
                f"every N batches. Received: filepath={filepath}"
            )
        Options.check_names("BestCheckpoint", options)
        if "baseline" in options:
            raise TypeError("BestCheckpoint takes `initial_value_threshold` (as ModelCheckpoint), not `baseline`.")
        if options.get("save_format") is None:
            options["save_format"] = _format_from_name(filepath, flag("save_weights_only", save_weights_only))
        if isinstance(keep_top_k, str) and keep_top_k == "auto":
            # As ModelCheckpoint: every file its name tells apart is kept; a fixed name is one file.
            keep_top_k = None if RunPath(filepath).fields else 1
        self.save_freq = save_freq
        self.tracker = BestWeightsTracker(
            _LATER, filepath, monitor, verbose=verbose, save_best_only=save_best_only, mode=mode,
            baseline=initial_value_threshold, keep_top_k=keep_top_k, **options)
        self._batches_since_save = 0
        self._ema: EmaWatch | None = None
        self._last_batch = None
        self._epoch = 0

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
        for name in self.tracker.objective.unresolved:
            self.tracker.mode_hint(_direction_from_model(self.model, name), name)
        self.tracker._live_model = lambda: self.model  # on JAX, puts the variables' values back
        if self.tracker.model is not self.model:
            self.tracker.bind(self.model)
            # What keras.callbacks.BackupAndRestore does (there is no public way):
            # continue after the last saved epoch, or run none if the resumed
            # run had already stopped early.
            if self.tracker.stopped:
                self.model._initial_epoch = (self.params or {}).get("epochs", self.tracker.initial_epoch)
            elif self.tracker.initial_epoch:
                self.model._initial_epoch = self.tracker.initial_epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        ema = self._ema_watch()
        steps = (self.params or {}).get("steps")
        if ema.active and (steps is None or batch == steps - 1):
            self.tracker.model = self.model
            ema.saw_training()
        self._save_on_batch(batch, logs)
        if self.tracker.options.keeps_state:
            self.tracker.after_batch(self._epoch, batch)

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch == 0 and self._ema is not None and self._ema.active:
            self.tracker.model = self.model
            self._ema.saw_validation()

    def _ema_watch(self) -> EmaWatch:
        """The EMA fingerprints (`keras_best.training_state.ema`), once the optimizer is built."""
        optimizer = getattr(self.model, "optimizer", None)
        if self._ema is None or (not self._ema.active and getattr(optimizer, "built", False)):
            self._ema = EmaWatch(optimizer)
        return self._ema

    def _save_on_batch(self, batch: int, logs: dict[str, Any] | None) -> None:
        if self.save_freq == "epoch":
            return
        if self._last_batch is None or batch <= self._last_batch:
            self._batches_since_save += batch + 1  # a new epoch: batches are 0-based
        else:
            self._batches_since_save += batch - self._last_batch
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._resolve_mode()
            self._act(self.tracker.update(self._epoch, self._checked(logs), step=batch))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.save_freq == "epoch":
            self._resolve_mode()
            logs = self._checked(logs)
            ema = self._ema_watch()
            swap, exchange = ema.arrangement() if ema.active else (False, False)
            if swap:  # the evaluated (EMA) weights into the model for the save, and back
                ema.swap()
            try:
                self._act(self.tracker.update(epoch, logs, swapped=ema.pairs if exchange else ()))
            finally:
                if swap:
                    ema.swap()
        if self.tracker.preempted:  # after the epoch's update, or when there was none
            self.tracker.model = self.model
            self.tracker.save_state(epoch)
            self.tracker.finish()  # raises Preempted

    def _checked(self, logs: dict[str, Any] | None) -> dict[str, Any]:
        """The logs, or a `fit()`-worded error when a monitored key is missing.

        Reads `self.model` first: on JAX, Keras detaches the variables' values
        during an epoch, and the `Callback.model` property puts them back."""
        self.tracker.model = self.model
        logs = dict(logs or {})
        missing = [n for n in self.tracker.objective.names if n not in logs]
        if not missing or not self.tracker.options.needs_monitor:
            return logs
        if missing[0].startswith("val_") and not any(k.startswith("val_") for k in logs):
            # No validation in these logs (validation_freq, save_freq=N batches, or none at all): the
            # update is recorded and decides nothing; finish() warns if validation never came.
            return logs
        raise ValueError(
            f"BestCheckpoint monitors {missing[0]!r}, which is not among the fit() logs: {sorted(logs)}. "
            "Fix `monitor=` (a metric compiled into the model, with `val_` for its validation value)."
        )

    def _resolve_mode(self) -> None:
        # Compiled metrics are built by the first step, after on_train_begin.
        for name in self.tracker.objective.unresolved:
            self.tracker.mode_hint(_direction_from_model(self.model, name), name)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.tracker.resume and getattr(self.model, "_initial_epoch", None) is not None:
            self.model._initial_epoch = None  # a later fit() starts where it is told
        self.tracker.finish()

    def _act(self, decision: Decision) -> None:
        if decision.should_stop:
            self.model.stop_training = True


def _format_from_name(filepath: str, save_weights_only: bool) -> str:
    """ModelCheckpoint's file-name rules, with its error messages."""
    if save_weights_only:
        if not filepath.endswith(".weights.h5"):
            raise ValueError(
                "When using `save_weights_only=True` in `ModelCheckpoint`"
                ", the filepath provided must end in `.weights.h5` "
                f"(Keras weights format). Received: filepath={filepath}"
            )
        return formats.WEIGHTS
    if filepath.endswith(".weights.h5"):
        return formats.WEIGHTS
    if not filepath.endswith((".keras", ".h5")):
        raise ValueError(
            "The filepath provided must end in `.keras` "
            f"(Keras model format). Received: filepath={filepath}"
        )
    return formats.KERAS


def _direction_from_model(model: Any, monitor: str) -> str | None:
    """The direction ("up"/"down") of the compiled metric that `monitor` names."""
    name = monitor[4:] if monitor.startswith("val_") else monitor
    stack = list(getattr(model, "metrics", []))
    while stack:
        m = stack.pop()
        stack.extend(getattr(m, "metrics", []) if m is not None and not hasattr(m, "_direction") else [])
        if getattr(m, "name", None) == name and getattr(m, "_direction", None) in ("up", "down"):
            return m._direction
    return None
