"""A loop that trains copies of the variables and never writes them back.

On JAX a custom loop trains with `model.stateless_call` and
`optimizer.stateless_apply` on arrays of its own; unless it assigns them back
to the model's variables before `update()`, every file saved holds the
untrained weights, silently (issue 25: a recorded best val_acc of 0.194 whose
weights scored 0.093). `StaleWatch` notices it cheaply: a fingerprint of the
few smallest trainable variables at each scored update (of a big one, a
few columns only: a whole kernel would be copied, and gathered from every
device, at every update); the same
fingerprint as at the update before while the metrics changed means the
model's variables are not the ones being trained, and it warns once.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np

PROBES = 3  # the smallest trainable variables (biases, usually), sampled: at most PROBE_VALUES each
PROBE_VALUES = 1024  # values read from one probe, spread over its axes


class StaleWatch:
    """Warns once when the weights stay while the metrics move (see the module docstring)."""

    def __init__(self, jax_only: bool = False) -> None:
        import keras

        self.previous: tuple[list[np.ndarray], dict[str, float]] | None = None
        # Elsewhere the variables are what trains (a stateless loop there is rare).
        self.warned = jax_only and keras.backend.backend() != "jax"

    def check(self, model: Any, values: Mapping[str, float]) -> bool:
        """Compare with the update before; return whether it warned now."""
        if self.warned:
            return False
        now = fingerprint(model)
        before, self.previous = self.previous, (now, dict(values))
        if before is None or not now or len(now) != len(before[0]):
            return False
        same_weights = all(np.array_equal(a, b) for a, b in zip(now, before[0]))
        moved = [k for k, v in values.items() if k in before[1] and _differ(v, before[1][k])]
        if not (same_weights and moved):
            return False
        self.warned = True
        warnings.warn(
            f"The model's weights did not change since the last update, while {moved[0]} did "
            f"({before[1][moved[0]]:.5g} -> {values[moved[0]]:.5g}): the trained values are not in the model, "
            "so the files saved hold the untrained weights. A JAX loop that trains with "
            "`model.stateless_call`/`optimizer.stateless_apply` must assign the trained values back "
            "before `update()`: `for v, value in zip(model.trainable_variables, trainable): "
            "v.assign(value)` (and the non-trainable and optimizer variables; docs/custom-loop.md). "
            "Ignore this if the model is meant not to change.", stacklevel=6)  # update() in a loop
        return True


def fingerprint(model: Any) -> list[np.ndarray]:
    """A sample of the `PROBES` smallest trainable variables of `model`: at most
    4 values along each axis, spread over it (a strided slice, made on the
    device: never a copy of a whole variable, which in a model without biases
    is a kernel of the model's size over its number of layers)."""
    import keras

    # A variable sharded over several processes is not this process's to read (Orbax runs).
    readable = [v for v in getattr(model, "trainable_variables", [])
                if getattr(v.value, "is_fully_addressable", True)]
    variables = sorted(readable, key=lambda v: int(np.prod(v.shape)))
    return [np.array(keras.ops.convert_to_numpy(v.value[_spread(v.shape)])) for v in variables[:PROBES]]


def _spread(shape: Any) -> tuple[slice, ...]:
    """A strided slice with at most `PROBE_VALUES` values, spread evenly along
    each axis from its first index (a gradient that reaches any part of the
    variable moves some of them).

    >>> _spread((4096, 10)), _spread((64,))
    ((slice(None, None, 128), slice(None, None, 1)), (slice(None, None, None),))
    """
    if int(np.prod(shape)) <= PROBE_VALUES:
        return tuple(slice(None) for _ in shape)  # all of it
    per_axis = max(1, int(PROBE_VALUES ** (1 / max(1, len(shape)))))
    return tuple(slice(None, None, max(1, -(-int(d) // per_axis))) for d in shape)


def _differ(a: Any, b: Any) -> bool:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return math.isfinite(a) and math.isfinite(b) and a != b
