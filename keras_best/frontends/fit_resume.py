"""Exact mid-epoch resume of `fit()`, for `BestCheckpoint`.

A training state written in the middle of an epoch (a preemption,
`save_state_every_batches`) holds the batch it stands at; `fit()` itself only
starts at an epoch. So the resumed epoch starts over in the data, in the same
order, and its first `initial_step` batches are drawn and not trained: while
they come, `fit()`'s train function only draws them (`keras_adapter.fit.skip_batch`).
Before the epoch's first batch the compiled metrics get their saved state and
the process-wide random generators the state they had at the start of that epoch
(what the data adapters shuffle with); after the last consumed batch the
generators get back the state the resume gave them. What the state file holds
for this: `keras_best.training_state.fit`.

Where the data cannot be drawn again in the same order (a generator, an
endless stream with `steps_per_epoch`...), one warning says why and the epoch
is trained again from its start, from the saved state (as
`keras.callbacks.BackupAndRestore` does).
"""

from __future__ import annotations

import warnings
from typing import Any

from keras_best.keras_adapter import fit
from keras_best.training_state import rng
from keras_best.training_state.fit import FitProgress


class FitResume:
    """The mid-epoch resume of one `BestCheckpoint` (see the module docstring)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.data: Any = None  # the running fit()'s EpochIterator
        self.part = FitProgress(self)
        self.epoch_random: dict[str, Any] | None = None  # the generators at the start of this epoch
        self.saved: dict[str, Any] | None = None  # the "fit" group of the state resumed from
        self.resume_at: tuple[int, int] | None = None
        self.skipping: int | None = None  # batches of this epoch still to draw without training
        self.logs: Any = None
        self.random_after: dict[str, Any] | None = None

    def metric_variables(self) -> list[Any]:
        return fit.metric_variables(self.model) if self.model is not None else []

    def take(self, values: dict[str, Any] | None) -> None:
        self.saved = values

    def attach(self, model: Any, resuming: bool) -> None:
        """At `on_train_begin`, before the training state is read: the model, the
        running `fit()`'s data, its compiled metrics built (`resuming`)."""
        self.model, self.data = model, fit.running_fit_data()
        if resuming:
            fit.build_metrics(model, self.data)

    def start(self, epoch: int, step: int) -> int:
        """At `on_train_begin` of a run resumed at batch `step` of `epoch`: the epoch `fit()` starts at."""
        data = self.data
        fit.advance_epochs(data, epoch)
        if not step:
            return epoch
        why = fit.unpositionable(data)
        if why is None and self.saved is None:
            why = "its training state holds no batch position for fit() (written by an older keras-best)"
        if why is not None:
            warnings.warn(f"BestCheckpoint: fit() cannot continue at batch {step + 1} of epoch {epoch + 1}: {why}. "
                          f"Epoch {epoch + 1} is trained again from its start instead.", stacklevel=3)
        else:
            self.resume_at = (epoch, step)
        return epoch

    def epoch_begin(self, epoch: int) -> None:
        """Put the consumed batches' metric states and the epoch's random state in place."""
        if self.resume_at is not None and self.resume_at[0] == epoch and self.saved is not None:
            for v, a in zip(self.metric_variables(), self.saved["metrics"]):
                v.assign(a)
            self.random_after = rng.capture_global()
            rng.restore(None, self.saved["random"])
            self.logs = self.model.get_metrics_result()
            self.skipping, self.resume_at, self.saved = self.resume_at[1], None, None
        self.epoch_random = rng.capture_global()

    def batch_begin(self, batch: int) -> None:
        if self.skipping is None:
            return
        if batch < self.skipping:  # after the last one, before fit() makes the next epoch's iterator
            last = batch + int(getattr(self.model, "steps_per_execution", 1) or 1) >= self.skipping
            fit.skip_batch(self.model, self.logs, then=self.restore_random if last else None)
        else:
            self.done()

    def skipped(self, batch: int) -> bool:
        """Whether batch `batch` was only drawn (a batch end to ignore)."""
        return self.skipping is not None and batch < self.skipping

    def restore_random(self) -> None:
        """The consumed batches are drawn: the random state the resume gave comes back."""
        after, self.random_after = self.random_after, None
        if after is not None:
            rng.restore(None, after)

    def done(self) -> None:
        """No batch is left to skip (and the random state is back)."""
        if self.skipping is not None:
            self.skipping = None
            self.restore_random()
