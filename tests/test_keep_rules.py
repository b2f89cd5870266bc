"""Retention beyond top-k: `keep_last` training states, `archive_every` files that
are never deleted, periodic training states (`save_state_every[_batches]`); each
combined with top-k (a file kept by any rule stays), recorded, restart-safe and
listed by `keras-best inspect` with the rule that keeps it."""

from __future__ import annotations

import math
import os
import time

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from keras_best.cli import summary as summary_lib
from keras_best.storage import manifest
from keras_best.storage.files import LAST_NAME, state_name
from tests.conftest import make_model, perturb, run_json

BOOKKEEPING = {"keras_best.json", "keras_best_history.jsonl", ".keras_best.lock"}


def _tracker(directory, model=None, **options):
    model = model or make_model()
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return BestWeightsTracker(model, os.path.join(str(directory), "e{epoch:03d}.weights.h5"), verbose=0,
                              optimizer=optimizer, **options), model


def _on_disk(directory):
    return set(os.listdir(directory)) - BOOKKEEPING


def _recorded(directory):
    data = run_json(directory)
    names = {k["path"] for k in data["kept"]} | {a["path"] for a in data.get("archived", [])}
    names |= {s["path"] for s in data.get("states", [])} | ({data["last"]["path"]} if data["last"] else set())
    return data, names


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.floats(0.0, 2.0), st.just(math.nan)), min_size=1, max_size=12),
       keep_top_k=st.sampled_from([1, 2, None]), archive_every=st.sampled_from([None, 1, 3]),
       keep_last=st.sampled_from([1, 2, 3]), split=st.integers(0, 12))
def test_every_rule_keeps_exactly_its_files_across_a_restart(tmp_path_factory, values, keep_top_k, archive_every,
                                                             keep_last, split):
    directory = tmp_path_factory.mktemp("run")
    options = dict(keep_top_k=keep_top_k, archive_every=archive_every, keep_last=keep_last, resume=True)
    weights = {}
    tracker, model = _tracker(directory, **options)
    other = make_model(seed=5)  # reads each file back: seed-5 weights before every load, as a new model
    unloaded = other.get_weights()
    for epoch, v in enumerate(values):
        if epoch == split:  # a restart in the middle: the rules go on from the record
            tracker.finish()
            tracker, model = _tracker(directory, **options)
            assert tracker.initial_epoch == epoch
        perturb(model, epoch)
        weights[epoch] = model.get_weights()
        tracker.update(epoch, {"val_loss": v})
        tracker.flush()
        data, names = _recorded(directory)
        assert _on_disk(directory) == names  # nothing more, nothing less
        archived = sorted(a["epoch"] for a in data["archived"])
        assert archived == [e for e in range(epoch + 1) if archive_every and (e + 1) % archive_every == 0]
        states = [data["last"]] + data["states"]
        assert [s["epoch"] for s in states] == list(range(epoch, max(-1, epoch - keep_last), -1))
        assert data["last"]["path"] == (LAST_NAME if keep_last == 1 else state_name(epoch, None))
        for record in data["kept"] + data["archived"]:  # each file holds its own epoch
            other.set_weights(unloaded)
            other.load_weights(os.path.join(directory, record["path"]))
            assert all(np.array_equal(a, b) for a, b in zip(other.get_weights(), weights[record["epoch"]]))
        if keep_top_k is not None:
            assert len(data["kept"]) <= keep_top_k
    tracker.finish()
    if any(math.isfinite(v) for v in values):
        assert load_best(make_model(seed=6), str(directory)).epoch == tracker.best_epoch


def test_inspect_lists_every_file_with_the_rule_that_keeps_it(tmp_path):
    tracker, model = _tracker(tmp_path, keep_top_k=2, archive_every=2, keep_last=2, resume=True)
    for epoch, v in enumerate([0.5, 0.4, 0.6, 0.3, 0.7]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    text = summary_lib.format_table(summary_lib.summarize(str(tmp_path)))
    kept = text[text.index("Kept files"):]
    assert "e004.weights.h5  best 2, every 2 epochs" in kept  # epoch 4: best, and archived
    assert "e002.weights.h5  best 2, every 2 epochs" in kept
    assert "Archived files (0 more" not in text
    assert "Training states (newest first, 2):" in text
    assert "keras_best_state-0004.h5  newest: resume=True continues from it" in text
    assert "keras_best_state-0003.h5  last 2 states" in text
    again, model = _tracker(tmp_path, keep_top_k=2, archive_every=2, keep_last=2, resume=True)
    for epoch, v in [(5, 0.9), (6, 0.8), (7, 0.05)]:
        again.update(epoch, {"val_loss": v})
    again.finish()
    text = summary_lib.format_table(summary_lib.summarize(str(tmp_path)))
    assert "Archived files (2 more, never deleted):" in text  # epochs 2 and 6 fell out of the best 2
    assert "e002.weights.h5  every 2 epochs" in text and "e006.weights.h5  every 2 epochs" in text
    assert _on_disk(tmp_path) == {"e004.weights.h5", "e008.weights.h5", "e002.weights.h5", "e006.weights.h5",
                                  "keras_best_state-0007.h5", "keras_best_state-0006.h5"}


def test_a_hand_edited_record_cannot_make_a_state_or_an_archive_reach_out(tmp_path):
    tracker, model = _tracker(tmp_path, archive_every=1, keep_last=2, resume=True)
    tracker.update(0, {"val_loss": 0.5})
    tracker.finish()
    import json

    path = tmp_path / "keras_best.json"
    original = json.loads(path.read_text())
    for field, value, message in [
        ("states", [{"path": "../outside.h5", "epoch": 0}], r"field 'states\[0\].path'"),
        ("archived", [{"epoch": 0, "path": "/etc/passwd", "value": 0.5}], r"field 'archived\[0\].path'"),
        ("archived", [{"epoch": 3, "path": "e001.weights.h5", "value": 0.5}], "for another epoch than `kept`"),
        ("states", [{"path": "e001.weights.h5", "epoch": 0}], "names a file twice, or a saved model"),
    ]:
        path.write_text(json.dumps({**original, field: value}))
        with pytest.raises(manifest.ManifestError, match=message):
            manifest.read(str(tmp_path))
    path.write_text(json.dumps(original))
    with pytest.raises(ValueError, match="starts with 'keras_best_state-'"):
        BestWeightsTracker(make_model(), str(tmp_path / "keras_best_state-{epoch}.h5.weights.h5"))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(keep_last=2), r"`keep_last` is about training states, and this run keeps none"),
        (dict(save_state_every=60), r"`save_state_every` is about training states"),
        (dict(save_state_every_batches=10), r"`save_state_every_batches` is about training states"),
        (dict(resume=True, save_state_every=0), r"`save_state_every` is in seconds and must be > 0"),
        (dict(resume=True, keep_last=0), r"`keep_last` must be an int >= 1"),
        (dict(archive_every=0), r"`archive_every` must be an int >= 1 \(epochs\), a duration of wall time"),
    ],
)
def test_bad_rules_are_refused_at_construction(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        BestWeightsTracker(make_model(), str(tmp_path / "e{epoch}.weights.h5"), **options)
    with pytest.raises(ValueError, match=message):
        BestCheckpoint(str(tmp_path / "e{epoch}.weights.h5"), **options)


def test_archive_every_needs_a_placeholder(tmp_path):
    with pytest.raises(ValueError, match=r"archive_every=5 keeps a file every 5 epochs .* needs a placeholder"):
        BestWeightsTracker(make_model(), str(tmp_path / "best.weights.h5"), archive_every=5)


def test_periodic_states_in_fit_every_n_batches_and_every_so_many_seconds(tmp_path, data):
    x, y = data  # 64 samples, batch 8: 8 batches an epoch
    for option, value in (("save_state_every_batches", 3), ("save_state_every", 1e-6)):
        directory = tmp_path / option
        model = make_model()
        model.compile(optimizer="adam", loss="mse")
        cb = BestCheckpoint(str(directory / "best.weights.h5"), save_best_only=True, resume=True,
                            keep_last=2, **{option: value})
        model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=8, verbose=0, shuffle=False, callbacks=[cb])
        record = run_json(directory)
        batch_states = [(h["epoch"], h["step"]) for h in record["history"] if h.get("validated") is False]
        expected = [(e, s) for e in range(2) for s in range(8)] if option == "save_state_every" else [
            (0, 2), (0, 5), (1, 2), (1, 5)]  # the count starts again after each epoch's own state
        assert batch_states == expected
        assert [h["epoch"] for h in record["history"] if h.get("validated", True)] == [0, 1]
        assert (record["last"]["epoch"], record["last"]["step"]) == (1, None)
        assert _on_disk(directory) == {"best.weights.h5", "keras_best_state-0001.h5",
                                       state_name(*batch_states[-1])}


def test_a_periodic_state_in_a_custom_loop_resumes_at_the_next_batch(tmp_path):
    tracker, model = _tracker(tmp_path, resume=True, save_state_every=0.5)
    for step, _ in tracker.batches(0, range(6)):
        perturb(model, step)
        time.sleep(0.6 if step == 2 else 0)  # after batch 2, a state is due
        if step == 3:
            break  # killed here, in effect: the state of batch 2 is the newest
    tracker.close()
    record = run_json(tmp_path)
    assert (record["last"]["epoch"], record["last"]["step"]) == (0, 2)
    again, _ = _tracker(tmp_path, resume=True, save_state_every=0.5)
    assert (again.initial_epoch, again.initial_step) == (0, 3)
    assert [b for _, b in again.batches(0, range(6))] == [3, 4, 5]
    again.close()
