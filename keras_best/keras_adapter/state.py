"""Keras internals the training state reads: an optimizer's EMA pairs and
Keras's global seed generator (pinned by tests/test_ema.py and tests/test_rng.py)."""

from __future__ import annotations

from typing import Any


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
