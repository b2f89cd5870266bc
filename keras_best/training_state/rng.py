"""The random state a training loop depends on, saved with the training state.

So that a run resumed mid-epoch draws the same random numbers as one that was
never interrupted: the model's own `keras.random.SeedGenerator` states (e.g.
`Dropout`'s; model variables that are not weights), Keras's global seed
generator (what unseeded `keras.random` calls use), Python's `random`, NumPy's
global `np.random` and, on torch, `torch`'s CPU generator and (where CUDA is
available) its CUDA generators, one per device. Read in the
training thread as host arrays; written into the state file's `random` group.

Not covered here: a per-epoch data order drawn from a global stream at the
start of an epoch (the resumed epoch would draw again: `fit()` and a custom
loop's `batches()` save the epoch-start state for their data,
`keras_best.training_state.fit`), and the CUDA generators of TensorFlow and JAX (their random ops are seeded by
Keras's seed generators, which are saved). CUDA generators are restored only
when the device count matches.

>>> import random
>>> saved = capture(None)
>>> a = random.random()
>>> restore(None, saved)
>>> random.random() == a
True
"""

from __future__ import annotations

import random
import sys
from typing import Any, Mapping

import numpy as np


def seed_states(model: Any) -> list[Any]:
    """The model's variables that are not weights: its seed generators' states."""
    if model is None:
        return []
    weights = {id(v) for v in model.weights}
    return [v for v in getattr(model, "variables", []) if id(v) not in weights]


def capture(model: Any) -> dict[str, np.ndarray]:
    """Host copies of every random state (see the module docstring)."""
    import keras

    out: dict[str, np.ndarray] = {}
    for i, v in enumerate(seed_states(model)):
        out[f"model_{i}"] = np.array(keras.ops.convert_to_numpy(v.value))
    generator = _keras_global()
    if generator is not None:
        out["keras_global"] = np.array(keras.ops.convert_to_numpy(generator.state.value))
    version, internal, gauss = random.getstate()
    out["python"] = np.array([version, *internal], np.int64)
    out["python_gauss"] = np.array([np.nan if gauss is None else gauss], np.float64)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out["numpy_keys"] = np.asarray(keys, np.uint32)
    out["numpy_rest"] = np.array([pos, has_gauss, cached], np.float64)
    torch = sys.modules.get("torch")
    if torch is not None and keras.backend.backend() == "torch":
        out["torch_cpu"] = torch.get_rng_state().numpy().copy()
        if torch.cuda.is_available():  # one state per device, all the same size
            out["torch_cuda"] = np.stack([s.numpy() for s in torch.cuda.get_rng_state_all()])
    return out


def restore(model: Any, saved: Mapping[str, np.ndarray]) -> None:
    """Put back what `capture` read; a state that is absent is left as it is."""
    seeds = seed_states(model)
    for i, v in enumerate(seeds):
        if f"model_{i}" in saved and tuple(saved[f"model_{i}"].shape) == tuple(v.shape):
            v.assign(saved[f"model_{i}"])
    generator = _keras_global(create="keras_global" in saved)
    if generator is not None and "keras_global" in saved:
        generator.state.assign(saved["keras_global"])
    if "python" in saved:
        values = [int(x) for x in saved["python"]]
        gauss = float(saved["python_gauss"][0]) if "python_gauss" in saved else float("nan")
        random.setstate((values[0], tuple(values[1:]), None if np.isnan(gauss) else gauss))
    if "numpy_keys" in saved:
        pos, has_gauss, cached = saved["numpy_rest"]
        np.random.set_state(("MT19937", saved["numpy_keys"], int(pos), int(has_gauss), float(cached)))
    torch = sys.modules.get("torch")
    if torch is not None and "torch_cpu" in saved:
        torch.set_rng_state(torch.from_numpy(np.asarray(saved["torch_cpu"], np.uint8).copy()))
    if torch is not None and "torch_cuda" in saved and torch.cuda.is_available() and (
            len(saved["torch_cuda"]) == torch.cuda.device_count()):
        torch.cuda.set_rng_state_all([torch.from_numpy(np.asarray(s, np.uint8).copy()) for s in saved["torch_cuda"]])


def _keras_global(create: bool = False) -> Any:
    """Keras's global `SeedGenerator`, if there is one (or `create`)."""
    from keras_best.keras_adapter.state import global_seed_generator

    return global_seed_generator(create)


GLOBAL = ("python", "python_gauss", "numpy_keys", "numpy_rest", "torch_cpu")  # the process-wide generators


def capture_global() -> dict[str, np.ndarray]:
    """`capture`'s process-wide generators only (what data pipelines shuffle with:
    Python's, NumPy's and torch's), not the model's nor Keras's."""
    return {k: a for k, a in capture(None).items() if k in GLOBAL}
