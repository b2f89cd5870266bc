"""Shared fixtures: small real Keras models and data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

# Modules that train with tf.GradientTape / tf.data or use tf.distribute: run on
# the TensorFlow backend only. Every other module (the demo and the notebooks
# too) runs on JAX and torch as well (CI runs them in venvs without TensorFlow;
# test_remote.py runs its ram:// cases on TensorFlow only).
TENSORFLOW_ONLY = ["test_distribute.py", "test_metrics.py", "test_multi_metric.py",
                   "test_optuna.py", "test_resume.py", "test_s3_study.py", "test_savers.py", "test_tracker.py",
                   "workers/mirrored_worker.py", "workers/multiworker_worker.py", "workers/optuna_worker.py"]
collect_ignore = [] if BACKEND == "tensorflow" else TENSORFLOW_ONLY
# Worker scripts that import their backend's own package (torch, jax).
BACKEND_WORKERS = {"workers/torch_ddp_worker.py": "torch", "workers/jax_multiprocess_worker.py": "jax",
                   "workers/orbax_worker.py": "jax"}
collect_ignore += [path for path, backend in BACKEND_WORKERS.items() if backend != BACKEND]
# Modules that need one backend (and its optional packages): model-parallel saves through Orbax.
BACKEND_MODULES = {"test_orbax.py": "jax"}
collect_ignore += [path for path, backend in BACKEND_MODULES.items() if backend != BACKEND]
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow backend only (tf.GradientTape demo)")

# Modules that test pure code (core/, the run-directory lock): no Keras backend
# reaches what they check, so CI runs them on TensorFlow only (`-m "not
# backend_neutral"` in its JAX and torch stages). Single tests elsewhere carry
# @pytest.mark.backend_neutral. Run locally, every backend runs them all.
BACKEND_NEUTRAL = ["test_monitor.py", "test_objective.py", "test_paths.py", "test_policy.py",
                   "test_retention.py", "test_lock.py", "test_cadence.py", "test_architecture.py"]


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks added here
def pytest_collection_modifyitems(config, items):
    """Mark the backend-neutral modules, and start the slow tests first: xdist's
    workers take tests as they finish others, so the long ones do not end one
    worker's share while the other is idle."""
    for item in items:
        if item.nodeid.split("::")[0].removeprefix("tests/") in BACKEND_NEUTRAL:
            item.add_marker(pytest.mark.backend_neutral)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first


def make_model(units: int = 8, inputs: int = 4, seed: int = 0) -> keras.Model:
    """A tiny built Sequential model."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def weights_equal(a: keras.Model, b: keras.Model) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


def perturb(model: keras.Model, seed: int) -> None:
    """Give the model new, distinct weights (stands in for a training step)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])


VALUES = [3.0, 2.0, 2.5, 1.0, 4.0]  # val_loss per epoch for `train`: best at epoch 3; 2nd best epoch 1


def model_at(epoch: int) -> keras.Model:
    """`make_model()` with the weights `train` gives it at `epoch`."""
    model = make_model()
    perturb(model, epoch)
    return model


def train(model: keras.Model, filepath: str, values: list[float] = VALUES, **options):
    """A custom loop: at epoch e the weights of `model_at(e)` and val_loss `values[e]`; the finished tracker."""
    from keras_best import BestWeightsTracker

    tracker = BestWeightsTracker(model, filepath, monitor="val_loss", verbose=0, **options)
    for epoch, value in enumerate(values):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": value})
    tracker.finish()
    return tracker


@pytest.fixture
def model() -> keras.Model:
    return make_model()


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
    return x, y


@pytest.fixture(scope="session")
def s3():
    """A real S3 API server on 127.0.0.1 (tests/s3server.py), for this pytest process."""
    from tests import s3server

    server = s3server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3) -> str:
    """A new, empty bucket of the `s3` server, as an s3:// URL."""
    return f"s3://{s3.new_bucket()}"


def run_json(directory) -> dict:
    """keras_best.json as plain JSON, with the history it covers read from
    keras_best_history.jsonl and its parts (as a user's script or another tool would)."""
    import json

    from keras_best.storage import files, manifest

    d = str(directory)
    data = json.loads(files.read_bytes(manifest.manifest_path(d)))
    history_path = files.join(d, manifest.HISTORY_NAME)
    parts = data.get("history_parts", [])  # on object stores: the history's parts after the file, in order
    kept = data.get("history_bytes", 0) - sum(parts)
    raw = files.read_bytes(history_path)[:kept] if files.exists(history_path) else b""
    raw += b"".join(files.read_bytes(files.join(d, files.history_part_name(i + 1)))[:n] for i, n in enumerate(parts))
    data.setdefault("history", [json.loads(line) for line in raw.splitlines()])
    return data
