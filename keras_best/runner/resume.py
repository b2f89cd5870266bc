"""Resuming a recorded run (`resume=True`): `Run.open` calls `resume`.

In order: the record must fit (monitor, mode, constraints, architecture) and
hold a training state (a run saved without one cannot continue: a clear error,
never a silent fresh model); every part of the state is read and checked (the
optimizers not built yet are built); the best weights are read when
`restore_best_weights` asks; then everything is assigned at once. The random
state comes back only when training goes on: not for a run that stopped early,
and not when the epochs asked for are done already (`epochs`, or later
`Run.train_until`), so a rerun of a finished script leaves `np.random` and
`random` as they were.
"""

from __future__ import annotations

from typing import Any

from keras_best.core.names import SHARDED_STATE
from keras_best.runner.memory import read_weights_of
from keras_best.storage import files
from keras_best.storage.manifest import RunRecord
from keras_best.training_state import parts, rng, sharded, state


def resume(run: Any, record: RunRecord, model: Any, optimizer: Any, epochs: int | None) -> None:
    """Continue `record`'s run in `run` (a `keras_best.runner.run.Run`; see the module docstring)."""
    check_record(run, record, model)
    last = record.state.last and files.join(run.directory, record.state.last["path"])
    if not last:
        raise ValueError(
            f"Cannot resume {run.directory}: its run kept no training state (it was saved with resume=False "
            "and save_last=False), so the model and optimizer cannot go on where it stopped. To start over, "
            "pass resume=False (the run there is replaced) or choose another directory; to start from its best "
            f"weights, call keras_best.load_best(model, {run.directory!r}) first and train with resume=True "
            "in another directory.")
    if not files.exists(last):
        raise files.DamagedFileError(
            f"Cannot resume {run.directory}: its training state {record.state.last['path']} is missing. "
            "Restore it from a copy, or pass resume=False to start a new run there.")
    parts.require_built(model, resuming=run.directory)
    run.adopt(record, run.directory)
    run.resumed = True
    random = run.options.save_random_state and run.state.stopped is None  # a stopped run trains nothing
    before = rng.capture(model) if random else None
    read = sharded.read if last.endswith(SHARDED_STATE) else state.read  # every process reads its shards
    loaded = read(last, run.state_parts(model, optimizer, random=random))  # builds the optimizers
    best = run.state.best_record()
    if run.options.restore_best_weights and best is not None:  # read first: a refusal assigns nothing
        weights = run.engine.weights_file(files.join(run.directory, best.path))
        if run.memory.keeps_best(model):
            run.best_weights = read_weights_of(model, weights)
        else:
            files.check_readable(weights)  # finish() reads it back
    epoch, step = loaded.assign()
    run.initial_epoch, run.initial_step = (epoch + 1, 0) if step is None else (epoch, step + 1)
    run.random_before = None if before is None else (model, before)
    if epochs is not None:
        run.train_until(epochs)


def check_record(run: Any, record: RunRecord, model: Any) -> None:
    """The record was made with this monitor, mode, constraints and model."""
    o = run.objective
    where = f"Cannot resume {run.directory}: it was recorded with"
    if record.monitor != o.monitor_spec:
        raise ValueError(f"{where} monitor={record.monitor!r}, not {o.monitor_spec!r}. Use the same "
                         "monitor, or another directory for a new run.")
    if not o.modes_compatible(record.mode):
        raise ValueError(f"{where} mode={record.mode!r}, not {o.mode_spec!r}.")
    if record.require != o.require_spec:
        raise ValueError(f"{where} require={record.require!r}, not {o.require_spec!r}. Use the same "
                         "constraints, or another directory for a new run.")
    smooth = run.options.recorded().get("smooth")
    if record.options.get("smooth") != smooth:
        raise ValueError(f"{where} smooth={record.options.get('smooth')!r}, not {smooth!r}: its averages "
                         "would not continue. Use the same smooth=, or another directory for a new run.")
    parts.check_architecture(model, record.architecture, run.directory)
