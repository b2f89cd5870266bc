"""The resumable training state: model and optimizer variables in one h5 file.

Variables are stored in the order of `model.weights` and
`optimizer.variables`, which is stable for the same code, with their shapes
checked on load. Kept apart from the Keras weights format on purpose: it must
hold an optimizer that the model does not own (custom loops).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from keras_best.storage import files
from keras_best.training_state import rng

LAST_NAME = files.LAST_NAME


def optimizer_variables(optimizer: Any, model: Any) -> list[Any]:
    """The optimizer's variables, building it first when needed."""
    if optimizer is None:
        return []
    if not getattr(optimizer, "built", True):
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


def write(path: str, model_arrays: Sequence[np.ndarray], optimizer_arrays: Sequence[np.ndarray], epoch: int,
          step: int | None, random: Mapping[str, np.ndarray] | None = None) -> None:
    files.write_h5(path, lambda f: _fill(f, model_arrays, optimizer_arrays, epoch, step, random or {}))


def _fill(f: Any, model_arrays: Sequence[np.ndarray], optimizer_arrays: Sequence[np.ndarray], epoch: int,
          step: int | None, random: Mapping[str, np.ndarray]) -> None:
    f.attrs["epoch"] = epoch
    f.attrs["step"] = -1 if step is None else step
    for group_name, arrays in (("model", model_arrays), ("optimizer", optimizer_arrays)):
        group = f.create_group(group_name)
        group.attrs["count"] = len(arrays)
        for i, a in enumerate(arrays):
            group.create_dataset(str(i), data=a)
    if random:
        group = f.create_group("random")
        for name, a in random.items():
            group.create_dataset(name, data=a)


def load(path: str, model: Any, optimizer: Any, random: bool = True) -> tuple[int, int | None]:
    """Assign the saved variables to `model` and `optimizer` (and, if
    `random`, the saved random state: `keras_best.training_state.rng`); return (epoch, step).

    Everything is read and checked first: when the file is damaged or does
    not fit, nothing is assigned (the model keeps its weights)."""
    targets = [(list(model.weights), "model"), (optimizer_variables(optimizer, model), "optimizer")]
    try:
        with files.local_copy(path) as local, h5py.File(local, "r") as f:
            arrays = [_read(f[what], variables, what, path) for variables, what in targets]
            step = int(f.attrs["step"])
            epoch = int(f.attrs["epoch"])
            saved_random = {k: d[()] for k, d in f["random"].items()} if "random" in f else {}
    except (OSError, KeyError, TypeError) as e:
        raise files.DamagedFileError(
            f"Cannot resume from {path}: the training state there is damaged or incomplete ({e}). "
            "Pass resume=False to start a new run in that directory, or restore the file from a copy."
        ) from e
    for (variables, _), values in zip(targets, arrays):
        for v, a in zip(variables, values):
            v.assign(a)
    if random:
        rng.restore(model, saved_random)
    return epoch, (None if step < 0 else step)


def _read(group: Any, variables: list[Any], what: str, path: str) -> list[np.ndarray]:
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
    values = []
    for i, v in enumerate(variables):
        data = group[str(i)]
        if tuple(data.shape) != tuple(v.shape):
            raise ValueError(
                f"Cannot resume: {what} variable {i} ({v.path if hasattr(v, 'path') else v.name}) "
                f"has shape {tuple(v.shape)} but {path} holds {tuple(data.shape)}."
            )
        values.append(data[()])
    return values
