"""`loggers=`: each new best, then the end of the run with the best's files on disk."""

from __future__ import annotations

import os

import pytest

from keras_best import BestCheckpoint, BestWeightsTracker
from keras_best.runner.loggers import BestEvent
from tests.conftest import make_model, perturb


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, BestEvent | None]] = []

    def on_best(self, event):
        self.events.append(("best", event))

    def on_finish(self, event):
        # Every file of the best is complete when the run ends.
        assert event is None or all(os.path.isfile(f) for f in event.files)
        self.events.append(("finish", event))


def test_each_new_best_then_the_finish_with_every_file(tmp_path):
    model = make_model()
    recorder, only_finish = Recorder(), type("F", (), {"on_finish": lambda self, e: seen.append(e)})()
    seen: list = []
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.json"), verbose=0, max_shard_size=0.00000013,
                                 keep_top_k=2, loggers=[recorder, only_finish])
    for epoch, loss in enumerate([0.5, 0.25, 0.375, 0.125, 0.25]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": loss, "acc": epoch})
    tracker.finish()
    kinds = [k for k, _ in recorder.events]
    assert kinds == ["best", "best", "best", "finish"]
    assert [(e.epoch, e.value, e.metrics["acc"]) for _, e in recorder.events[:3]] == [(0, 0.5, 0), (1, 0.25, 1),
                                                                                     (3, 0.125, 3)]
    final = recorder.events[-1][1]
    assert (final.epoch, final.path, final.monitor) == (3, "e4.weights.json", "val_loss")
    names = [os.path.basename(f) for f in final.files]  # the shards, then the index
    assert names[-1] == "e4.weights.json" and len(names) > 2 and all(n.startswith("e4") for n in names)
    assert seen == [final]


def test_no_best_finishes_with_none_and_fit_passes_loggers(tmp_path, data):
    recorder = Recorder()
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "a" / "b.weights.h5"), verbose=0, loggers=recorder)
    tracker.update(0, {"val_loss": float("nan")})
    tracker.finish()
    assert recorder.events == [("finish", None)]
    x, y = data
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    recorder = Recorder()
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
              callbacks=[BestCheckpoint(str(tmp_path / "f" / "b.keras"), loggers=[recorder])])
    assert [k for k, _ in recorder.events][-1] == "finish" and recorder.events[-1][1].files == (
        os.path.join(str(tmp_path / "f"), "b.keras"),)


def test_loggers_must_have_a_hook():
    with pytest.raises(ValueError, match=r"`loggers` takes objects with an `on_best\(event\)`"):
        BestWeightsTracker(make_model(), "x/b.weights.h5", loggers=[object()])
