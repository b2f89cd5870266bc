"""The model and the per-process data shards of the torch and JAX workers
(imports no backend: each worker sets KERAS_BACKEND first)."""

from __future__ import annotations

import keras
import numpy as np

EPOCHS = 30


def build_model() -> keras.Model:
    """A tiny regression model, the same initial weights on every rank."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])


def shard(rank: int):
    """This rank's (train, validation) data: every other row of one data set,
    a noisier target on rank 1, so the ranks' validation losses differ."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    noise = (0.1 + 0.4 * (np.arange(512) % 2))[:, None] * rng.normal(size=(512, 1))
    y = (x @ rng.normal(size=(8, 1)) + noise).astype("float32")
    x, y = x[rank::2], y[rank::2]
    return (x[:192], y[:192]), (x[192:], y[192:])
