"""Keras internals that `fit()` and its metrics need (no public way exists).

Pinned by `tests/test_callback.py` and `tests/test_metrics.py` against the
installed Keras:

- a Keras 3 metric's direction hint is the private `_direction` ("up"/"down");
- `fit()` starts at `model._initial_epoch` when it is set (what
  `keras.callbacks.BackupAndRestore` sets to resume).
"""

from __future__ import annotations

from typing import Any


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
    m = compiled_metric(model, monitor)
    return getattr(m, "_direction", None) if getattr(m, "_direction", None) in ("up", "down") else None


def compiled_metric(model: Any, monitor: str) -> Any:
    """The metric object of `model` that the log key `monitor` names (`val_`
    stripped), known before `fit()`'s first batch: in `model.metrics` (nested
    containers searched) or compiled into it (`compile(metrics=...)`, built or
    not, from the private `model._compile_metrics`); one with a direction first."""
    import keras

    name = monitor[4:] if monitor.startswith("val_") else monitor
    compiled = getattr(model, "_compile_metrics", None)
    declared = [getattr(compiled, a, None) for a in ("_user_metrics", "_user_weighted_metrics")]
    stack = list(getattr(model, "metrics", [])) + [m for d in declared if d for m in keras.tree.flatten(d)]
    found = None
    while stack:
        m = stack.pop()
        stack.extend(getattr(m, "metrics", []) if m is not None and not hasattr(m, "_direction") else [])
        if getattr(m, "name", None) == name and callable(getattr(m, "result", None)):
            if getattr(m, "_direction", None) in ("up", "down"):
                return m
            found = m
    return found


def set_initial_epoch(model: Any, epoch: int) -> None:
    """Make the running `fit()` start at `epoch` (as `BackupAndRestore` does)."""
    model._initial_epoch = epoch


def clear_initial_epoch(model: Any) -> None:
    """Undo `set_initial_epoch`, so a later `fit()` starts where it is told."""
    if getattr(model, "_initial_epoch", None) is not None:
        model._initial_epoch = None
