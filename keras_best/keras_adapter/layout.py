"""How `keras.distribution` lays a model out, and its state as Orbax saves it.

`shards_variables(model)`: whether any variable of `model` is split over
several devices (a `ModelParallel` `LayoutMap` on JAX), so that no single host
array of it may be taken. `state_tree(variables)` nests backend values by
variable path, as `keras.Model.get_state_tree` does (that needs an optimizer;
this does not). `model_config(model)` is the `model_config` checkpointable of
`keras.callbacks.OrbaxCheckpoint` (`saving_lib._serialize_model_as_json`,
private in Keras), which `keras.models.load_model(directory)` reads.
"""

from __future__ import annotations

from typing import Any, Iterable


def shards_variables(model: Any) -> bool:
    """Whether the model has a variable whose value is split over devices (JAX only)."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    for v in getattr(model, "weights", ()):
        sharding = getattr(getattr(v, "value", None), "sharding", None)
        if sharding is not None and not sharding.is_fully_replicated:
            return True
    return False


def state_tree(variables: Iterable[Any]) -> dict[str, Any]:
    """`{path part: {...: value}}` of `variables` (their backend values, no copies)."""
    tree: dict[str, Any] = {}
    for v in variables:
        *head, last = v.path.split("/")
        node = tree
        for part in head:
            node = node.setdefault(part, {})
        if last in node:
            raise ValueError(f"The variable path {v.path!r} is found twice in the model: an Orbax save needs "
                             "unique paths. Give unique names to your layers (and other objects).")
        node[last] = v.value
    return tree


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{variable path: leaf}` of a nested `state_tree`."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def model_config(model: Any) -> dict[str, str]:
    """The `model_config` checkpointable Keras's `OrbaxCheckpoint` writes."""
    from keras.src.saving import saving_lib

    config_json, _ = saving_lib._serialize_model_as_json(model)
    return {"config": config_json}
