"""When a front end saves: small composable cadence policies (pure: no Keras, no I/O).

A front end keeps a `Progress` (the training done since its last save, plain
data), advances it after each training batch, and asks its policy whether a
save is due at that `Moment`. Policies combine with `every(...)`, their union:

>>> policy = every(batches=3, preemption=True)
>>> progress = Progress()
>>> for batch in range(3):
...     progress = progress.after_batch(0, batch)
>>> policy.due(progress.moment(BATCH))
True
>>> policy.due(progress.saved().moment(BATCH)), policy.due(Moment(EPOCH, preempted=True))
(False, True)

Used by `BestWeightsTracker.after_batch` (the training state every N batches
or seconds, and on preemption) and `BestCheckpoint`'s `save_freq` (every
epoch, or every N batches as `keras.callbacks.ModelCheckpoint` counts them).
The clock is passed in (`now`), never read here.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

BATCH, EPOCH = "batch", "epoch"  # the moments a front end asks at: after a training batch, an epoch's end


@dataclasses.dataclass(frozen=True)
class Moment:
    """Where training stands when a policy is asked."""

    event: str  # BATCH or EPOCH
    batches: int = 0  # batches trained since the last save
    seconds: float = 0.0  # seconds since the last save
    preempted: bool = False  # a preemption signal came


class Cadence(Protocol):
    def due(self, moment: Moment) -> bool: ...


@dataclasses.dataclass(frozen=True)
class EveryBatches:
    """After a batch, once `n` batches were trained since the last save."""

    n: int

    def due(self, moment: Moment) -> bool:
        return moment.event == BATCH and moment.batches >= self.n


@dataclasses.dataclass(frozen=True)
class EverySeconds:
    """After a batch, once `seconds` passed since the last save."""

    seconds: float

    def due(self, moment: Moment) -> bool:
        return moment.event == BATCH and moment.seconds >= self.seconds


@dataclasses.dataclass(frozen=True)
class EveryEpoch:
    """At every epoch's end."""

    def due(self, moment: Moment) -> bool:
        return moment.event == EPOCH


@dataclasses.dataclass(frozen=True)
class OnPreemption:
    """At the first moment after a preemption signal."""

    def due(self, moment: Moment) -> bool:
        return moment.preempted


@dataclasses.dataclass(frozen=True)
class AnyOf:
    """Due when any of `policies` is (none: never)."""

    policies: tuple[Cadence, ...] = ()

    def due(self, moment: Moment) -> bool:
        return any(p.due(moment) for p in self.policies)


def every(batches: int | None = None, seconds: float | None = None, epoch: bool = False,
          preemption: bool = False) -> AnyOf:
    """The union of the policies asked for (`None`/`False`: not that one).

    >>> every(batches=2, epoch=True)
    AnyOf(policies=(EveryBatches(n=2), EveryEpoch()))
    """
    return AnyOf(tuple(p for p, wanted in ((EveryBatches(batches), batches is not None),
                                           (EverySeconds(seconds), seconds is not None),
                                           (EveryEpoch(), epoch), (OnPreemption(), preemption)) if wanted))


@dataclasses.dataclass(frozen=True)
class Progress:
    """The training done since the last save: batches counted, and the clock
    reading (`started`) at that save.

    `last` is the `(epoch, batch)` counted last (0-based); a run resumed at
    batch `s` of epoch `e` starts from `Progress(last=(e, s - 1))`.
    """

    batches: int = 0
    started: float = 0.0
    last: tuple[int, int] | None = None

    def after_batch(self, epoch: int, batch: int) -> Progress:
        """Count the training up to `batch` of `epoch`: the batches since the
        one counted last, so a front end that sees only every k-th batch
        (`fit(steps_per_execution=k)`) counts k, as `ModelCheckpoint` does; in
        a new epoch, its batches 0 to `batch`.

        >>> Progress().after_batch(0, 3).after_batch(0, 7).batches, Progress(last=(0, 9)).after_batch(1, 1).batches
        (8, 2)
        """
        same_epoch = self.last is not None and self.last[0] == epoch and batch > self.last[1]
        done = batch - self.last[1] if same_epoch else batch + 1
        return dataclasses.replace(self, batches=self.batches + done, last=(epoch, batch))

    def saved(self, now: float = 0.0) -> Progress:
        """The progress right after a save made at clock reading `now`."""
        return dataclasses.replace(self, batches=0, started=now)

    def moment(self, event: str, now: float | None = None, preempted: bool = False) -> Moment:
        """The `Moment` to ask a policy at (`now`: the clock; `None`: time not measured)."""
        return Moment(event, self.batches, 0.0 if now is None else now - self.started, preempted)
