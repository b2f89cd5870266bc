"""keras_best.json: atomic writes, clear errors, and the write-ahead journal.

The crash points of a transaction are built by hand (the files and the
manifest exactly as a crash would leave them), then read with `load_best`
and recovered with `roll_forward`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_best import load_best
from keras_best.core.policy import RunState
from keras_best.core.retention import Record
from keras_best.frontends.loading import read_best
from keras_best.storage import files, manifest
from keras_best.storage.manifest import MANIFEST_NAME, ManifestError, RunRecord
from tests.conftest import make_model, perturb


def _body(best_path: str, epoch: int, value: float) -> dict:
    record = {"epoch": epoch, "value": value, "path": best_path, "step": None, "metrics": {"val_loss": value}}
    return {"monitor": "val_loss", "mode": "min", "save_format": "weights", "best": record, "kept": [record]}


def _write_raw(directory: str, body: dict) -> None:
    """keras_best.json exactly as given (version 2), as a run or a crash leaves it."""
    data = {"format": "keras_best", "version": manifest.SCHEMA_VERSION, "history_count": 0,
            "history_bytes": 0, **body}
    (Path(directory) / MANIFEST_NAME).write_text(json.dumps(data))


def _record(monitor="val_loss", **state) -> RunRecord:
    return RunRecord(monitor=monitor, mode="min", state=RunState(**state))


# ---------------------------------------------------------------- read / write
def test_write_then_read(tmp_path):
    _record().write(str(tmp_path))
    data = manifest.read(str(tmp_path))
    assert data.monitor == "val_loss" and data.best is None and data.kept == ()
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["format"] == "keras_best" and raw["version"] == manifest.SCHEMA_VERSION == 3
    assert os.listdir(tmp_path) == [MANIFEST_NAME]  # no temp file left behind


def _best_state(ties=(), wait=2, patience_best=0.5) -> RunState:
    best = Record(1, 0.5, "b.weights.h5", {"val_loss": 0.5, "val_acc": 0.7}, ties=tuple(ties))
    other = Record(3, 0.6, "c.weights.h5", {"val_loss": 0.6, "val_acc": 0.8})
    engine = {"best": 0.5, "best_epoch": 1, "wait": wait, "patience_best": patience_best,
              "best_ties": list(ties), "patience_ties": []}
    return RunState(engine=engine, kept=(best, other), best_at=(1, None))


def test_version_3_stores_the_best_once(tmp_path):
    RunRecord(monitor="val_loss", mode="min", state=_best_state(ties=[0.7])).write(str(tmp_path))
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["best"] == {"epoch": 1, "value": 0.5, "path": "b.weights.h5"}  # the documented contract
    assert raw["engine"] == {"wait": 2, "patience_best": 0.5, "patience_ties": []}
    assert raw["kept"][0]["ties"] == [0.7] and raw["kept"][0]["metrics"] == {"val_loss": 0.5, "val_acc": 0.7}
    assert manifest.read(str(tmp_path)).state == _best_state(ties=[0.7])  # the engine's best read back


@pytest.mark.parametrize("patch, field", [
    ({"best": {"epoch": 1, "value": 0.55, "path": "b.weights.h5"}}, "best.value"),
    ({"best": {"epoch": 2, "value": 0.5, "path": "b.weights.h5"}}, "best"),
    ({"best": {"epoch": 1, "value": 0.5, "path": "x.weights.h5"}}, "best"),
    ({"best": {"epoch": 1, "value": "low", "path": "b.weights.h5"}}, "best.value"),
    ({"best": {"epoch": 1, "value": 0.5, "path": "../b.weights.h5"}}, "best.path"),
    ({"engine": {"wait": -1}}, "engine.wait"),
    ({"engine": {"patience_best": "low", "wait": 0}}, "engine.patience_best"),
])
def test_a_version_3_record_that_disagrees_with_itself_is_refused(tmp_path, patch, field):
    RunRecord(monitor="val_loss", mode="min", state=_best_state()).write(str(tmp_path))
    data = {**json.loads((tmp_path / MANIFEST_NAME).read_text()), **patch}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"field '{field}' .*Nothing in it was acted upon"):
        manifest.read(str(tmp_path))


def test_a_version_2_record_is_read_with_its_engine_as_written(tmp_path):
    state = _best_state(patience_best=0.6)
    v2 = {**RunRecord(monitor="val_loss", mode="min", state=state).to_json(), "version": 2,
          "best": state.kept[0].to_json(), "engine": dict(state.engine)}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(v2))
    assert manifest.read(str(tmp_path)).state == state


def test_write_replaces_atomically(tmp_path):
    _record("a").write(str(tmp_path))
    inode = os.stat(tmp_path / MANIFEST_NAME).st_ino
    _record("b").write(str(tmp_path))
    assert manifest.read(str(tmp_path)).monitor == "b"
    # A new file was renamed over the old one (never rewritten in place).
    assert os.stat(tmp_path / MANIFEST_NAME).st_ino != inode


def test_failed_write_keeps_the_old_manifest(tmp_path, monkeypatch):
    _record("a").write(str(tmp_path))
    before = (tmp_path / MANIFEST_NAME).read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _record("b").write(str(tmp_path))
    monkeypatch.undo()
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before
    assert os.listdir(tmp_path) == [MANIFEST_NAME]


def test_unserializable_value_keeps_the_old_manifest(tmp_path):
    _record("a").write(str(tmp_path))
    with pytest.raises(TypeError, match="not JSON serializable"):
        _record(object()).write(str(tmp_path))
    assert manifest.read(str(tmp_path)).monitor == "a"


def test_non_finite_floats_are_written_as_strict_json(tmp_path):
    metrics = {"a": float("nan"), "b": float("inf"), "c": -float("inf"), "d": 0.5}
    _record(kept=(Record(0, 0.5, "e1.weights.h5", metrics),)).write(str(tmp_path))
    text = (tmp_path / MANIFEST_NAME).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert json.loads(text)["kept"][0]["metrics"] == {"a": "nan", "b": "inf", "c": "-inf", "d": 0.5}
    read = manifest.read(str(tmp_path)).kept[0].metrics
    assert np.isnan(read["a"]) and read["b"] == np.inf and read["c"] == -np.inf and read["d"] == 0.5


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"No keras-best run in .*{MANIFEST_NAME} not found"):
        manifest.read(str(tmp_path))


def test_corrupt_manifest(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text('{"format": "keras_best", "vers')
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME} is not valid JSON"):
        manifest.read(str(tmp_path))
    assert issubclass(ManifestError, ValueError)


def test_not_utf8_manifest(tmp_path):
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        manifest.read(str(tmp_path))


@pytest.mark.parametrize("content", ["[1, 2]", '{"monitor": "val_loss"}', '{"format": "other"}'])
def test_json_that_is_not_a_manifest(tmp_path, content):
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ManifestError, match="is not a keras-best manifest"):
        manifest.read(str(tmp_path))


def test_newer_schema(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "keras_best", "version": 99}))
    with pytest.raises(ManifestError, match=r"schema version 99; this keras-best reads 1 to 3. Upgrade"):
        manifest.read(str(tmp_path))


# ------------------------------------------------------------- effective_path
def test_effective_path(tmp_path):
    d = str(tmp_path)
    pending = {"renames": [[".kb-tmp-0123456789ab-b.weights.h5", "b.weights.h5"]], "deletes": []}
    record = dataclasses.replace(_record(), pending=pending)
    assert record.effective_path(d, "b.weights.h5") == os.path.join(d, "b.weights.h5")  # tmp gone
    (tmp_path / ".kb-tmp-0123456789ab-b.weights.h5").write_bytes(b"x")
    assert record.effective_path(d, "b.weights.h5") == os.path.join(d, ".kb-tmp-0123456789ab-b.weights.h5")
    assert record.effective_path(d, "a.weights.h5") == os.path.join(d, "a.weights.h5")
    assert _record().effective_path(d, "b.weights.h5") == os.path.join(d, "b.weights.h5")


# ------------------------------------------------------- crash points, by hand
CRASH_POINTS = [
    "new_file_written",  # new weights under their temp name; manifest still old
    "journal_written",  # manifest has the new state + journal; nothing applied
    "renamed",  # the temp file was renamed into place; old best not yet deleted
    "applied",  # renames and deletes done; manifest still carries the journal
]


@pytest.fixture
def weights():
    """Two distinct weight sets in a tiny model: epoch 0's and epoch 1's."""
    model = make_model()
    perturb(model, 1)
    old = model.get_weights()
    perturb(model, 2)
    new = model.get_weights()
    return model, old, new


def _crash_state(directory, point: str, weights):
    """The run directory as a crash at `point` of epoch 1's commit leaves it."""
    model, old, new = weights
    d = str(directory)
    model.set_weights(old)
    model.save_weights(os.path.join(d, "e1.weights.h5"))
    _write_raw(d, _body("e1.weights.h5", 0, 0.5))
    tmp = files.tmp_path("e2.weights.h5")
    model.set_weights(new)
    model.save_weights(os.path.join(d, tmp))
    pending = {"renames": [[tmp, "e2.weights.h5"]], "deletes": ["e1.weights.h5"]}
    if point == "new_file_written":
        return tmp
    _write_raw(d, {**_body("e2.weights.h5", 1, 0.25), "pending": pending})
    if point == "journal_written":
        return tmp
    os.replace(os.path.join(d, tmp), os.path.join(d, "e2.weights.h5"))
    if point == "renamed":
        return tmp
    os.remove(os.path.join(d, "e1.weights.h5"))
    return tmp


def _expected(point, weights):
    _, old, new = weights
    return (0, 0.5, old) if point == "new_file_written" else (1, 0.25, new)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_load_best_at_each_crash_point(tmp_path, point, weights):
    _crash_state(tmp_path, point, weights)
    snapshot = sorted(os.listdir(tmp_path))
    epoch, value, expected = _expected(point, weights)
    fresh = make_model(seed=5)
    rec = load_best(fresh, str(tmp_path))
    assert (rec.epoch, rec.value) == (epoch, value)
    assert _same(fresh.get_weights(), expected)
    # Reading never changes the directory (a run may still be writing it).
    assert sorted(os.listdir(tmp_path)) == snapshot


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_roll_forward_at_each_crash_point(tmp_path, point, weights):
    _crash_state(tmp_path, point, weights)
    epoch, value, expected = _expected(point, weights)
    data = manifest.roll_forward(str(tmp_path), manifest.read(str(tmp_path)))
    assert data.pending is None
    on_disk = manifest.read(str(tmp_path))
    assert on_disk.pending is None and on_disk.best.epoch == epoch
    # Exactly the recorded file is left: no temp file, no stale best.
    assert sorted(os.listdir(tmp_path)) == sorted([MANIFEST_NAME, on_disk.best.path])
    fresh = make_model(seed=5)
    fresh.load_weights(os.path.join(tmp_path, on_disk.best.path))  # stock Keras loader
    assert _same(fresh.get_weights(), expected)
    assert read_best(str(tmp_path)).value == value
    # Rolling forward again changes nothing.
    manifest.roll_forward(str(tmp_path), manifest.read(str(tmp_path)))
    assert sorted(os.listdir(tmp_path)) == sorted([MANIFEST_NAME, on_disk.best.path])


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_new_tracker_recovers_the_directory(tmp_path, point, weights):
    from keras_best import BestWeightsTracker

    _crash_state(tmp_path, point, weights)
    epoch, _, expected = _expected(point, weights)
    model = make_model(seed=5)
    with pytest.warns(UserWarning, match="already holds a keras-best run"):
        tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), verbose=0)
    tracker.finish()
    assert not [n for n in os.listdir(tmp_path) if files.is_tmp_name(n)]
    moved = str(tmp_path / "previous-1")  # the recovered run, moved aside for the new one
    assert manifest.read(moved).pending is None
    fresh = make_model(seed=6)
    rec = load_best(fresh, moved)
    assert rec.epoch == epoch and _same(fresh.get_weights(), expected)


def test_tmp_names_keep_the_suffix_and_are_recognised():
    tmp = files.tmp_path("runs/best.weights.h5")
    assert tmp.startswith("runs/.kb-tmp-") and tmp.endswith("-best.weights.h5")
    assert files.is_tmp_name(os.path.basename(tmp))
    assert not files.is_tmp_name("best.weights.h5")
    assert not files.is_tmp_name(".kb-tmp-notahexname-x.h5")
    assert files.tmp_path("a.weights.h5") != files.tmp_path("a.weights.h5")


def test_keras_refuses_tmp_name_without_suffix(tmp_path):
    # Why temp names keep `.weights.h5`: Keras checks the ending.
    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`"):
        keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]).save_weights(str(tmp_path / "x.tmp"))
