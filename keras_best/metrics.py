"""Read one float from whatever the user passes as a metric value."""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np


def read_value(key: str, value: Any) -> float:
    """Return `value` as a Python float.

    Accepts a `keras.metrics.Metric` (its `.result()` is read, the metric is
    not reset), a scalar tensor or numpy value, or a plain number.

    >>> read_value("val_loss", np.float32(0.5))
    0.5
    """
    if _is_metric(value):
        value = value.result()
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"Metric {key!r} must be a number, a scalar tensor or a keras Metric. "
            f"Received a string: {value!r}"
        )
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Metric {key!r} must be a number, not a bool. Received: {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        raise ValueError(
            f"Metric {key!r} returned a dict ({sorted(value)}): pass its entries "
            "separately, e.g. `metrics={**metric.result()}`."
        )
    try:
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    except Exception as e:  # noqa: BLE001 - report what we could not read
        raise ValueError(
            f"Cannot read metric {key!r} as a number. Received: {value!r} "
            f"of type {type(value).__name__}"
        ) from e
    if array.dtype.kind == "b":
        raise ValueError(f"Metric {key!r} must be a number, not a bool. Received: {value!r}")
    if array.size != 1 or array.dtype.kind not in "fiu":
        raise ValueError(
            f"Metric {key!r} must be a scalar number. Received a value of shape "
            f"{array.shape} and dtype {array.dtype}. Reduce it first (e.g. take the mean)."
        )
    return float(array.reshape(()))


def read_all(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Read every entry of `metrics` as a float (see `read_value`)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(
            "`metrics` must be a dict of name -> value, e.g. "
            f'{{"val_loss": val_loss_metric}}. Received: {type(metrics).__name__}'
        )
    return {str(k): read_value(str(k), v) for k, v in metrics.items()}


def direction_of(value: Any) -> str | None:
    """A Keras metric's own direction hint: "up", "down" or None.

    Keras 3 metrics carry it as the private `_direction` attribute; pinned by
    `tests/test_metrics.py`.
    """
    direction = getattr(value, "_direction", None) if _is_metric(value) else None
    return direction if direction in ("up", "down") else None


def _is_metric(value: Any) -> bool:
    return callable(getattr(value, "result", None)) and callable(getattr(value, "reset_state", None))
