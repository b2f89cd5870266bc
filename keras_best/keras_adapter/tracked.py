"""The optimizers a model tracks, found as `model.save_weights` finds them.

A Keras `Model` subclass may hold optimizers as attributes (the Keras guide's
GAN: `self.d_optimizer`, `self.g_optimizer`, and `compile()` without an
optimizer, so `model.optimizer` is an unused default). `save_weights` walks
the model's object tree with `saving_lib._walk_saveable` (every attribute of
every Keras object, lists and dicts included) and saves each optimizer it
meets under its path ("d_optimizer", "generator/optimizer", ...). So does
`tracked_optimizers`, with the same paths, so a training state names them as
the weights file does. Private in Keras: `saving_lib._walk_saveable`,
`KerasSaveable` and `BaseOptimizer._trainable_variables` (which variables an
optimizer was built for), `Layer._flatten_layers` (`all_layers`); `tests/test_state_objects.py` pins them.
"""

from __future__ import annotations

from typing import Any


def tracked_optimizers(model: Any) -> list[tuple[str, Any]]:
    """`(path, optimizer)` of every Keras optimizer in `model`'s object tree,
    in `save_weights`'s order and with its paths (an optimizer's own inner
    optimizer, e.g. a `LossScaleOptimizer`'s, belongs to it: not listed)."""
    import keras
    from keras.src.saving import saving_lib
    from keras.src.saving.keras_saveable import KerasSaveable

    found: list[tuple[str, Any]] = []
    visited: set[int] = set()

    def visit(obj: Any, path: str) -> None:
        if isinstance(obj, KerasSaveable):
            if id(obj) in visited:
                return
            visited.add(id(obj))
            if isinstance(obj, keras.optimizers.Optimizer):
                found.append((path, obj))
                return
            for attr, child in saving_lib._walk_saveable(obj):
                visit(child, _join(path, attr))
        elif isinstance(obj, (list, dict, tuple)):
            visit_container(obj, path, set())

    def visit_container(container: Any, path: str, containers: set[int]) -> None:
        if id(container) in containers:
            return
        containers.add(id(container))
        used: dict[str, int] = {}
        for item in container.values() if isinstance(container, dict) else container:
            if isinstance(item, KerasSaveable):
                visit(item, _join(path, _unique(_snake(type(item).__name__), used)))
            elif isinstance(item, (list, dict, tuple)):
                visit_container(item, _join(path, _unique("container", used)), containers)

    visit(model, "")
    return found


def all_layers(model: Any) -> list[Any]:
    """Every layer inside `model`, nested ones included (those a subclassed
    layer holds as attributes too), each once. Private in Keras:
    `Layer._flatten_layers`; without it, the `layers` lists, recursively."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=True))
    found: dict[int, Any] = {}

    def visit(layer: Any) -> None:
        for child in getattr(layer, "layers", None) or []:
            if id(child) not in found:
                found[id(child)] = child
                visit(child)

    visit(model)
    return list(found.values())


def built_for(optimizer: Any) -> list[Any] | None:
    """The variables a built optimizer was built for (`None` while unbuilt)."""
    if not getattr(optimizer, "built", False):
        return None
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer builds its inner one
    variables = getattr(inner, "_trainable_variables", None)
    return None if variables is None else list(variables)


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _snake(name: str) -> str:
    from keras.src.utils import naming

    return naming.to_snake_case(name)


def _unique(name: str, used: dict[str, int]) -> str:
    """Keras's `saving_lib._get_unique_name`: "adam", "adam_1", ..."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name
