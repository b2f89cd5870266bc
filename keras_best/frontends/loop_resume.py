"""Exact mid-epoch resume of a custom loop's data, for `BestWeightsTracker.batches()`.

A data source may draw its order from the process-wide random generators when
its iterator is made or first drawn from: a torch `DataLoader(shuffle=True)`
(torch's generator), a generator function calling `np.random.permutation`, a
`random.shuffle` in `__iter__`. After a resume the random state put back is the
one at the saved batch, so such a source would draw another order for the
resumed epoch. So `batches(epoch, data)` captures the process-wide generators
(`keras_best.training_state.rng.capture_global`: Python's, NumPy's, torch's)
right before it calls `iter(data)`, and the training state keeps that
epoch-start state (group "loop", the part `fit()` uses for the same:
`keras_best.training_state.fit`). In the resumed epoch, `batches()` puts the
epoch-start state back, calls `iter(data)`, draws the batches the state covers
(not yielded), then puts back the state as of the saved batch before the next
batch is drawn: the order, and every random draw after it, are the
uninterrupted run's.

A `tf.data.Dataset` reshuffles (`shuffle(..., seed=)`) from a seed of its own
that advances once per iterator made: in a resumed process the first
`batches()` call first makes one iterator per earlier epoch (none drawn from),
one per `batches()` call as the uninterrupted run made them.

Not covered: a `DataLoader` with its own `generator=`, a source that draws
from a generator of its own (seed it from the epoch number instead), or a
source iterated outside `batches()` as well (its iterators are not counted).
A state written by an older keras-best, or by a loop that did not use
`batches()`, holds no epoch-start state: the resumed epoch then skips its
consumed batches with the order the source draws now.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from keras_best.keras_adapter.fit import make_iterators
from keras_best.training_state import rng
from keras_best.training_state.fit import FitProgress

EPOCH = "epoch"  # the epoch the saved random state starts (beside the generators' states)
_END = object()


class LoopResume:
    """The data side of a custom loop's mid-epoch resume (see the module docstring)."""

    def __init__(self) -> None:
        self.part = FitProgress(self, name="loop")
        self.epoch_random: dict[str, Any] | None = None  # the generators at the start of this epoch
        self.saved: dict[str, Any] | None = None  # the epoch-start state of the state resumed from
        self.pending = True  # the resumed epoch's first batches() call is still to come

    def metric_variables(self) -> list[Any]:
        return []  # a custom loop's metrics are its own (pass them to `state=` to save them)

    def take(self, values: dict[str, Any] | None) -> None:
        self.saved = None if values is None else values["random"]

    def batches(self, epoch: int, data: Iterable[Any], initial_epoch: int, initial_step: int
                ) -> Iterator[tuple[int, Any]]:
        """`enumerate(data)` for `epoch`; the resumed epoch (`initial_epoch`) starts
        at batch `initial_step`, in the uninterrupted run's order."""
        start, after = 0, None
        if self.pending and epoch == initial_epoch:
            self.pending, start = False, initial_step
            make_iterators(data, epoch)  # tf.data: the iterators of the epochs before
            saved, self.saved = self.saved or {}, None
            if start and EPOCH in saved and int(saved[EPOCH]) == epoch:
                after = rng.capture_global()
                rng.restore(None, saved)
        self.epoch_random = {EPOCH: np.array(epoch, np.int64), **rng.capture_global()}
        iterator = iter(data)
        for _ in range(start):
            if next(iterator, _END) is _END:  # fewer batches than the state covers
                break
        if after is not None:  # the consumed batches are drawn: the state of the saved batch
            rng.restore(None, after)
        yield from enumerate(iterator, start)
