"""Run loggers (`loggers=`): objects told of each new best and of the run's end.

An experiment tracker (`keras_best.mlflow.MlflowLogger`) or any object with
one or both of these methods can follow a run:

- `on_best(event)`: a new best was chosen. Called in the training thread, on
  the chief only, once the update is carried out (its file may still be
  written in the background).
- `on_finish(event)`: the run finished (`finish()`, `fit()`'s end) and every
  file is on disk; `event.files` are the best's files (a sharded set: all of
  them). `None` when the run has no best.

Both get a `BestEvent`. A logger's exception propagates: a logger that must
never stop training catches its own.

Example:
    >>> class Printer:
    ...     def on_best(self, event):
    ...         print(event.epoch, event.value)
    >>> tell([Printer()], "on_best", BestEvent("runs/a", 3, None, 0.25, "val_loss", {}, "e4.weights.h5"))
    3 0.25
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from keras_best.storage import files


@dataclasses.dataclass(frozen=True)
class BestEvent:
    """A run's best, as a logger is told of it.

    Attributes:
        directory: the run directory.
        epoch: 0-based epoch of the best (as given to `update()`).
        step: the step given to `update()`, if any.
        value: the monitored value (with a list `monitor`: its first metric's).
        monitor: the monitored metric's name.
        metrics: every metric of that update.
        path: the best's name in the run directory (`None` when not saved).
        files: at the end of the run, the full paths of the best's files.
    """

    directory: str
    epoch: int
    step: int | None
    value: float
    monitor: str
    metrics: Mapping[str, float]
    path: str | None
    files: tuple[str, ...] = ()


def best_event(directory: str, record: Any, monitor: str, at_finish: bool = False) -> BestEvent:
    """The event for the kept `record` (a `core.policy.Record`); `at_finish`:
    with the full paths of its files."""
    found = tuple(files.join(directory, m) for m in files.members(directory, record.path)) if at_finish else ()
    return BestEvent(directory, record.epoch, record.step, float(record.value), monitor, dict(record.metrics),
                     record.path, found)


def after_update(loggers: Iterable[Any], directory: str, best: Any, monitor: str, at: tuple[Any, Any]) -> None:
    """`on_best` when the kept record `best` is the update's at `(epoch, step)`."""
    if loggers and best is not None and (best.epoch, best.step) == at:
        tell(loggers, "on_best", best_event(directory, best, monitor))


def at_finish(loggers: Iterable[Any], directory: str, best: Any, monitor: str) -> None:
    """`on_finish` with the best's files (or `None`: no best)."""
    if loggers:
        tell(loggers, "on_finish", None if best is None else best_event(directory, best, monitor, at_finish=True))


def tell(loggers: Iterable[Any], method: str, event: BestEvent | None) -> None:
    """Call `method` ("on_best" or "on_finish") of each logger that has it."""
    for logger in loggers:
        call = getattr(logger, method, None)
        if call is not None:
            call(event)
