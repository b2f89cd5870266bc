"""What `BestCheckpoint` does beside its tracker during one `fit()`: the other
callbacks' state, and saving on an exception.

At `on_train_begin` it finds the `fit()`'s other callbacks
(`keras_best.keras_adapter.fit.fit_callbacks`), whose state the training
state then holds (`keras_best.training_state.callbacks`), and guards the
`fit()` (`keras_best.keras_adapter.fit.FitGuard`): it follows the last batch
done and, when an exception ends `fit()`, writes the training state as of that
batch (`keras_best.runner.interrupted`). A resume puts the callbacks' state
back at the first epoch begin, after their `on_train_begin` reset it (or at
`on_train_end` when the resumed `fit()` trains nothing).
"""

from __future__ import annotations

from typing import Any

from keras_best.keras_adapter.fit import FitGuard, fit_callbacks
from keras_best.runner import distribute, interrupted
from keras_best.training_state.callbacks import CallbackStates


class FitSession:
    """One `fit()` of `callback` (a `BestCheckpoint`), from its `on_train_begin` to its `on_train_end`."""

    def __init__(self, callback: Any) -> None:
        self.callback, self.tracker = callback, callback.tracker
        self.callback_list = fit_callbacks(callback)
        others = [c for c in getattr(self.callback_list, "callbacks", ()) if c is not callback]
        # What the training state holds of them (refused now when a `get_state()` cannot be stored).
        self.states = CallbackStates(others) if self.tracker.options.keeps_state else None
        self.epoch, self.done = 0, None  # the last batch trained: (epoch, batch), or (epoch, None) at its end
        self.guard: FitGuard | None = None

    def begin(self) -> None:
        """The tracker is bound: follow the `fit()` from here."""
        if self.tracker.options.save_on_exception:
            self.guard = FitGuard(self.callback.model, self.callback_list, self._seen, self._failed)

    def epoch_begin(self) -> None:
        """At each epoch begin: the callbacks' state a resume read goes back now (once)."""
        if self.states is not None:
            self.states.apply()

    def end(self) -> None:
        """At `on_train_end`: a resume that trained nothing puts the callbacks' state back now."""
        self.epoch_begin()
        if self.guard is not None:
            self.guard.remove()

    def _seen(self, hook: str, args: tuple) -> None:
        if hook == "on_epoch_begin":
            self.epoch = args[0]
        elif hook == "on_train_batch_end":
            self.done = (self.epoch, args[0])
        elif hook == "on_epoch_end":
            self.done = (args[0], None)

    def _failed(self, error: BaseException, hook: str, args: tuple) -> None:
        if hook == "on_train_batch_end":  # its training step is done
            self._seen(hook, args)
        first = (str(error).strip().splitlines() or [""])[0][:200]  # Keras wraps some in many lines
        cause = f"fit() stopped by {type(error).__name__}" + (f" ({first})" if first else "")
        last = self.tracker.state_dict()["last"] if self.done is not None else None
        interrupted.save_after(self.tracker.options.save_on_exception, last, distribute.is_chief(),
                               self.callback.model, self.done, self.tracker, cause)
