"""Host copies of Keras variables and tensors, on every backend.

One host copy of each variable, as cheap as `[v.numpy() for v in weights]`:
into an array already mapped when the caller hands one (`read_into`), many
small TensorFlow variables in one traced call (`BatchReader`), JAX arrays
copied to the host all at once (`start_host_copies`).

Keras/TensorFlow internals used here: a TensorFlow variable's resource handle
(`variable._value`, read with `read_value()`) and the
`tensorflow.python` resource-variable types; pinned by `tests/test_h5_layout.py`
and `tests/test_buffers.py`.

Example:
    >>> read_into([np.zeros(2)], [None])  # doctest: +SKIP
    [array([0., 0.])]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def read_into(variables: list[Any], out: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
    """One host copy of each variable (or tensor), into its array of `out`
    when it fits (one copy, in memory already mapped), else a new array."""
    if backend() in ("jax", "torch"):  # a host view of each value, copied into `out`
        values = [v.value if is_variable(v) else v for v in variables]
        start_host_copies(values)
        return [_copy_into(host_view(x), o) for x, o in zip(values, out or [None] * len(values))]
    if out is None:
        return [host_copy(v) for v in variables]
    plain = _plain_variable_types()
    if plain is None:
        return [host_copy(v) for v in variables]
    arrays = []
    for v, o in zip(variables, out):
        handle = getattr(v, "_value", None)
        arrays.append(_copy_into(handle.read_value(), o) if isinstance(handle, plain[0]) else host_copy(v))
    return arrays


class HostValue:
    """A variable whose host copy is taken only when asked (`np.asarray(it)`),
    so that a file can be written one variable at a time, with no copy of the
    whole model (in the training thread: the variable is read then)."""

    __slots__ = ("variable",)

    def __init__(self, variable: Any) -> None:
        self.variable = variable

    @property
    def nbytes(self) -> int:
        """The size of its host copy."""
        return int(np.prod(self.shape, dtype=np.int64)) * _itemsize(self.variable.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of its host copy (bfloat16 and float8 through `ml_dtypes`, as Keras reads them)."""
        import ml_dtypes

        name = str(getattr(self.variable.dtype, "name", self.variable.dtype))
        return np.dtype(getattr(ml_dtypes, name, name))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = host_copy(self.variable)
        return a if dtype is None else a.astype(dtype, copy=False)


def nbytes_of(variables: list[Any]) -> int:
    """The bytes of one host copy of each variable (counted once)."""
    return sum(HostValue(v).nbytes for v in {id(v): v for v in variables}.values())


def _itemsize(dtype: Any) -> int:
    name = str(getattr(dtype, "name", dtype))
    try:
        return np.dtype(name).itemsize
    except TypeError:  # bfloat16, float8... without ml_dtypes registered: their bit width
        digits = "".join(c for c in name if c.isdigit())
        return max(1, int(digits or 32) // 8)


class BatchReader:
    """Reads many TensorFlow variables in one `tf.function` call.

    `[v.numpy() for v in variables]` costs two eager ops per variable (tens
    of microseconds each): most of the snapshot time of a model with hundreds
    of small variables (a CNN with BatchNorm). One traced function returning
    every value costs one call; the host copies are the same. Used only for
    plain (non-distributed) TensorFlow variables; otherwise, and for a few
    variables, each is read on its own (`read_into`).
    """

    MIN_VARIABLES = 16

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._fn: Any = None

    def __call__(self, variables: list[Any], out: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
        if len(variables) < self.MIN_VARIABLES:
            return read_into(variables, out)
        handles = [getattr(v, "_value", None) for v in variables]
        key = tuple(id(h) for h in handles)
        if key != self._key:
            self._fn, self._key = _batch_read_function(handles), key
        if self._fn is None:
            return read_into(variables, out)
        if out is None:
            return [t.numpy() for t in self._fn()]
        return [_copy_into(t, o) for t, o in zip(self._fn(), out)]


def host_view(tensor: Any) -> np.ndarray:
    """A JAX or torch tensor on the host, over the tensor's own buffer where it
    can be (CPU): copy from it at once, never keep it. torch tensors are
    detached from their gradient and read with `.numpy()` (NumPy 2 warns when
    `np.array()` reads them); anything else goes through `convert_to_numpy`."""
    import keras

    name = keras.backend.backend()
    if name == "torch" and hasattr(tensor, "detach"):
        t = tensor.detach()
        if str(t.dtype) != "torch.bfloat16":
            return (t if t.device.type == "cpu" else t.cpu()).numpy()
    elif name == "jax" and not isinstance(tensor, (list, tuple)):
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


def host_copy(value: Any) -> np.ndarray:
    """One host copy of a variable or tensor (on TensorFlow `convert_to_numpy`
    makes two; on JAX and torch it makes one, detached from any gradient, and
    `KerasVariable.numpy()` would warn under NumPy 2)."""
    if isinstance(value, np.ndarray):
        return value  # save_own_variables made it (e.g. `variable.numpy()`)
    if backend() != "tensorflow":
        return np.array(host_view(value.value if is_variable(value) else value), copy=True)
    numpy = getattr(value, "numpy", None)
    if numpy is not None:
        out = numpy()
        if isinstance(out, np.ndarray):
            return out
        return np.asarray(out)
    from keras import ops

    return np.asarray(ops.convert_to_numpy(value))


_VARIABLE_TYPES: list[type] = []


def is_variable(value: Any) -> bool:
    """Whether `value` is a `keras.Variable`."""
    if not _VARIABLE_TYPES:
        import keras

        _VARIABLE_TYPES.append(keras.Variable)
    return isinstance(value, _VARIABLE_TYPES[0])


def backend() -> str:
    import keras

    return keras.backend.backend()


# ----------------------------------------------------------------- internals
def _plain_variable_types() -> tuple[type, type] | None:
    """`(BaseResourceVariable, ResourceVariable)` when variables can be read as
    plain TensorFlow resource variables (TensorFlow backend, no strategy in
    scope), else `None`. The base class also covers variables made inside a
    `tf.function` (optimizer slots built by `fit()`)."""
    if backend() != "tensorflow":
        return None
    import tensorflow as tf
    from tensorflow.python.ops.resource_variable_ops import BaseResourceVariable, ResourceVariable

    return None if tf.distribute.has_strategy() else (BaseResourceVariable, ResourceVariable)


def _copy_into(tensor: Any, out: np.ndarray | None) -> np.ndarray:
    """`tensor` on the host, copied into `out` when it fits (one copy, in memory
    already mapped), else a new array."""
    view = np.asarray(tensor)  # an EagerTensor's own buffer: no copy
    if out is not None and view.shape == out.shape and view.dtype == out.dtype and out.flags.writeable:
        np.copyto(out, view)
        return out
    return np.array(view, copy=True)


def _batch_read_function(handles: list[Any]) -> Any:
    """A traced function returning the values of `handles`, or `None` when
    they are not all plain TensorFlow resource variables (TensorFlow is
    imported only on its own backend)."""
    plain = _plain_variable_types()
    if plain is None or not all(type(h) is plain[1] for h in handles):
        return None  # other backends, distributed / sync-on-read variables: read each the usual way
    import tensorflow as tf

    @tf.function(autograph=False)
    def read_all():
        return [h.read_value() for h in handles]

    return read_all
