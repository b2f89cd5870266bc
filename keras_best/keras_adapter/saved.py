"""What each object of a model saves, by its group in a weights file (for partial restore).

Keras saves a model object by object (the model, each layer, nested layers, the
optimizer...), each under a group whose path is the object's place in the
model, named by class and position: `layers/dense_1`, `layers/functional/layers/conv2d`,
`optimizer` (never by the layer's name, which is not reproducible). An object's
variables are the group's `vars/0`, `vars/1`... `saved_objects(model)` lists,
from the walk `h5_layout.Layout` captures, each object with its group path and
the shape of each entry it would save; `load_own(obj, entries)` loads one
object's entries the way `model.load_weights` does (`load_own_variables`, so
quantized, LoRA or custom layers load as they save).

Example:
    >>> [o.path for o in saved_objects(model)]  # doctest: +SKIP
    ['', 'layers/dense', 'layers/dense_1', 'optimizer']
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from keras_best.keras_adapter.h5_layout import Layout


class Entry(NamedTuple):
    """One entry an object saves: its shape, and the variable's path when it is one."""

    shape: tuple[int, ...]
    name: str | None


class SavedObject(NamedTuple):
    """An object of a model as a weights file holds it.

    Attributes:
        obj: the object (a layer, the model, its optimizer...).
        path: its group in the file ("" for the model itself).
        entries: `key -> Entry` of what it saves (`"0"`, `"1"`... for variables).
    """

    obj: Any
    path: str
    entries: Mapping[str, Entry]


def saved_objects(model: Any) -> list[SavedObject]:
    """Every object `model.save_weights` would save, in the file's order (no
    variable is read)."""
    if not getattr(model, "built", False):
        raise ValueError(
            "You are loading weights into a model that has not yet been built. Try building "
            "the model first by calling it on some data or by using `build()`."
        )
    layout = Layout.capture(model)
    groups = {path: entries for path, _, entries in layout.read(stream=True).groups}
    out = []
    for obj, (_, path, _) in zip(layout.objects, layout.owners):
        entries = {}
        for key, value in groups.get(path, ()):
            variable = getattr(value, "variable", None)
            name = getattr(variable, "path", None) if variable is not None else None
            entries[key] = Entry(tuple(int(d) for d in np.shape(value)), name)  # `.shape`: nothing is read
        out.append(SavedObject(obj, path, entries))
    return out


def load_own(obj: Any, entries: Mapping[str, np.ndarray]) -> None:
    """Load `entries` (`key -> array`, as the file holds them) into `obj`, as
    `model.load_weights` loads each object."""
    obj.load_own_variables(dict(entries))
