"""Write a Keras `.weights.h5` file from host arrays, with plain h5py.

`model.save_weights` walks the model's object tree (every attribute of every
layer) on each call, converts each variable with `convert_to_numpy` (two host
copies) and writes the file, all in the caller's thread. Here the three steps
are split:

1. `Layout.capture(model)`: walk the tree once, with Keras's own walker
   (`saving_lib._save_state`) and a recording `H5IOStore`, and remember which
   object owns which group of the file (the model, its layers, nested layers,
   the optimizer when `model.optimizer` is set, metrics...).
2. `Layout.snapshot()`: ask each owner for its variables again
   (`save_own_variables`, so quantized, LoRA or custom layers hand over what
   they would save) and take one host copy of each, in the training thread.
   This is as cheap as `[v.numpy() for v in model.weights]`.
3. `WeightsSnapshot.write(path)`: write the groups, attributes and datasets
   exactly as `H5IOStore` does. It touches no Keras object, so it can run in
   another thread while training goes on.

Every Keras internal used by keras-best is in this module (the weights
layout, and for `.keras` archives the model's config and metadata JSON and
the member names, see `archive`), and `tests/test_h5_layout.py` and
`tests/test_archive.py` pin it against the installed Keras: the files must
have the same groups, attributes, datasets and values as `save_weights`'s
(and the archives the members of `model.save`'s), and load with stock
`model.load_weights` / `keras.models.load_model`; `tests/test_archive.py`
also checks that no other module imports `keras.src`.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Iterator

import numpy as np

from keras_best.frontends.metrics import host_view, start_host_copies
from keras_best.storage import files
from keras_best.storage.buffers import HostBuffers


class LayoutError(RuntimeError):
    """The model's weights layout could not be captured (keras-best falls back
    to `model.save_weights`)."""


class WeightsSnapshot:
    """Host copies of a model's saved variables, in `.weights.h5` order.

    Attributes:
        groups: `(group_path, attrs, [(key, array), ...])` in creation order;
            `attrs` is `None` for a group Keras creates without metadata.
        by_variable: `id(variable) -> array` for every variable that was read
            (so other files of the same update can reuse the same copies).
    """

    detached = True  # holds host arrays only: `write` may run in any thread

    def __init__(self, groups: list[tuple[str, dict[str, Any] | None, list[tuple[str, np.ndarray]]]],
                 by_variable: dict[int, np.ndarray],
                 read: list[np.ndarray] | None = None, buffers: HostBuffers | None = None) -> None:
        self.groups = groups
        self.by_variable = by_variable
        # Held in `buffers` until `release()`: then reused by a later copy.
        self._read, self._buffers = read, buffers

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, _, entries in self.groups for _, a in entries)

    def arrays(self) -> Iterator[np.ndarray]:
        for _, _, entries in self.groups:
            for _, a in entries:
                yield a

    def write(self, path: str) -> None:
        """Write the `.weights.h5` file at local `path` (as `H5IOStore` does),
        then `release()` the arrays."""
        try:
            files.write_h5(path, self.fill)
        finally:
            self.release()

    def release(self) -> None:
        """Done with the arrays (once written, or never to be): a later copy
        may reuse them unless another holder still has them. Idempotent."""
        read, self._read = self._read, None
        if read is not None and self._buffers is not None:
            self._buffers.release(read)
            self.groups = self.by_variable = None  # type: ignore[assignment]

    def fill(self, f: Any) -> None:
        """Write the groups, attributes and datasets into the open h5py file `f`."""
        for group_path, attrs, entries in self.groups:
            group = f.create_group("vars") if not group_path else f.create_group(group_path).create_group("vars")
            for k, v in (attrs or {}).items():
                group.attrs[k] = v
            for key, value in entries:
                if _is_bfloat16(value):
                    ds = group.create_dataset(key, data=value)
                    ds.attrs["dtype"] = "bfloat16"
                else:
                    group[key] = value




class Layout:
    """Which object saves which group of a model's `.weights.h5` file.

    Captured once per model and re-captured when the model gains or changes
    its optimizer or its variables (see `fingerprint`).
    """

    def __init__(self, model: Any, refuse_assets: bool = False, buffers: HostBuffers | None = None) -> None:
        self.model = model
        self.fingerprint = fingerprint(model)
        self.owners = _capture_owners(model, refuse_assets)
        self._read = _BatchReader()
        self._buffers = buffers

    @classmethod
    def capture(cls, model: Any, refuse_assets: bool = False, buffers: HostBuffers | None = None) -> Layout:
        """The model's layout; `LayoutError` when Keras's walker cannot be used
        or, with `refuse_assets` (for `.keras` archives), when an object of the
        model saves assets (files beside the weights, e.g. a `StringLookup`'s
        vocabulary)."""
        if not getattr(model, "built", False):
            raise ValueError(
                "You are saving a model that has not yet been built. Try building the "
                "model first by calling it on some data or by using `build()`."
            )
        try:
            return cls(model, refuse_assets, buffers)
        except LayoutError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means: use save_weights
            raise LayoutError(f"cannot capture the weights layout of {type(model).__name__}: {e!r}") from e

    def is_current(self) -> bool:
        return fingerprint(self.model) == self.fingerprint

    def snapshot(self) -> WeightsSnapshot:
        """Host copies of every saved variable, grouped as in the file (into
        free arrays of `buffers`, held until the snapshot's `release()`)."""
        store = _RecordingStore()
        for save, path, metadata in self.owners:
            save(store.make(path, metadata))
        return store.snapshot(self._read, self._buffers)


def fingerprint(model: Any) -> tuple[Any, ...]:
    """Changes when the saved object tree may have changed: another optimizer,
    an optimizer built since, variables added to or removed from the model."""
    optimizer = getattr(model, "optimizer", None)
    return (
        id(optimizer),
        bool(getattr(optimizer, "built", False)),
        len(getattr(optimizer, "variables", ()) or ()) if optimizer is not None else 0,
        len(model.weights),
    )


class WeightsWriter:
    """Snapshots of one model's weights, its layout captured once.

    Falls back to `model.save_weights` (in the calling thread) when the layout
    cannot be captured, with one warning. `WeightsWriter(refuse_assets=True,
    fallback="model.save")` is the one of `.keras` archives (see `archive`).
    """

    def __init__(self, refuse_assets: bool = False, fallback: str = "model.save_weights",
                 buffers: HostBuffers | None = None) -> None:
        self._layout: Layout | None = None
        self._failed_for: int | None = None
        self._refuse_assets, self._fallback, self._buffers = refuse_assets, fallback, buffers

    def snapshot(self, model: Any) -> WeightsSnapshot | None:
        """A detached snapshot of `model`, or `None` if it must be saved with
        `model.save_weights` in the calling thread."""
        if self._failed_for == id(model):
            return None
        layout = self._layout
        if layout is None or layout.model is not model or not layout.is_current():
            try:
                layout = self._layout = Layout.capture(model, self._refuse_assets, self._buffers)
            except LayoutError as e:
                self.refuse(model, e)
                return None
        return layout.snapshot()

    def refuse(self, model: Any, reason: BaseException) -> None:
        """From now on, `model` is saved in the calling thread: warn once."""
        self._failed_for, self._layout = id(model), None
        warnings.warn(
            f"keras-best saves this model with `{self._fallback}` in the training "
            f"thread ({reason}); background writes are off for it.",
            stacklevel=4,
        )


def save_weights(model: Any, path: str) -> None:
    """`model.save_weights(path)` through the captured layout (for tests and tools)."""
    snap = WeightsWriter().snapshot(model)
    if snap is None:
        model.save_weights(path)
    else:
        snap.write(path)


def optimizer_fits(optimizer: Any, model: Any) -> bool:
    """Whether a built `optimizer` was built for `model`'s trainable variables
    (Keras keeps that list as the private `_trainable_variables`; pinned by
    `tests/test_h5_layout.py`). Unbuilt, or unknown: True."""
    if not getattr(optimizer, "built", False) or not model.built:
        return True
    built_for = getattr(optimizer, "_trainable_variables", None)
    if built_for is None:
        return True
    shapes = [tuple(v.shape) for v in built_for]
    return shapes == [tuple(v.shape) for v in model.trainable_variables]


def ema_pairs(optimizer: Any) -> list[tuple[Any, Any]]:
    """`(model variable, its moving average)` pairs of an optimizer built with
    `use_ema=True` (through a `LossScaleOptimizer`), else `[]`. Private in
    Keras: `_trainable_variables` and `_model_variables_moving_average`, the
    attributes `keras.callbacks.SwapEMAWeights` swaps."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not getattr(optimizer, "use_ema", False):
        return []
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    variables = getattr(optimizer, "_trainable_variables", None)
    if not averages or not variables or len(averages) != len(variables):
        return []
    return list(zip(variables, averages))


def global_seed_generator(create: bool = False) -> Any:
    """Keras's global `SeedGenerator` (what unseeded `keras.random` calls draw
    from), or `None` when none was made yet and not `create`. Private in
    Keras: `keras.src.random.seed_generator` and its global-state key."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    if create:
        return seed_generator.global_seed_generator()
    return global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)


def read_into(variables: list[Any], out: list[np.ndarray | None]) -> list[np.ndarray]:
    """One host copy of each variable, into its array of `out` when it fits
    (one copy, in memory already mapped), else a new array."""
    return _read_each(variables, out)


# ----------------------------------------------------------------- internals
def _saving_lib():
    from keras.src.saving import saving_lib

    return saving_lib


def _capture_owners(model: Any, refuse_assets: bool = False) -> list[tuple[Any, str, dict[str, Any] | None]]:
    """Run Keras's own walker with a store that records each `make()` call
    together with the `save_own_variables` of the object that receives it
    (and, with `refuse_assets`, an assets store that fails at the first object
    that would save assets)."""
    saving_lib = _saving_lib()
    store = _capturing_store_class()()
    assets = _refusing_assets_store_class()() if refuse_assets else None
    saving_lib._save_state(model, weights_store=store, assets_store=assets, inner_path="", visited_saveables=set())
    if not store.owners:
        raise LayoutError("Keras's walker visited nothing")
    return store.owners


_CAPTURING_STORE = None


def _capturing_store_class() -> type:
    """An `H5IOStore` subclass (Keras's walker checks the type) that records
    `(owner, path, metadata)` per `make()` instead of writing."""
    global _CAPTURING_STORE
    if _CAPTURING_STORE is not None:
        return _CAPTURING_STORE
    saving_lib = _saving_lib()

    class _CapturingStore(saving_lib.H5IOStore):
        def __init__(self) -> None:  # no file
            self.mode = "w"
            self.owners: list[tuple[Any, str, dict[str, Any] | None]] = []
            self._recorder = _RecordingStore()

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> Any:
            # `_save_state(saveable, ...)` calls
            # `saveable.save_own_variables(weights_store.make(path, metadata))`.
            caller = sys._getframe(1)
            owner = caller.f_locals.get("saveable")
            if caller.f_code.co_name != "_save_state" or owner is None:
                raise LayoutError(
                    "keras.src.saving.saving_lib._save_state changed: make() is called from "
                    f"{caller.f_code.co_name!r}"
                )
            save = _save_function(owner)
            if save is None:
                raise LayoutError(f"{type(owner).__name__} has no save_own_variables")
            self.owners.append((save, path, dict(metadata) if metadata else None))
            return self._recorder.make(path, metadata)

        def close(self) -> None:
            pass

    _CAPTURING_STORE = _CapturingStore
    return _CapturingStore


_REFUSING_ASSETS_STORE = None


def _refusing_assets_store_class() -> type:
    """A `DiskIOStore` subclass (Keras's walker checks the type) whose
    `make()`, called for each object with `save_assets`, raises `LayoutError`."""
    global _REFUSING_ASSETS_STORE
    if _REFUSING_ASSETS_STORE is None:
        class _RefusingAssetsStore(_saving_lib().DiskIOStore):
            def __init__(self) -> None:  # no temp directory
                pass

            def make(self, path: str) -> Any:
                owner = sys._getframe(1).f_locals.get("saveable")
                raise LayoutError(f"{type(owner).__name__} at {path or 'the model'!r} saves assets")

        _REFUSING_ASSETS_STORE = _RefusingAssetsStore
    return _REFUSING_ASSETS_STORE


def model_json(model: Any) -> tuple[str, str]:
    """`(config.json, metadata.json)` of `model`'s `.keras` archive, as
    `model.save` writes them (`saving_lib._serialize_model_as_json`)."""
    return _saving_lib()._serialize_model_as_json(model)


def export_signature(model: Any) -> Any:
    """The input signature `model.export` traces `model` with when given none
    (`export_utils.get_input_signature`)."""
    from keras.src.export.export_utils import get_input_signature

    return get_input_signature(model)


def archive_names() -> tuple[str, str, str]:
    """The names of a `.keras` archive's members, in `model.save`'s order:
    metadata, config, weights (Keras's own constants)."""
    lib = _saving_lib()
    return lib._METADATA_FILENAME, lib._CONFIG_FILENAME, lib._VARS_FNAME_H5


class _Unread:
    """A variable's place in a group until all variables are read at once."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _RecordingStore:
    """What `H5IOStore` does in write mode, into host arrays instead of a file.

    Variables are read together at the end (`snapshot`), in one call when
    there are many (see `_BatchReader`); other values are converted at once.
    """

    def __init__(self) -> None:
        self.mode = "w"
        self._groups: list[tuple[str, dict[str, Any] | None, list[tuple[str, Any]]]] = []
        self._variables: list[Any] = []
        self._index: dict[int, _Unread] = {}
        self._path = ""
        self._entries: list[tuple[str, Any]] | None = None

    def make(self, path: str, metadata: dict[str, Any] | None = None) -> _RecordingStore:
        self._path = path
        self._entries = None
        if metadata:  # H5IOStore creates a group with metadata at once...
            self._create_group(dict(metadata))
        return self  # ...and one without at the first variable (never when empty)

    def _create_group(self, attrs: dict[str, Any] | None) -> None:
        self._entries = []
        self._groups.append((self._path, attrs, self._entries))

    def __setitem__(self, key: str, value: Any) -> None:
        if self._entries is None:
            self._create_group(None)
        if _is_variable(value):  # alive as long as the model: its id is stable
            slot = self._index.get(id(value))
            if slot is None:
                slot = self._index[id(value)] = _Unread(len(self._variables))
                self._variables.append(value)
            self._entries.append((key, slot))
        else:
            self._entries.append((key, _host_copy(value)))

    def __getitem__(self, key: str) -> np.ndarray:
        for k, v in self._entries or ():
            if k == key:
                return _host_copy(self._variables[v.index]) if isinstance(v, _Unread) else v
        raise KeyError(key)

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self._entries or ())

    def __len__(self) -> int:
        return len(self._entries or ())

    def keys(self) -> list[str]:
        return [k for k, _ in self._entries or ()]

    def __bool__(self) -> bool:
        return True

    def snapshot(self, read: Callable[..., list[np.ndarray]] | None = None,
                 buffers: HostBuffers | None = None) -> WeightsSnapshot:
        out = buffers.free_for(self._variables) if buffers is not None else None
        arrays = (read or _read_each)(self._variables, out)
        if buffers is not None:
            buffers.hold(arrays)
        groups = [
            (path, attrs, [(k, arrays[v.index] if isinstance(v, _Unread) else v) for k, v in entries])
            for path, attrs, entries in self._groups
        ]
        by_variable = {id(v): a for v, a in zip(self._variables, arrays)}
        return WeightsSnapshot(groups, by_variable, arrays, buffers)


def _read_each(variables: list[Any], out: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
    if _backend() in ("jax", "torch"):  # a host view of each value, copied into `out`
        values = [v.value if _is_variable(v) else v for v in variables]
        start_host_copies(values)
        return [_copy_into(host_view(x), o) for x, o in zip(values, out or [None] * len(values))]
    if out is None:
        return [_host_copy(v) for v in variables]
    plain = _plain_variable_types()
    if plain is None:
        return [_host_copy(v) for v in variables]
    arrays = []
    for v, o in zip(variables, out):
        handle = getattr(v, "_value", None)
        arrays.append(_copy_into(handle.read_value(), o) if isinstance(handle, plain[0]) else _host_copy(v))
    return arrays


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _plain_variable_types() -> tuple[type, type] | None:
    """`(BaseResourceVariable, ResourceVariable)` when variables can be read as
    plain TensorFlow resource variables (TensorFlow backend, no strategy in
    scope), else `None`. The base class also covers variables made inside a
    `tf.function` (optimizer slots built by `fit()`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
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


class _BatchReader:
    """Reads many TensorFlow variables in one `tf.function` call.

    `[v.numpy() for v in variables]` costs two eager ops per variable (tens
    of microseconds each): most of the snapshot time of a model with hundreds
    of small variables (a CNN with BatchNorm). One traced function returning
    every value costs one call; the host copies are the same. Used only for
    plain (non-distributed) TensorFlow variables; otherwise, and for a few
    variables, each is read on its own.
    """

    MIN_VARIABLES = 16

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._fn: Any = None

    def __call__(self, variables: list[Any], out: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
        if len(variables) < self.MIN_VARIABLES:
            return _read_each(variables, out)
        handles = [getattr(v, "_value", None) for v in variables]
        key = tuple(id(h) for h in handles)
        if key != self._key:
            self._fn, self._key = _batch_read_function(handles), key
        if self._fn is None:
            return _read_each(variables, out)
        if out is None:
            return [t.numpy() for t in self._fn()]
        return [_copy_into(t, o) for t, o in zip(self._fn(), out)]


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


def _save_function(owner: Any) -> Any:
    """`owner.save_own_variables`, but for a stock optimizer one that hands over
    its variables (the stock one converts them itself, so its copies could not
    be shared with the training state of the same update)."""
    save = getattr(owner, "save_own_variables", None)
    if save is None:
        return None
    base = _base_optimizer_save()
    if base is not None and getattr(type(owner), "save_own_variables", None) is base:
        def save_optimizer(store: Any, owner: Any = owner) -> None:
            for i, variable in enumerate(owner.variables):
                store[str(i)] = variable

        return save_optimizer
    return save


_BASE_OPTIMIZER_SAVE: list[Any] = []


def _base_optimizer_save() -> Any:
    if not _BASE_OPTIMIZER_SAVE:
        try:
            from keras.src.optimizers.base_optimizer import BaseOptimizer

            _BASE_OPTIMIZER_SAVE.append(BaseOptimizer.save_own_variables)
        except (ImportError, AttributeError):
            _BASE_OPTIMIZER_SAVE.append(None)
    return _BASE_OPTIMIZER_SAVE[0]


def _host_copy(value: Any) -> np.ndarray:
    """One host copy of a variable or tensor (on TensorFlow `convert_to_numpy`
    makes two; on JAX and torch it makes one, detached from any gradient, and
    `KerasVariable.numpy()` would warn under NumPy 2)."""
    if isinstance(value, np.ndarray):
        return value  # save_own_variables made it (e.g. `variable.numpy()`)
    if _backend() != "tensorflow":
        return np.array(host_view(value.value if _is_variable(value) else value), copy=True)
    numpy = getattr(value, "numpy", None)
    if numpy is not None:
        out = numpy()
        if isinstance(out, np.ndarray):
            return out
        return np.asarray(out)
    from keras import ops

    return np.asarray(ops.convert_to_numpy(value))


_VARIABLE_TYPES: list[type] = []


def _is_variable(value: Any) -> bool:
    if not _VARIABLE_TYPES:
        import keras

        _VARIABLE_TYPES.append(keras.Variable)
    return isinstance(value, _VARIABLE_TYPES[0])


def _is_bfloat16(array: np.ndarray) -> bool:
    return array.dtype.name == "bfloat16"
