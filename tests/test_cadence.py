"""Cadence policies (keras_best.core.cadence): plain data in, a bool out."""

from __future__ import annotations

import pytest

from keras_best.core.cadence import (
    BATCH,
    EPOCH,
    AnyOf,
    EveryBatches,
    EveryEpoch,
    EverySeconds,
    Moment,
    OnPreemption,
    Progress,
    every,
)


@pytest.mark.parametrize(
    "policy, moment, due",
    [
        (EveryBatches(3), Moment(BATCH, batches=2), False),
        (EveryBatches(3), Moment(BATCH, batches=3), True),
        (EveryBatches(3), Moment(BATCH, batches=7), True),
        (EveryBatches(3), Moment(EPOCH, batches=3), False),
        (EveryBatches(1), Moment(BATCH, batches=1), True),
        (EverySeconds(2.0), Moment(BATCH, seconds=1.999), False),
        (EverySeconds(2.0), Moment(BATCH, seconds=2.0), True),
        (EverySeconds(2.0), Moment(EPOCH, seconds=5.0), False),
        (EveryEpoch(), Moment(EPOCH), True),
        (EveryEpoch(), Moment(BATCH, batches=100, seconds=100.0), False),
        (OnPreemption(), Moment(BATCH), False),
        (OnPreemption(), Moment(BATCH, preempted=True), True),
        (OnPreemption(), Moment(EPOCH, preempted=True), True),
        (AnyOf(), Moment(BATCH, batches=9, seconds=9.0, preempted=True), False),
        (AnyOf((EveryBatches(2), EverySeconds(5.0))), Moment(BATCH, batches=1, seconds=5.0), True),
        (AnyOf((EveryBatches(2), EverySeconds(5.0))), Moment(BATCH, batches=2, seconds=0.0), True),
        (AnyOf((EveryBatches(2), EverySeconds(5.0))), Moment(BATCH, batches=1, seconds=4.0), False),
    ],
)
def test_each_policy(policy, moment, due):
    assert policy.due(moment) is due


@pytest.mark.parametrize(
    "kwargs, policies",
    [
        ({}, ()),
        (dict(batches=4), (EveryBatches(4),)),
        (dict(seconds=1.5), (EverySeconds(1.5),)),
        (dict(epoch=True), (EveryEpoch(),)),
        (dict(preemption=True), (OnPreemption(),)),
        (dict(batches=2, seconds=3.0, epoch=True, preemption=True),
         (EveryBatches(2), EverySeconds(3.0), EveryEpoch(), OnPreemption())),
    ],
)
def test_every_is_the_union_of_what_is_asked(kwargs, policies):
    assert every(**kwargs) == AnyOf(policies)


@pytest.mark.parametrize(
    "start, seen, batches",
    [
        (Progress(), [(0, 0), (0, 1), (0, 2)], 3),  # one batch at a time
        (Progress(), [(0, 1), (0, 3), (0, 5)], 6),  # steps_per_execution=2: the batches in between count
        (Progress(), [(0, 7), (1, 0)], 9),  # a new epoch starts at its batch 0
        (Progress(), [(0, 3), (1, 3)], 8),  # a new epoch, with a batch index above the last one
        (Progress(), [(0, 0), (1, 0), (2, 0)], 3),  # one-batch epochs
        (Progress(last=(2, 4)), [(2, 5), (2, 6)], 2),  # resumed after batch 4 of epoch 2
        (Progress(last=(0, -1)), [(0, 0)], 1),  # a fresh run: the batch before the first
    ],
)
def test_progress_counts_batches_as_model_checkpoint_does(start, seen, batches):
    progress = start
    for epoch, batch in seen:
        progress = progress.after_batch(epoch, batch)
    assert progress.batches == batches and progress.last == seen[-1]


@pytest.mark.parametrize(
    "started, now, seconds",
    [(10.0, 10.0, 0.0), (10.0, 12.5, 2.5), (0.0, None, 0.0), (3.0, None, 0.0)],
)
def test_moment_measures_time_with_the_clock_passed_in(started, now, seconds):
    moment = Progress(batches=4, started=started).moment(BATCH, now, preempted=True)
    assert moment == Moment(BATCH, batches=4, seconds=seconds, preempted=True)


def test_a_save_restarts_the_count_and_the_clock_and_keeps_the_position():
    progress = Progress(started=1.0).after_batch(0, 0).after_batch(0, 1).saved(now=5.0)
    assert progress == Progress(batches=0, started=5.0, last=(0, 1))
    assert progress.after_batch(0, 2).batches == 1


@pytest.mark.parametrize(
    "n, batches, due_at",
    [(3, 8, [2, 5]), (1, 3, [0, 1, 2]), (10, 8, [])],
)
def test_every_n_batches_over_an_epoch(n, batches, due_at):
    policy, progress, due = every(batches=n), Progress(), []
    for batch in range(batches):
        progress = progress.after_batch(0, batch)
        if policy.due(progress.moment(BATCH)):
            due.append(batch)
            progress = progress.saved()
    assert due == due_at
