"""The resumable training state: model and optimizer variables in one h5 file.

Variables are stored in the order of `model.weights` and
`optimizer.variables`, which is stable for the same code, with their shapes
checked on load. Kept apart from the Keras weights format on purpose: it must
hold an optimizer that the model does not own (custom loops).
"""

from __future__ import annotations

from typing import Any, Sequence

import h5py
import numpy as np

from keras_best import files

LAST_NAME = files.LAST_NAME


def optimizer_variables(optimizer: Any, model: Any) -> list[Any]:
    """The optimizer's variables, building it first when needed."""
    if optimizer is None:
        return []
    if not getattr(optimizer, "built", True):
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


def write(path: str, model_arrays: Sequence[np.ndarray], optimizer_arrays: Sequence[np.ndarray], epoch: int, step: int | None) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["epoch"] = epoch
        f.attrs["step"] = -1 if step is None else step
        for group_name, arrays in (("model", model_arrays), ("optimizer", optimizer_arrays)):
            group = f.create_group(group_name)
            group.attrs["count"] = len(arrays)
            for i, a in enumerate(arrays):
                group.create_dataset(str(i), data=a)


def load(path: str, model: Any, optimizer: Any) -> tuple[int, int | None]:
    """Assign the saved variables to `model` and `optimizer`; return (epoch, step)."""
    with files.local_copy(path) as local, h5py.File(local, "r") as f:
        _assign(f["model"], list(model.weights), "model", path)
        _assign(f["optimizer"], optimizer_variables(optimizer, model), "optimizer", path)
        step = int(f.attrs["step"])
        return int(f.attrs["epoch"]), (None if step < 0 else step)


def _assign(group: Any, variables: list[Any], what: str, path: str) -> None:
    count = int(group.attrs["count"])
    if what == "optimizer" and not variables and count:
        raise ValueError(
            f"{path} holds optimizer state but no optimizer was given. Pass "
            "`optimizer=` to the tracker (or compile the model) to resume training."
        )
    if count != len(variables):
        raise ValueError(
            f"Cannot resume: {path} holds {count} {what} variables but the {what} "
            f"has {len(variables)}. Was the run recorded with another architecture "
            "or optimizer?"
        )
    for i, v in enumerate(variables):
        data = group[str(i)]
        if tuple(data.shape) != tuple(v.shape):
            raise ValueError(
                f"Cannot resume: {what} variable {i} ({v.path if hasattr(v, 'path') else v.name}) "
                f"has shape {tuple(v.shape)} but {path} holds {tuple(data.shape)}."
            )
    for i, v in enumerate(variables):
        v.assign(group[str(i)][()])
