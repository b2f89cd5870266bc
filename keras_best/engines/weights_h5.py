"""`.weights.h5` files, written from host copies with plain h5py.

The training thread takes one host copy of each saved variable, grouped as
`model.save_weights` groups them (`keras_adapter.h5_layout`: the layout is
captured once with Keras's own walker); `WeightsSnapshot.write` then writes
the groups, attributes and datasets exactly as Keras's `H5IOStore` does. It
touches no Keras object, so it runs in the background writer while training
goes on. A model whose layout cannot be captured falls back to
`model.save_weights` in the training thread, with one warning; so does,
silently, a model class that overrides `save_weights` (its own method is
called).

Example:
    >>> snapshot = WeightsEngine().snapshot(model)  # doctest: +SKIP
    >>> snapshot.write("best.weights.h5")  # in any thread  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from keras_best.core.formats import WEIGHTS
from keras_best.engines.base import Engine, LiveSnapshot, Snapshot
from keras_best.keras_adapter.h5_layout import Layout, LayoutCopy, LayoutError
from keras_best.storage import files
from keras_best.storage.buffers import HostBuffers


class WeightsSnapshot(Snapshot):
    """A `LayoutCopy` (host copies in `.weights.h5` order) held in the run's
    `HostBuffers` until `release()`, and written with plain h5py."""

    def __init__(self, copy: LayoutCopy, buffers: HostBuffers | None = None, stream: bool = False) -> None:
        self.groups = copy.groups
        # Streamed (`stream`): no host copy, each variable is read as it is
        # written, so `write` runs in the training thread.
        self.detached = not stream  # holds host arrays only: `write` may run in any thread
        self._by_variable = {} if stream else copy.by_variable
        # Held in `buffers` until `release()`: then reused by a later copy.
        self._read, self._buffers = copy.read, None if stream else buffers
        if self._buffers is not None:
            self._buffers.hold(copy.read)

    @property
    def by_variable(self) -> dict[int, np.ndarray]:
        return self._by_variable

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, _, entries in self.groups for _, a in entries)

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
            self.groups = self._by_variable = None  # type: ignore[assignment]

    def fill(self, f: Any) -> None:
        """Write the groups, attributes and datasets into the open h5py file `f`."""
        fill_groups(f, self.groups)


def fill_groups(f: Any, groups: Any) -> None:
    """Write `groups` (`(group_path, attrs, [(key, array), ...])`) into the open
    h5py file `f`, as Keras's `H5IOStore` writes them."""
    for group_path, attrs, entries in groups:
        group = f.create_group("vars") if not group_path else f.create_group(group_path).create_group("vars")
        for k, v in (attrs or {}).items():
            group.attrs[k] = v
        for key, value in entries:
            value = np.asarray(value)  # a streamed variable is read now (`HostValue`)
            if value.dtype.name == "bfloat16":  # h5py stores its bytes; Keras marks the dataset
                ds = group.create_dataset(key, data=value)
                ds.attrs["dtype"] = "bfloat16"
            else:
                group[key] = value


class OnWeights(Snapshot):
    """A snapshot made of a `WeightsSnapshot` and more (a `.keras` archive's
    JSON, a SavedModel twin): it shares the weights' host copies and lends
    them back on `release()`."""

    extra_bytes = 0  # host memory held beside the weights' copies

    def __init__(self, weights: WeightsSnapshot) -> None:
        self.weights = weights

    @property
    def detached(self) -> bool:  # type: ignore[override]
        """Host data only (unless streamed): `write` may run in any thread."""
        return self.weights.detached

    @property
    def by_variable(self) -> dict[int, np.ndarray]:
        return self.weights.by_variable

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes + self.extra_bytes

    def release(self) -> None:
        """Done with the host copies (see `WeightsSnapshot.release`)."""
        self.weights.release()


class WeightsWriter:
    """Snapshots of one model's weights, its layout captured once.

    Falls back to `model.save_weights` (in the calling thread) when the layout
    cannot be captured, with one warning. `WeightsWriter(refuse_assets=True,
    fallback="model.save")` is the one of `.keras` archives (see `keras_archive`).
    """

    def __init__(self, refuse_assets: bool = False, fallback: str = "model.save_weights",
                 buffers: HostBuffers | None = None) -> None:
        self._layout: Layout | None = None
        self._failed_for: int | None = None
        self._refuse_assets, self._fallback, self._buffers = refuse_assets, fallback, buffers

    def snapshot(self, model: Any, stream: bool = False) -> WeightsSnapshot | None:
        """A detached snapshot of `model` (its copies held in `buffers`; with
        `stream`, no copies and not detached), or `None` if it must be saved
        with `model.save_weights` in the calling thread."""
        if self._failed_for == id(model):
            return None
        layout = self._layout
        if layout is None or layout.model is not model or not layout.is_current():
            try:
                layout = self._layout = Layout.capture(model, self._refuse_assets)
            except LayoutError as e:
                self.refuse(model, e)
                return None
        buffers = self._buffers
        return WeightsSnapshot(layout.read(buffers.free_for if buffers is not None else None, stream), buffers,
                               stream)

    def refuse(self, model: Any, reason: BaseException) -> None:
        """From now on, `model` is saved in the calling thread: warn once."""
        self._failed_for, self._layout = id(model), None
        warnings.warn(
            f"keras-best saves this model with `{self._fallback}` in the training "
            f"thread ({reason}); background writes are off for it.",
            stacklevel=4,
        )


def _save_weights(model: Any, path: str) -> None:
    model.save_weights(path)


class WeightsEngine(Engine):
    """`.weights.h5` files, written from host copies (see `WeightsWriter`)."""

    format = WEIGHTS

    def __init__(self, buffers: HostBuffers | None = None) -> None:
        self._weights = WeightsWriter(buffers=buffers)

    def snapshot(self, model: Any, stream: bool = False) -> Snapshot:
        import keras

        if type(model).save_weights is not keras.Model.save_weights:
            return LiveSnapshot(model, _save_weights)  # the model's own save_weights
        snap = self._weights.snapshot(model, stream)
        return LiveSnapshot(model, _save_weights) if snap is None else snap
