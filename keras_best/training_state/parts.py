"""Today's parts of a training state (`keras_best.training_state.state`).

- `Variables("model", model.weights)`: the model's weights, group "model";
- `Optimizer(optimizer, model)`: its variables, group "optimizer" (built first
  when needed). It holds an optimizer the model does not own (custom loops),
  which is why the state is not a Keras weights file;
- other optimizers and `state=` objects, groups "optimizers/PATH" and
  "state/NAME" (`keras_best.training_state.objects`);
- `RandomState(model)`: the random state, group "random" (`keras_best.training_state.rng`).

Variables are stored in the order of `model.weights` and
`optimizer.variables`, which is stable for the same code, as datasets "0",
"1", ... beside a "count" attr, their count and shapes checked on load.

With EMA (`keras_best.training_state.ema`), `swapped` names the (variable,
average) pairs whose values trade places in the state: the value of each
one's partner is saved in its place, so the state holds the raw weights in
the model and the averages in the optimizer however they are placed now.

Example:

    parts = for_model(model, model.optimizer)  # [p.name for p in parts]: model, optimizer, random
    epoch, step = state.load(path, parts)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np

from keras_best.storage.buffers import HostBuffers
from keras_best.training_state import rng
from keras_best.training_state.state import StatePart


def for_model(model: Any, optimizer: Any, *, random: bool = True, swapped: Sequence[tuple[Any, Any]] = (),
              extra: Sequence[StatePart] = ()) -> list[StatePart]:
    """The parts of a Keras run's state: weights, optimizer, the `extra` parts (other
    optimizers, `state=` objects: `keras_best.training_state.objects`) and (if
    `random`) random state."""
    parts: list[StatePart] = [Variables("model", model.weights, swapped), Optimizer(optimizer, model, swapped),
                              *extra]
    return parts + [RandomState(model)] if random else parts


def architecture_of(model: Any) -> str:
    """A fingerprint of the model's variables (shapes and dtypes, in order),
    recorded so that a run resumes only into the model it was made with."""
    spec = [(list(v.shape), str(getattr(v, "dtype", ""))) for v in model.weights]
    return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:16]


def check_architecture(model: Any, recorded: str | None, directory: str) -> None:
    """Refuse to resume the run in `directory` (`recorded`: its fingerprint) into another model."""
    if recorded and model.built and recorded != architecture_of(model):
        raise ValueError(
            f"Cannot resume {directory}: the model's architecture (weight shapes) differs from "
            "the one recorded there. Use the same model code, or another directory for a new run."
        )


def require_built(model: Any, resuming: str | None = None) -> None:
    """Refuse a model that has no weights yet: there is nothing to save, or (when
    `resuming` the run directory of that name) nothing to restore its weights into."""
    if model.built and (model.weights or resuming is not None):
        return
    if model.weights:  # e.g. a GAN subclass whose weights are its sub-models', never called itself
        raise ValueError(
            f"{type(model).__name__} has its weights but is not built (`model.built` is False), and Keras "
            "refuses to save or load the weights of a model that is not built. Build it: call it on a batch "
            "or `model.build(input_shape)`; a model without `call()` (its weights in sub-models, as a GAN) "
            "sets `self.built = True` at the end of its `__init__`.")
    if resuming is None:
        problem, then = "The model is not built yet (it has no weights), so there is nothing to save", "call update()"
    else:
        problem = f"Cannot resume {resuming}: the model is not built yet, so its weights cannot be restored"
        then = "create the tracker"
    raise ValueError(f"{problem}. Build it first (call it on a batch, or `model.build(input_shape)`), then {then}.")


def optimizer_variables(optimizer: Any, model: Any) -> list[Any]:
    """The optimizer's variables, building it first when needed."""
    if optimizer is None:
        return []
    if not getattr(optimizer, "built", True):
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


class Variables:
    """A list of variables, saved in order; each assigned its saved value on load.

    Args:
        name: the group of the state file, also the word in errors ("model").
        variables: the live variables.
        swapped: (variable, average) pairs whose values trade places in the state.
    """

    def __init__(self, name: str, variables: Sequence[Any], swapped: Sequence[tuple[Any, Any]] = ()) -> None:
        self.name = name
        self.variables = list(variables)
        partner = {id(a): b for pair in swapped for a, b in (pair, pair[::-1])}
        self.saved = [partner.get(id(v), v) for v in self.variables]  # whose value is saved for each

    def copies(self, buffers: HostBuffers, reuse: Mapping[int, np.ndarray] | None) -> dict[str, np.ndarray]:
        return {str(i): a for i, a in enumerate(buffers.copies(self.saved, reuse))}

    def write(self, group: Any, copies: Mapping[str, np.ndarray]) -> None:
        group.attrs["count"] = len(copies)
        for key, a in copies.items():
            group.create_dataset(key, data=np.asarray(a))  # a streamed variable is read now

    def read(self, group: Any, where: str) -> list[np.ndarray]:
        if group is None:
            raise KeyError(f"no {self.name!r} group")
        count = int(group.attrs["count"])
        self.check_count(count, where)
        values = []
        for i, v in enumerate(self.variables):
            data = group[str(i)]
            if tuple(data.shape) != tuple(v.shape):
                raise ValueError(
                    f"Cannot resume: {self.name} variable {i} ({v.path if hasattr(v, 'path') else v.name}) "
                    f"has shape {tuple(v.shape)} but {where} holds {tuple(data.shape)}."
                )
            values.append(data[()])
        return values

    def check_count(self, count: int, where: str) -> None:
        if count != len(self.variables):
            raise ValueError(
                f"Cannot resume: {where} holds {count} {self.name} variables but the {self.name} "
                f"has {len(self.variables)}. Was the run recorded with another architecture "
                "or optimizer?"
            )

    def assign(self, values: Sequence[np.ndarray]) -> None:
        for v, a in zip(self.variables, values):
            v.assign(a)


class Optimizer(Variables):
    """The variables of `optimizer` (built first when needed), group "optimizer"."""

    def __init__(self, optimizer: Any, model: Any, swapped: Sequence[tuple[Any, Any]] = ()) -> None:
        super().__init__("optimizer", optimizer_variables(optimizer, model), swapped)

    def check_count(self, count: int, where: str) -> None:
        if not self.variables and count:
            raise ValueError(
                f"{where} holds optimizer state but no optimizer was given. Pass "
                "`optimizer=` to the tracker (or compile the model) to resume training."
            )
        super().check_count(count, where)


class RandomState:
    """The random state (`keras_best.training_state.rng`), group "random"; a
    state without one leaves the random state as it is."""

    name = "random"

    def __init__(self, model: Any) -> None:
        self.model = model

    def copies(self, buffers: HostBuffers, reuse: Mapping[int, np.ndarray] | None) -> dict[str, np.ndarray]:
        return rng.capture(self.model)

    def write(self, group: Any, copies: Mapping[str, np.ndarray]) -> None:
        for key, a in copies.items():
            group.create_dataset(key, data=a)

    def read(self, group: Any, where: str) -> dict[str, np.ndarray]:
        return {} if group is None else {k: d[()] for k, d in group.items()}

    def assign(self, saved: Mapping[str, np.ndarray]) -> None:
        rng.restore(self.model, saved)
