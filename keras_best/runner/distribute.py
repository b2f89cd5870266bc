"""The rules for distributed training: one writer, the same decisions everywhere.

Three kinds of job are recognised, in this order (the first that applies wins):

- **TensorFlow** (`tf.distribute`, TensorFlow backend only): the chief is the
  `chief` task of `TF_CONFIG`, or task 0 of `worker` when the cluster has no
  chief (the rule `MultiWorkerMirroredStrategy` follows). It is read from the
  environment, so a tracker built outside `strategy.scope()` knows it too.
- **PyTorch** (`torch.distributed`, e.g. DDP): when the default process group
  is initialised, rank 0 is the chief. Build the tracker after
  `init_process_group()`.
- **JAX** multi-process: once `jax.distributed.initialize()` has run and
  `jax.process_count() > 1`, process 0 (`jax.process_index() == 0`) is the
  chief. Build the tracker after `initialize()`.

Without any of them (one process; `MirroredStrategy` included) this process is
the chief. torch and jax are only looked at when the Keras backend is theirs
or they are already imported; TensorFlow only on the TensorFlow backend.

1. **Only the chief writes the run directory.** Other workers still run every
   save, into a private temp directory that is removed at once. Under
   `tf.distribute` that matters: reading a variable with
   `synchronization="on_read"` (a metric, a
   `keras.Variable(..., synchronization="on_read")`) is a collective op, and a
   chief saving alone would wait for the others forever or pair its
   all-reduce with theirs and read wrong values (seen with TF 2.21).
   Assigning such a variable reads it back, so loading weights is collective
   too (`load_weights`). Hence the order of variable reads and writes must be
   the same on every worker, and they must stay on the training thread: a
   background writer may only write host copies.
2. **Every worker takes the same decision.** With several processes each
   `update()` gathers the values read on all of them (through the strategy,
   `torch.distributed.all_gather` or JAX's `process_allgather`). Values that
   are already synchronised (metrics created under `strategy.scope()`, a
   globally reduced loss) agree and are used as they are. A value that differs
   by worker (a Python float, a metric of the local data shard) is replaced by
   its mean over the workers, with a warning, so no worker stops while the
   others wait. Workers that call `update()` with different epochs, steps or
   metric names, or that do not agree on which of them is the chief, get a
   `ValueError` on every worker at once, instead of a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
import weakref
import zlib
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from keras_best.core.formats import ORBAX
from keras_best.storage import files

SCRATCH_PREFIX = "keras_best-worker-"

_GATHER_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def is_chief() -> bool:
    """True when this process is the one that writes the run directory.

    In this order: on the TensorFlow backend with `TF_CONFIG` set, the `chief`
    task, or task 0 of `worker` when the cluster has no chief (read from the
    environment, as `MultiWorkerMirroredStrategy` does, so it works whether or
    not the tracker is built inside `strategy.scope()`); under an initialised
    `torch.distributed` process group, rank 0; in a JAX multi-process job,
    `jax.process_index() == 0`. Otherwise (one process) True.

    Example:

    ```python
    torch.distributed.init_process_group("gloo")  # before building the tracker
    distribute.is_chief()  # True on rank 0 only
    ```
    """
    raw = os.environ.get("TF_CONFIG")
    if raw and on_tensorflow():
        return _tf_config_is_chief(raw)
    dist = _torch_distributed()
    if dist is not None:
        return dist.get_rank() == 0
    jax = _jax_multiprocess()
    if jax is not None:
        return jax.process_index() == 0
    return True


def _tf_config_is_chief(raw: str) -> bool:
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}. Received: {raw!r}") from e
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    task_type, task_id = task.get("type"), int(task.get("index", 0) or 0)
    if not task_type:
        return True
    if task_type == "chief":
        return True
    if task_type == "worker" and "chief" not in cluster:
        return task_id == 0
    return False


def _torch_distributed() -> Any:
    """`torch.distributed` when its default process group spans several
    processes, else None. Never imports torch: on the torch backend Keras has."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


def _jax_multiprocess() -> Any:
    """`jax` in a job of several processes, else None. Never imports jax, and
    asks it only once `jax.distributed` is initialised: before that, asking
    would start JAX's backend, and a later `jax.distributed.initialize()` would
    fail (jax releases without `is_initialized` are asked at once)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    initialized = getattr(jax.distributed, "is_initialized", None)
    if initialized is not None and not initialized():
        return None
    return jax if jax.process_count() > 1 else None


def on_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow (read without importing TensorFlow)."""
    import keras

    return keras.backend.backend() == "tensorflow"


def strategy_of(model: Any) -> Any:
    """The `tf.distribute.Strategy` in use: the current scope's, or else the
    one the model's variables were created under. `None` for the default
    (no) strategy, and on every other Keras backend (TensorFlow is not imported).
    """
    if not on_tensorflow():
        return None
    import tensorflow as tf

    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    for variable in getattr(model, "weights", [])[:1]:
        value = getattr(variable, "value", variable)
        strategy = getattr(value, "distribute_strategy", None)
        if strategy is not None and not _is_default(strategy):
            return strategy
    return None


def worker_count(strategy: Any) -> int:
    """How many Python processes take part in `strategy` (1 unless multi-worker)."""
    if strategy is None:
        return 1
    import tensorflow as tf

    if strategy is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    local = max(1, len(strategy.extended.worker_devices))
    return max(1, strategy.num_replicas_in_sync // local)


def write_durably(path: str, write: Callable[[str], None], chief: bool) -> None:
    """On the chief, `files.write_durably(path, write)`. On another worker,
    run `write` into a private temp directory and remove it: the worker takes
    part in any collective op of the save and leaves nothing behind.
    """
    if chief:
        files.write_durably(path, write)
        return
    scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    try:
        write(os.path.join(scratch, files.basename(path)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_weights(model: Any, path: str, chief: bool) -> None:
    """`model.load_weights(path)` on the chief, with the other workers taking
    part in its collective ops (assigning an on-read variable reads it back).

    Other workers cannot read the chief's files in general, so under a
    multi-worker strategy every worker saves its current weights to a scratch
    file (the same reads everywhere), then the chief loads `path` and the
    others load their scratch file back (the same assignments, in the same
    order): the chief ends with the weights of `path`, the others unchanged.
    """
    if worker_count(strategy_of(model)) < 2:
        if chief:  # no collective ops to join: other workers have nothing to do
            files.load_weights(model, path)
        return
    scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    try:
        own = os.path.join(scratch, "current.weights.h5")
        model.save_weights(own)
        files.load_weights(model, path if chief else own)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_layout(model: Any, fmt: str) -> None:
    """Refuse a save format that would gather a sharded model on one host: a model whose
    variables `keras.distribution` splits over devices (JAX) saves through Orbax only."""
    from keras_best.keras_adapter.layout import shards_variables

    if fmt != ORBAX and shards_variables(model):
        raise ValueError(
            "The active keras.distribution shards this model's variables over devices: a "
            f"{fmt!r} save would gather every variable on one host. Save with save_format=\"orbax\" "
            "(or a filepath without a file extension, e.g. 'runs/exp1/best-{epoch:03d}'): each "
            "process then writes its own shards.")


def barrier(model: Any) -> None:
    """Wait until every process training `model` gets here (nothing to wait for in one process):
    what the chief wrote before it (a rename, a recovered record) is there for the others to read."""
    group = _group_of(model)
    if group is not None:
        group.gather(np.zeros(1, np.float64))


def spans_processes(model: Any) -> bool:
    """Whether `model` is trained by several processes (see `is_chief`)."""
    return _group_of(model) is not None


class _Group(NamedTuple):
    """The processes of a distributed job, as `agree` sees them."""

    workers: int
    gather: Callable[[np.ndarray], np.ndarray]  # float64 (n,) -> (workers, n), in rank order
    chief_rule: str  # how the chief is found, for the error message


def _group_of(model: Any) -> _Group | None:
    """The job `model` is trained in, when it spans several processes
    (the same precedence as `is_chief`)."""
    strategy = strategy_of(model)
    workers = worker_count(strategy)
    if workers > 1:
        return _Group(workers, lambda v: _tf_gather(strategy, v, workers),
                      "in TF_CONFIG (the `chief` task, or task 0 of `worker`): set TF_CONFIG on "
                      "every worker, as MultiWorkerMirroredStrategy expects")
    dist = _torch_distributed()
    if dist is not None:
        return _Group(dist.get_world_size(), _torch_gather,
                      "as rank 0 of torch.distributed: build the trackers after "
                      "torch.distributed.init_process_group() on every process")
    jax = _jax_multiprocess()
    if jax is not None:
        return _Group(jax.process_count(), _jax_gather,
                      "as jax.process_index() == 0: build the trackers after "
                      "jax.distributed.initialize() on every process")
    return None


def agree(
    values: Mapping[str, float], model: Any, *, epoch: int, step: int | None, chief: bool
) -> dict[str, float]:
    """The metric values every worker will decide on (see the module docstring).

    In one process this returns `values` unchanged and costs nothing; in a
    job of several (multi-worker `tf.distribute`, `torch.distributed`, JAX
    multi-process), it runs two small all-gathers, so every worker must call
    it, in the same order as its other collective ops (the tracker's
    `update()` does).

    Example (each of two workers passes its own float):

    ```python
    agree({"val_loss": 1.0 if rank == 0 else 3.0}, model, epoch=0, step=None, chief=rank == 0)
    # {"val_loss": 2.0} on both, with a warning
    ```
    """
    values = dict(values)
    group = _group_of(model)
    if group is None:
        return values
    keys = sorted(values)
    header = np.array(
        [epoch, -1 if step is None else step, len(keys), zlib.crc32("\0".join(keys).encode()), float(chief)],
        np.float64,
    )
    by_worker = group.gather(header)
    chiefs = int(round(by_worker[:, 4].sum()))
    if chiefs != 1:
        raise ValueError(
            f"{chiefs} of the {group.workers} workers consider themselves the chief, so "
            f"{'several would write' if chiefs else 'none would write'} the run directory. "
            f"keras-best finds the chief {group.chief_rule}."
        )
    if not (by_worker[:, :4] == by_worker[0, :4]).all():
        raise ValueError(
            "The workers called update() with different arguments, so their decisions "
            f"would diverge: (epoch, step) per worker = {_pairs(by_worker)}, and the metric "
            f"names {'differ' if len({tuple(r[2:4]) for r in by_worker}) > 1 else 'agree'} "
            f"(this worker passes {keys}). Every worker must call update() with the same "
            "epoch, step and metric names; when resuming, the run directory must be on "
            "storage every worker can read (a shared file system or gs://...)."
        )
    if not keys:
        return values
    gathered = group.gather(np.array([values[k] for k in keys], np.float64))
    same = np.array([np.array_equal(col, np.full_like(col, col[0]), equal_nan=True) for col in gathered.T])
    if same.all():
        return values
    for i, key in enumerate(keys):
        if same[i]:
            continue
        mean = float(np.mean(gathered[:, i]))
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(
                f"Metric {key!r} differs by worker ({', '.join(f'{v:.6g}' for v in gathered[:, i])}); "
                f"every worker uses their mean, {mean:.6g}, so that all take the same decision. "
                "To have it synchronised instead, reduce it over the workers before update() "
                "(under tf.distribute: create the metric under `strategy.scope()` and update it "
                "inside `strategy.run`).",
                stacklevel=3,
            )
        values[key] = mean
    return values


def _tf_gather(strategy: Any, vector: np.ndarray, workers: int) -> np.ndarray:
    """All-gather a float64 vector over the strategy: one row per worker."""
    import tensorflow as tf

    fn = _GATHER_FUNCTIONS.get(strategy)
    if fn is None:

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
        def fn(x):
            per_replica = strategy.run(lambda v: v[None], args=(x,))
            return strategy.gather(per_replica, axis=0)

        _GATHER_FUNCTIONS[strategy] = fn
    rows = fn(tf.constant(vector, tf.float64)).numpy()  # one row per replica, workers in task order
    return rows[:: rows.shape[0] // workers]


def _torch_gather(vector: np.ndarray) -> np.ndarray:
    """All-gather a float64 vector over torch.distributed's default group."""
    import torch

    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    mine = torch.as_tensor(vector, dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    return torch.stack(rows).cpu().numpy()


def _jax_gather(vector: np.ndarray) -> np.ndarray:
    """All-gather a float64 vector over JAX's processes. Sent as its bits in
    int32 words, so it stays exact without `jax_enable_x64`."""
    from jax.experimental import multihost_utils

    words = np.ascontiguousarray(vector, np.float64).view(np.int32)
    rows = np.asarray(multihost_utils.process_allgather(words), np.int32)
    return np.ascontiguousarray(rows.reshape(rows.shape[0], -1)).view(np.float64)


def _pairs(rows: np.ndarray) -> list[tuple[int, int | None]]:
    return [(int(r[0]), None if r[1] < 0 else int(r[1])) for r in rows]


def _is_default(strategy: Any) -> bool:
    import tensorflow as tf

    return type(strategy).__name__ == "_DefaultDistributionStrategy" or strategy is tf.distribute.get_strategy()
