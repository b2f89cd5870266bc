"""EMA weights in `fit()`: save the weights that were evaluated.

With `keras.optimizers.Adam(use_ema=True)` and `keras.callbacks.SwapEMAWeights`,
validation runs on the moving averages, which trade places with the model's
weights around it (and, with `swap_on_epoch=True`, from `on_epoch_end` to the
next `on_epoch_begin`). What `BestCheckpoint` sees at its `on_epoch_end`
depends on the callbacks' order. So it looks instead of guessing: it takes a
copy of one (the smallest) variable during validation (`on_test_batch_end`, when the
evaluated weights are in the model whatever the order) and after the epoch's
last training batch (the raw weights), and at the epoch end tells which of
the pair is nearest to each:

- the best file holds the evaluated weights: when they are in the averages
  now, they trade places with the weights for the save, and back;
- the training state holds the raw weights in the model and the averages in
  the optimizer, however they are placed now, so a resumed run (where
  `SwapEMAWeights` starts with nothing swapped) goes on exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class EmaWatch:
    """Fingerprints of one EMA pair of `optimizer` (inactive without EMA)."""

    def __init__(self, optimizer: Any) -> None:
        from keras_best.keras_adapter.state import ema_pairs

        self.pairs = ema_pairs(optimizer)
        self.probe = min(self.pairs, key=lambda p: int(np.prod(p[0].shape))) if self.pairs else None
        self.evaluated: np.ndarray | None = None
        self.raw: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.probe is not None

    def saw_validation(self) -> None:
        self.evaluated = _fingerprint(self.probe[0])

    def saw_training(self) -> None:
        self.raw = _fingerprint(self.probe[0])

    def arrangement(self) -> tuple[bool, bool]:
        """`(swap_for_save, exchange_in_state)` at an epoch end (see the module docstring)."""
        here, there = _fingerprint(self.probe[0]), _fingerprint(self.probe[1])
        # Nearest, not equal: on TensorFlow SwapEMAWeights swaps by arithmetic, which rounds.
        evaluated_there = self.evaluated is not None and _distance(self.evaluated, there) < _distance(
            self.evaluated, here)
        raw_here = self.raw is None or _distance(self.raw, here) <= _distance(self.raw, there)
        return evaluated_there, evaluated_there == raw_here  # after a swap for the save, raw is there

    def swap(self) -> None:
        """Trade the values of every pair (what `SwapEMAWeights` does)."""
        import keras

        for variable, average in self.pairs:
            value = keras.ops.convert_to_numpy(variable.value)
            variable.assign(keras.ops.convert_to_numpy(average.value))
            average.assign(value)


def _fingerprint(variable: Any) -> np.ndarray:
    import keras

    return np.array(keras.ops.convert_to_numpy(variable.value), np.float64)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum())
