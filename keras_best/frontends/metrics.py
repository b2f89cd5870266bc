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
        if _saw_nothing(value):
            raise ValueError(
                f"Metric {key!r} ({type(value).__name__}) has accumulated no values since its last "
                "reset_state(), so it reads 0.0, which is not a real value and could become the "
                "best. Update it in the validation step (and check that the validation data is "
                "not empty, e.g. a generator already exhausted) before update()."
            )
        value = value.result()
    if value is None:
        raise ValueError(f"Metric {key!r} is None. Pass a number, a scalar tensor or a keras Metric.")
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"Metric {key!r} must be a number, a scalar tensor or a keras Metric. "
            f"Received a string: {value!r}"
        )
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Metric {key!r} must be a number, not a bool. Received: {value!r}")
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"Metric {key!r} is too large to be a float. Received an int of "
                             f"{value.bit_length()} bits.") from None
    if isinstance(value, Mapping):
        raise ValueError(
            f"Metric {key!r} returned a dict ({sorted(value)}): pass its entries "
            "separately, e.g. `metrics={**metric.result()}`."
        )
    try:
        array = _to_numpy(value)
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


def _to_numpy(value: Any) -> np.ndarray:
    """A tensor of any backend (or an array-like) on the host, detached from
    any gradient."""
    if isinstance(value, (np.ndarray, np.generic, list, tuple)):
        return np.asarray(value)
    import keras

    if isinstance(value, keras.Variable):
        value = value.value
    return np.asarray(host_view(value))


def host_view(tensor: Any) -> np.ndarray:
    """A JAX or torch tensor on the host, over the tensor's own buffer where it
    can be (CPU): copy from it at once, never keep it. torch tensors are
    detached from their gradient and read with `.numpy()` (NumPy 2 warns when
    `np.array()` reads them); anything else goes through `convert_to_numpy`."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch" and hasattr(tensor, "detach"):
        t = tensor.detach()
        if str(t.dtype) != "torch.bfloat16":
            return (t if t.device.type == "cpu" else t.cpu()).numpy()
    elif backend == "jax" and not isinstance(tensor, (list, tuple)):
        return np.asarray(tensor)
    return keras.ops.convert_to_numpy(tensor)


def start_host_copies(tensors: list[Any]) -> None:
    """Start the device-to-host copy of every JAX array at once, so that with
    an accelerator the copies overlap, instead of one `host_view` waiting for
    each in turn (`jax.Array.copy_to_host_async`; on the CPU there is nothing
    to copy). torch tensors and TensorFlow variables are read one by one."""
    for t in tensors:
        start = getattr(t, "copy_to_host_async", None)
        if start is not None:
            start()


def _saw_nothing(metric: Any) -> bool:
    """True for a metric whose state says it saw nothing: a `keras.metrics.Mean`
    (and every mean-based metric: losses, accuracies...) whose `count` is 0."""
    count = getattr(metric, "count", None)
    if count is None or not hasattr(count, "shape") or tuple(count.shape) != ():
        return False
    try:

        return float(np.asarray(host_view(getattr(count, "value", count)))) == 0.0
    except Exception:  # noqa: BLE001 - a count we cannot read says nothing
        return False


def _is_metric(value: Any) -> bool:
    return callable(getattr(value, "result", None)) and callable(getattr(value, "reset_state", None))
