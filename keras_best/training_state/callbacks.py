"""The state of the other callbacks of `fit()`, group "callbacks/KEY" of the training state.

What is saved, for each callback of the `fit()` (`BestCheckpoint` finds them):

- `keras.callbacks.EarlyStopping`: `wait`, `best`, `best_epoch`, `stopped_epoch`
  and, only when it was made with `restore_best_weights=True`, its
  `best_weights` (the model's weights at its best epoch: one more copy of the
  weights in the state file and, while it is written, in host memory);
- `keras.callbacks.ReduceLROnPlateau`: `wait`, `best`, `cooldown_counter`
  (the learning rate itself is the optimizer's, saved with it);
- any callback with `get_state()` and `set_state(state)` (the protocol of
  your own callbacks): numbers, strings, `None`, numpy arrays, and lists,
  tuples and dicts of them (`keras_best.training_state.objects`);
- nothing for the others. Keras's other callbacks hold no state a resumed
  run needs (`History`, `ProgbarLogger`, `TerminateOnNaN`, `LambdaCallback`,
  `LearningRateScheduler`: the epoch is passed in, the rate is the
  optimizer's), or state that is not restored (`TensorBoard`'s step counters,
  `ModelCheckpoint`'s `best`, `CSVLogger` appends).

KEY is the callback's position among the saved ones and its class name
("0-EarlyStopping"). Keras callbacks reset their state in `on_train_begin`,
so what is read at resume is put back later, at the resumed `fit()`'s first
epoch begin (`CallbackStates.apply`), after every `on_train_begin` (or at its
`on_train_end` when it trains nothing). A state
written before callbacks were saved (or without this callback) leaves them as
they are, with a warning naming them.

Example:

    states = CallbackStates([early_stopping, my_callback])
    parts = states.parts()    # read and checked with the rest of the state
    ...                       # at the first epoch begin:
    states.apply()            # set_state() on each
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from keras_best.training_state.objects import ObjectState, check

_KERAS = {"EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch", "best_weights"),
          "ReduceLROnPlateau": ("wait", "best", "cooldown_counter")}


class Attributes:
    """`get_state()`/`set_state()` over some attributes of a Keras callback."""

    def __init__(self, callback: Any, names: Sequence[str]) -> None:
        self.callback = callback
        self.names = [n for n in names if n != "best_weights" or getattr(callback, "restore_best_weights", False)]

    def get_state(self) -> dict[str, Any]:
        return {n: getattr(self.callback, n, None) for n in self.names}

    def set_state(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self.callback, name, value)


def saved_form(callback: Any) -> Any:
    """What saves `callback`'s state (itself, with `get_state`/`set_state`), or `None`: nothing to save."""
    if callable(getattr(callback, "get_state", None)) and callable(getattr(callback, "set_state", None)):
        return callback
    import keras

    for name, attributes in _KERAS.items():
        if isinstance(callback, getattr(keras.callbacks, name)):
            return Attributes(callback, attributes)
    return None


class CallbackStates:
    """The saved callbacks of one `fit()`, and what a resume read for them."""

    def __init__(self, callbacks: Sequence[Any] = ()) -> None:
        forms = [f for f in map(saved_form, callbacks) if f is not None]
        self.saved = {f"{i}-{type(getattr(f, 'callback', f)).__name__}": f for i, f in enumerate(forms)}
        for key, form in self.saved.items():
            try:
                check({key: form})
            except TypeError as e:  # refused at train begin, with the fix named
                raise TypeError(f"The callback {key!r} of fit() cannot be saved in the training state: "
                                f"{str(e).split('.get_state() ', 1)[-1]}") from None
        self.pending: list[tuple[Any, Any]] = []

    def parts(self) -> list[CallbackPart]:
        return [CallbackPart(key, form, self) for key, form in self.saved.items()]

    def apply(self) -> None:
        """`set_state()` what a resume read (once)."""
        pending, self.pending = self.pending, []
        for form, value in pending:
            form.set_state(value)


class CallbackPart(ObjectState):
    """One callback's state; a state without it (older) leaves the callback as it is."""

    def __init__(self, key: str, form: Any, states: CallbackStates) -> None:
        super().__init__(f"callbacks/{key}", form, "get_state")
        self.states = states

    def read(self, group: Any, where: str) -> Any:
        if group is None:
            warnings.warn(f"{where} holds no state for the callback {self.name[len('callbacks/'):]!r} (written by "
                          "an older keras-best, or before the callback was added): it starts afresh.", stacklevel=5)
            return None
        return super().read(group, where)

    def assign(self, value: Any) -> None:
        if value is not None:
            self.states.pending.append((self.obj, value))  # after the callbacks' on_train_begin: see apply()
