"""The random state is saved with the training state and comes back on resume:
the model's SeedGenerators (Dropout), Keras's global one, Python's and NumPy's
global streams (and torch's CPU generator on torch)."""

from __future__ import annotations

import random

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker
from tests.conftest import BACKEND


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    return model


def _draws(model):
    x = np.ones((2, 4), "float32")
    out = [random.random(), float(np.random.normal()),
           float(keras.ops.convert_to_numpy(keras.random.uniform(()))),
           keras.ops.convert_to_numpy(model(x, training=True)).tolist()]
    if BACKEND == "torch":
        import torch

        out.append(float(torch.rand(())))
    return out


@pytest.mark.parametrize("save_random_state", [True, False])
def test_a_resumed_run_draws_what_an_uninterrupted_one_would(tmp_path, save_random_state):
    keras.utils.set_random_seed(1)
    model = _model()
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), resume=True, verbose=0,
                                 save_random_state=save_random_state, preempt_signals=None)
    _draws(model)  # the streams move on
    tracker.update(0, {"val_loss": 1.0}, step=3)  # the state, mid-epoch
    tracker.finish()
    expected = _draws(model)  # what an uninterrupted run draws next
    keras.utils.set_random_seed(99)  # a new process would start elsewhere
    fresh = _model()
    fresh.set_weights(model.get_weights())
    again = BestWeightsTracker(fresh, str(tmp_path / "b.weights.h5"), resume=True, verbose=0,
                               save_random_state=save_random_state, preempt_signals=None)
    assert (again.initial_epoch, again.initial_step) == (0, 4)
    got = _draws(fresh)
    again.close()
    assert (got == expected) is save_random_state
