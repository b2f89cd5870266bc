"""Parts of a training state beyond the model and its optimizer.

- every other Keras optimizer the model tracks (`keras_best.keras_adapter.tracked`:
  the GAN's `d_optimizer` and `g_optimizer`), group "optimizers/PATH", PATH
  being its path in the model's `.weights.h5` file;
- the objects of the `state=` option, group "state/NAME": a Keras model (its
  weights), a Keras optimizer, a `keras.random.SeedGenerator`, or any object
  with `get_state()`/`set_state()` or `state_dict()`/`load_state_dict()`
  (torch optimizers and LR schedulers).

A Keras optimizer is saved with the indices of the variables it was built for
among the run's models' weights (attr "built_for"), so a resumed run builds
an optimizer that is not built yet for the same variables before assigning
its slots (a Keras optimizer cannot take slots before it is built).
`get_state()` and `state_dict()` values (nested dicts, lists, tuples, numbers,
strings, numpy arrays, torch tensors) are stored as a JSON structure (the
UTF-8 dataset "structure") and one dataset per array ("0", "1", ...).

Example:

    check({"d_opt": d_opt, "sched": scheduler})  # at construction: refuses what cannot be saved
    extra = parts_for(model, model.optimizer, tracked_optimizers(model), {"d_opt": d_opt})
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from keras_best.keras_adapter.tracked import built_for, tracked_optimizers
from keras_best.storage.buffers import HostBuffers
from keras_best.training_state.parts import Variables
from keras_best.training_state.state import StatePart

__all__ = ["check", "kind_of", "parts_for", "tracked_optimizers", "KerasOptimizer", "ObjectState"]
_PROTOCOLS = (("get_state", "set_state"), ("state_dict", "load_state_dict"))


def kind_of(name: str, obj: Any) -> str:
    """What `state[name]` is: "model", "optimizer", "seed", "get_state" or
    "state_dict"; a `TypeError` naming the fix for anything else."""
    import keras

    for kind, cls in (("model", keras.Model), ("optimizer", keras.optimizers.Optimizer),
                      ("seed", keras.random.SeedGenerator)):
        if isinstance(obj, cls):
            return kind
    for get, put in _PROTOCOLS:
        if callable(getattr(obj, get, None)) and callable(getattr(obj, put, None)):
            return get
    raise TypeError(
        f"`state[{name!r}]` cannot be saved in the training state: a {type(obj).__name__} is neither a "
        "Keras model, optimizer or `keras.random.SeedGenerator`, nor has `get_state()`/`set_state()` or "
        "`state_dict()`/`load_state_dict()`. Pass one of those, or give the object these two methods "
        f"(returning and taking numbers, strings, arrays and lists/dicts of them). Received: {obj!r}")


def check(state: Mapping[str, Any] | None) -> None:
    """Refuse (at construction) an object of `state=` that cannot be saved: one
    of no known kind, or whose `get_state()`/`state_dict()` holds a value that
    cannot be stored."""
    for name, obj in (state or {}).items():
        kind = kind_of(name, obj)
        if kind in ("get_state", "state_dict"):
            try:
                _encode(getattr(obj, kind)(), [])
            except TypeError as e:
                raise TypeError(f"`state[{name!r}]`.{kind}() {e} Make it return numbers, strings, None, "
                                "numpy arrays or torch tensors, in dicts, lists and tuples.") from None


def parts_for(model: Any, optimizer: Any, tracked: Sequence[tuple[str, Any]],
              state: Mapping[str, Any] | None) -> list[StatePart]:
    """The parts for the tracked optimizers other than `optimizer` (the one in
    group "optimizer") and `model.optimizer` (which `optimizer=` replaces), and
    for the objects of `state=` (an object given there is saved under its name
    only; the model and `optimizer` are saved already)."""
    state = {n: o for n, o in (state or {}).items() if o is not model and o is not optimizer}
    explicit = {id(o) for o in state.values()}

    def known() -> list[Any]:  # the variables an optimizer may be built for
        models = [model] + [o for o in state.values() if kind_of("", o) == "model"]
        return list({id(v): v for m in models for v in m.weights}.values())

    skip = {id(optimizer), id(getattr(model, "optimizer", None)), *explicit}  # `optimizer=` replaces model.optimizer
    out: list[StatePart] = [KerasOptimizer(f"optimizers/{path}", opt, known, required=False)
                            for path, opt in tracked if id(opt) not in skip]
    for name, obj in state.items():
        kind, group = kind_of(name, obj), f"state/{name}"
        if kind == "model":
            out.append(Variables(group, obj.weights))
        elif kind == "optimizer":
            out.append(KerasOptimizer(group, obj, known, required=True))
        elif kind == "seed":
            out.append(Variables(group, [obj.state]))
        else:
            out.append(ObjectState(group, obj, kind))
    return out


class KerasOptimizer(Variables):
    """A Keras optimizer other than the model's, with the variables it was
    built for (see the module docstring). `required=False`: a state without
    its group (written before it was saved) leaves it as it is, with a warning."""

    def __init__(self, name: str, optimizer: Any, known: Callable[[], list[Any]], required: bool) -> None:
        super().__init__(name, list(optimizer.variables))
        self.optimizer, self.known, self.required = optimizer, known, required

    def copies(self, buffers: HostBuffers, reuse: Mapping[int, np.ndarray] | None) -> dict[str, np.ndarray]:
        out = super().copies(buffers, reuse)
        trained = built_for(self.optimizer)
        if trained is not None:
            index = {id(v): i for i, v in enumerate(self.known())}
            if any(id(v) not in index for v in trained):
                raise ValueError(
                    f"The optimizer saved as {self.name!r} trains variables of no model the training state "
                    "holds, so a resumed run could not build it for them. Pass the model it trains in "
                    "`state=` too, e.g. state={'discriminator': discriminator, ...}.")
            out["built_for"] = np.array([index[id(v)] for v in trained], np.int64)
        return out

    def write(self, group: Any, copies: Mapping[str, np.ndarray]) -> None:
        copies = dict(copies)
        trained = copies.pop("built_for", None)
        super().write(group, copies)
        if trained is not None:
            group.attrs["built_for"] = trained

    def read(self, group: Any, where: str) -> list[np.ndarray] | None:
        if group is None and not self.required:
            warnings.warn(f"{where} holds no state for the optimizer {self.name[len('optimizers/'):]!r} "
                          "(written by an older keras-best?): it goes on as it is.", stacklevel=4)
            return None
        if group is not None and "built_for" in group.attrs and not getattr(self.optimizer, "built", False):
            known, indices = self.known(), [int(i) for i in group.attrs["built_for"]]
            if any(not 0 <= i < len(known) for i in indices):
                raise ValueError(f"Cannot resume: {where} built the optimizer {self.name!r} for variables "
                                 "this model does not have. Was it recorded with another architecture?")
            self.optimizer.build([known[i] for i in indices])  # before its slots are assigned
            self.variables = self.saved = list(self.optimizer.variables)
        return super().read(group, where)

    def assign(self, values: Sequence[np.ndarray] | None) -> None:
        if values is not None:
            super().assign(values)


class ObjectState:
    """An object with `get_state()`/`set_state()` or `state_dict()`/`load_state_dict()`."""

    def __init__(self, name: str, obj: Any, kind: str) -> None:
        self.name, self.obj = name, obj
        self.get, self.put = next(p for p in _PROTOCOLS if p[0] == kind)

    def copies(self, buffers: HostBuffers, reuse: Mapping[int, np.ndarray] | None) -> dict[str, np.ndarray]:
        arrays: list[np.ndarray] = []
        structure = _encode(getattr(self.obj, self.get)(), arrays)
        encoded = np.frombuffer(json.dumps(structure).encode(), np.uint8)
        return {"structure": encoded, **{str(i): a for i, a in enumerate(arrays)}}

    def write(self, group: Any, copies: Mapping[str, np.ndarray]) -> None:
        for key, a in copies.items():
            group.create_dataset(key, data=a)

    def read(self, group: Any, where: str) -> Any:
        if group is None:
            raise ValueError(f"Cannot resume: {where} holds no {self.name!r}. Was it added to `state=` after "
                             "the run started? Remove it, or start a new run (another directory).")
        saved = _decode(json.loads(group["structure"][()].tobytes().decode()), group)
        live = getattr(self.obj, self.get)()
        if isinstance(saved, dict) and isinstance(live, dict) and set(saved) != set(live):
            raise ValueError(f"Cannot resume: {where} holds a {self.name!r} with keys {sorted(map(str, saved))}, "
                             f"but the object has {sorted(map(str, live))}. Pass the same kind of object.")
        return saved

    def assign(self, value: Any) -> None:
        getattr(self.obj, self.put)(value)


# --------------------------------------------------- get_state() structures
def _encode(value: Any, arrays: list[np.ndarray]) -> Any:
    """A JSON structure for `value`, its arrays appended to `arrays`."""
    torch = sys.modules.get("torch")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {"dict": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__ if type(value) in (list, tuple) else "list": [_encode(v, arrays) for v in value]}
    if torch is not None and isinstance(value, torch.Tensor):
        arrays.append(value.detach().cpu().numpy().copy())
        return {"tensor": len(arrays) - 1}
    if isinstance(value, (np.ndarray, np.generic)):
        arrays.append(np.array(value))
        return {"array" if isinstance(value, np.ndarray) else "scalar": len(arrays) - 1}
    raise TypeError(f"holds a {type(value).__name__} ({value!r}), which cannot be stored.")


def _decode(node: Any, group: Any) -> Any:
    if not isinstance(node, dict):
        return node
    (kind, body), = node.items()
    if kind == "dict":
        return {_decode(k, group): _decode(v, group) for k, v in body}
    if kind in ("list", "tuple"):
        items = [_decode(v, group) for v in body]
        return tuple(items) if kind == "tuple" else items
    data = np.array(group[str(body)][()])
    if kind == "tensor":
        import torch

        return torch.from_numpy(data)
    return data[()] if kind == "scalar" else data

