"""A model's `.weights.h5` layout, captured with Keras's own walker.

`model.save_weights` walks the model's object tree (every attribute of every
layer) on each call, converts each variable with `convert_to_numpy` (two host
copies) and writes the file, all in the caller's thread. Here the walk is
done once:

1. `Layout.capture(model)`: walk the tree with Keras's walker
   (`saving_lib._save_state`) and a recording `H5IOStore`, and remember which
   object owns which group of the file (the model, its layers, nested layers,
   the optimizer when `model.optimizer` is set, metrics...).
2. `Layout.read()`: ask each owner for its variables again
   (`save_own_variables`, so quantized, LoRA or custom layers hand over what
   they would save) and take one host copy of each, in the training thread
   (see `host`). The `.weights.h5` engine (`keras_best.engines.weights_h5`)
   writes the file from these copies, in any thread.

This module also holds the other Keras internals keras-best needs to save and
check a model: the `.keras` archive's config and metadata JSON and member
names, the input signature `model.export` traces, whether an optimizer was
built for a model (EMA pairs and the global seed generator: `keras_adapter.state`). With `host` and
`fit`, the `keras_adapter` folder is the only place that touches Keras or
TensorFlow internals (`tests/test_architecture.py` checks it);
`tests/test_h5_layout.py` and `tests/test_archive.py` pin it against the
installed Keras: the files must have the same groups, attributes, datasets
and values as `save_weights`'s (and the archives the members of
`model.save`'s), and load with stock `model.load_weights` /
`keras.models.load_model`.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, NamedTuple

import numpy as np

from keras_best.keras_adapter.host import BatchReader, HostValue, host_copy, is_variable, read_into


class LayoutError(RuntimeError):
    """The model's weights layout could not be captured (keras-best falls back
    to `model.save_weights`)."""


class LayoutCopy(NamedTuple):
    """Host copies of a model's saved variables, in `.weights.h5` order.

    Attributes:
        groups: `(group_path, attrs, [(key, array), ...])` in creation order;
            `attrs` is `None` for a group Keras creates without metadata.
        by_variable: `id(variable) -> array` for every variable that was read
            (so other files of the same update can reuse the same copies).
        read: the arrays copied from variables (the ones `free_for` may lend).
    """

    groups: list[tuple[str, dict[str, Any] | None, list[tuple[str, np.ndarray]]]]
    by_variable: dict[int, np.ndarray]
    read: list[np.ndarray]


class Layout:
    """Which object saves which group of a model's `.weights.h5` file.

    Captured once per model and re-captured when the model gains or changes
    its optimizer or its variables (see `fingerprint`).
    """

    def __init__(self, model: Any, refuse_assets: bool = False) -> None:
        self.model = model
        self.fingerprint = fingerprint(model)
        # `owners`: (save, group path, metadata); `objects`: the object saving each, in the same order.
        self.owners, self.objects = _capture_owners(model, refuse_assets)
        self._read = BatchReader()

    @classmethod
    def capture(cls, model: Any, refuse_assets: bool = False) -> Layout:
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
            return cls(model, refuse_assets)
        except LayoutError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means: use save_weights
            raise LayoutError(f"cannot capture the weights layout of {type(model).__name__}: {e!r}") from e

    def is_current(self) -> bool:
        return fingerprint(self.model) == self.fingerprint

    def read(self, free_for: Callable[[list[Any]], list[np.ndarray | None]] | None = None,
             stream: bool = False) -> LayoutCopy:
        """Host copies of every saved variable, grouped as in the file; a
        variable is copied into its array of `free_for(variables)` when that
        fits (e.g. `HostBuffers.free_for`). With `stream`, no copy: each
        variable is a `HostValue`, read when it is written."""
        store = _RecordingStore()
        for save, path, metadata in self.owners:
            save(store.make(path, metadata))
        return store.copy(_deferred if stream else self._read, None if stream else free_for)


def _deferred(variables: list[Any], out: Any = None) -> list[Any]:
    return [HostValue(v) for v in variables]


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


def load_weights(model: Any, path: str, model_only: bool = False) -> None:
    """`model.load_weights(path)`; with `model_only`, the optimizer's
    variables keep their values (Keras's `load_weights_only(...,
    objects_to_skip=)`, where this Keras has it; else they are put back)."""
    optimizer = getattr(model, "optimizer", None)
    if not model_only or optimizer is None or not getattr(optimizer, "variables", None):
        model.load_weights(path)
        return
    load = _saving_lib().load_weights_only
    if path.endswith((".weights.h5", ".keras")) and "objects_to_skip" in inspect.signature(load).parameters:
        load(model, path, objects_to_skip=[optimizer])
        return
    kept = [host_copy(v) for v in optimizer.variables]
    model.load_weights(path)
    for v, a in zip(optimizer.variables, kept):
        v.assign(a)


# ----------------------------------------------------------------- internals
def _saving_lib():
    from keras.src.saving import saving_lib

    return saving_lib


def _capture_owners(model: Any, refuse_assets: bool = False) -> tuple[list[Any], list[Any]]:
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
    return store.owners, store.objects


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
            self.objects: list[Any] = []
            self._recorder = _KeysOnlyStore()

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
            self.objects.append(owner)
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

    Variables are read together at the end (`copy`), in one call when
    there are many (see `host.BatchReader`); other values are converted at once.
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
        if is_variable(value):  # alive as long as the model: its id is stable
            slot = self._index.get(id(value))
            if slot is None:
                slot = self._index[id(value)] = _Unread(len(self._variables))
                self._variables.append(value)
            self._entries.append((key, slot))
        else:
            self._entries.append((key, host_copy(value)))

    def __getitem__(self, key: str) -> np.ndarray:
        for k, v in self._entries or ():
            if k == key:
                return host_copy(self._variables[v.index]) if isinstance(v, _Unread) else v
        raise KeyError(key)

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self._entries or ())

    def __len__(self) -> int:
        return len(self._entries or ())

    def keys(self) -> list[str]:
        return [k for k, _ in self._entries or ()]

    def __bool__(self) -> bool:
        return True

    def copy(self, read: Callable[..., list[np.ndarray]] = read_into,
             free_for: Callable[[list[Any]], list[np.ndarray | None]] | None = None) -> LayoutCopy:
        """Read every recorded variable at once (into `free_for`'s arrays)."""
        out = free_for(self._variables) if free_for is not None else None
        arrays = read(self._variables, out)
        groups = [
            (path, attrs, [(k, arrays[v.index] if isinstance(v, _Unread) else v) for k, v in entries])
            for path, attrs, entries in self._groups
        ]
        return LayoutCopy(groups, {id(v): a for v, a in zip(self._variables, arrays)}, arrays)


class _KeysOnlyStore(_RecordingStore):
    """A `_RecordingStore` that keeps the keys it is given, not the values: the
    capture needs no value, and a stock optimizer's `save_own_variables` hands
    over `variable.numpy()` copies (one model size of Adam or momentum slots)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if self._entries is None:
            self._create_group(None)
        self._entries.append((key, None))


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
