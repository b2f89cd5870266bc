"""Save on exception: training that ends with an exception keeps its progress.

With `save_on_exception` (on by default when a training state is kept), an
exception that ends training writes the training state as of the last batch
that completed, says so on stderr (whatever `verbose`), and goes on; the best
and the files kept are untouched (a state write decides nothing). Running the
same script again with `resume=True` continues from there. Nothing is written
when the training state written last is as recent (e.g. the exception came
right after an epoch's update), nor when the model spans several processes
(the others would not join the write).

Where an exception is seen: in `fit()`, a training step or a callback's
batch or epoch hook (`keras_best.keras_adapter.fit.FitGuard`; not validation);
in a custom loop, the body of `for epoch in tracker.epochs(n)` (`guard`: the
generator is closed when the exception leaves the loop; a `break` in the
middle of an epoch, before its `update()`, closes it the same way, and is
treated alike). A hand-written loop calls `tracker.save_state(epoch, step)`
in its own `except`.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, Mapping

from keras_best.core.policy import order
from keras_best.runner import distribute

Position = tuple[int, "int | None"]  # (epoch, last batch done); None: the epoch's end


def guard(epochs: Iterator[int], safe: Any, model: Callable[[], Any], tracker: Any) -> Iterator[int]:
    """`epochs` (`BestWeightsTracker.epochs`), saving the state of the batches
    trained since the last state when the loop leaves it early (`safe`: the
    tracker's `keras_best.runner.preemption.SafePoints`; `tracker`: what has
    `save_state(epoch, step)` and `flush()`)."""
    try:
        yield from epochs
    except GeneratorExit:
        progress = safe.progress
        if progress.batches and progress.last is not None:
            where = f"the training loop left epoch {progress.last[0] + 1} (an exception, or a break before update())"
            run = safe.run
            save_after(run.options.save_on_exception, run.state.last, run.chief, model(), progress.last,
                       tracker, where)
        raise


def save_after(enabled: bool, last: Mapping[str, Any] | None, chief: bool, model: Any, done: Position | None,
               tracker: Any, cause: str) -> None:
    """Training ended with `cause` after `done`: write the training state of
    `done` with `tracker.save_state(epoch, step)` unless the one written `last`
    is as recent (then wait for it: `tracker.flush()`), and say so (if `chief`). Does nothing unless `enabled`
    (`save_on_exception`). Never raises (the exception that ended training goes on)."""
    if not enabled or done is None:
        return
    try:
        if distribute.spans_processes(model):
            return
        if last is not None and order(done) <= order((last["epoch"], last.get("step"))):
            tracker.flush()
            _say(chief, f"{cause}: the training state written last ({_where(last)}) is current; run the "
                      "same script again with resume=True to continue from it.")
            return
        path = tracker.save_state(*done)
    except Exception as e:  # noqa: BLE001 - the exception that ended training is the one to see
        _say(chief, f"{cause}: could not save the training state as of {_where(done)}: {e!r}")
        return
    _say(chief, f"{cause}: the training state as of {_where(done)} is saved in {path} (the best is untouched); "
              "run the same script again with resume=True to continue there.")


def _where(position: Position | Mapping[str, Any]) -> str:
    epoch, step = (position["epoch"], position.get("step")) if isinstance(position, Mapping) else position
    return f"the end of epoch {epoch + 1}" if step is None else f"batch {step + 1} of epoch {epoch + 1}"


def _say(chief: bool, text: str) -> None:
    if chief:
        sys.stderr.write(f"keras-best: {text}\n")
        sys.stderr.flush()
