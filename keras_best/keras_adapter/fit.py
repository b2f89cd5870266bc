"""Keras internals that `fit()` and its metrics need (no public way exists).

Pinned by `tests/test_callback.py` and `tests/test_metrics.py` against the
installed Keras:

- a Keras 3 metric's direction hint is the private `_direction` ("up"/"down");
- `fit()` starts at `model._initial_epoch` when it is set (what
  `keras.callbacks.BackupAndRestore` sets to resume);
- a callback is given `self.model`, never the `CallbackList` of the `fit()`
  that runs it: `fit_callbacks` finds that list on the call stack of the
  callback's `on_train_begin` (`CallbackList.on_train_begin` calls it);
- no callback hears of an exception that ends `fit()` (`on_train_end` is not
  called): `FitGuard` wraps the running `fit()`'s `model.train_function` and its
  `CallbackList`'s batch and epoch hooks, until `remove()`.

`tests/test_callback_state.py` pins the last two on each backend.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

_HOOKS = ("on_epoch_begin", "on_train_batch_end", "on_epoch_end", "on_train_batch_begin")


def metric_direction(metric: Any) -> str | None:
    """A Keras metric object's own direction hint: "up", "down" or `None`.

    >>> metric_direction(0.5) is None
    True
    """
    if not (callable(getattr(metric, "result", None)) and callable(getattr(metric, "reset_state", None))):
        return None
    direction = getattr(metric, "_direction", None)
    return direction if direction in ("up", "down") else None


def compiled_metric_direction(model: Any, monitor: str) -> str | None:
    """The direction ("up"/"down") of the compiled metric of `model` that the
    log key `monitor` names (`val_` stripped), searching nested metric
    containers; `None` when none says."""
    name = monitor[4:] if monitor.startswith("val_") else monitor
    stack = list(getattr(model, "metrics", []))
    while stack:
        m = stack.pop()
        stack.extend(getattr(m, "metrics", []) if m is not None and not hasattr(m, "_direction") else [])
        if getattr(m, "name", None) == name and getattr(m, "_direction", None) in ("up", "down"):
            return m._direction
    return None


def set_initial_epoch(model: Any, epoch: int) -> None:
    """Make the running `fit()` start at `epoch` (as `BackupAndRestore` does)."""
    model._initial_epoch = epoch


def clear_initial_epoch(model: Any) -> None:
    """Undo `set_initial_epoch`, so a later `fit()` starts where it is told."""
    if getattr(model, "_initial_epoch", None) is not None:
        model._initial_epoch = None


def fit_callbacks(callback: Any) -> Any:
    """The `keras.callbacks.CallbackList` of the `fit()` whose `on_train_begin`
    is calling `callback`'s now (`None` when called another way)."""
    import keras

    frame = inspect.currentframe()
    try:
        for _ in range(8):  # CallbackList.on_train_begin is a caller or two up
            frame = frame and frame.f_back
            owner = frame and frame.f_locals.get("self")
            if isinstance(owner, keras.callbacks.CallbackList) and any(c is callback for c in owner.callbacks):
                return owner
        return None
    finally:
        del frame


class FitGuard:
    """Hears what the running `fit()` does, and the exception that ends it.

    `seen(hook, args)` after each of `_HOOKS` of `callback_list` that returns
    (`args`: its positional arguments); `failed(error, hook, args)` when a
    training step (`hook` "train_function") or one of those hooks raises an
    `Exception` or `KeyboardInterrupt` (then the error goes on). `remove()`
    puts everything back (also done before `failed`).
    """

    def __init__(self, model: Any, callback_list: Any, seen: Callable[[str, tuple], None],
                 failed: Callable[[BaseException, str, tuple], None]) -> None:
        self.model, self.callback_list, self.seen, self.failed = model, callback_list, seen, failed
        self.originals: dict[str, Any] = {}
        if callback_list is not None:
            for hook in _HOOKS:
                self.originals[hook] = getattr(callback_list, hook)
                setattr(callback_list, hook, self._wrap(hook, self.originals[hook], report=True))
        stale = getattr(getattr(model, "train_function", None), "keras_best_guard", None)
        if stale is not None:  # an earlier fit() that ended without telling its callbacks
            stale.remove()
        self.train_function = getattr(model, "train_function", None)
        if self.train_function is not None:
            model.train_function = self._wrap("train_function", self.train_function, report=False)

    def _wrap(self, hook: str, original: Callable[..., Any], report: bool) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                out = original(*args, **kwargs)
            except (Exception, KeyboardInterrupt) as e:
                self.remove()
                self.failed(e, hook, args)
                raise
            if report:
                self.seen(hook, args)
            return out

        guarded.keras_best_guard = self  # type: ignore[attr-defined]
        return guarded

    def remove(self) -> None:
        """Put back the hooks and `model.train_function` (those still ours)."""
        for hook, original in self.originals.items():
            if getattr(getattr(self.callback_list, hook, None), "keras_best_guard", None) is self:
                setattr(self.callback_list, hook, original)
        self.originals = {}
        if getattr(getattr(self.model, "train_function", None), "keras_best_guard", None) is self:
            self.model.train_function = self.train_function
