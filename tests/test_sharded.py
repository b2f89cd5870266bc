"""Sharded `.weights.json` sets (`max_shard_size=`), pinned against the installed Keras: the set is
the one `model.save_weights(path, max_shard_size=)` writes, stock `model.load_weights(index)` reads it,
and the run keeps, evicts, loads and sizes each set as one unit."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from keras_best.cli.summary import summarize
from keras_best.engines.sharded import ShardedWeightsEngine
from keras_best.engines.weights_h5 import WeightsEngine
from keras_best.storage import files, journal, manifest
from tests.test_h5_layout import BUILDERS, original, randomize, tree

GB = 1024**3


def big():
    """Four 64x64 kernels (16 KB each): 4 shards or more at 20 KB a shard."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64) for _ in range(4)]
                            + [keras.layers.Dense(1)])


SHARD = 20_000 / GB


def pattern(model, epoch):
    return [np.full(w.shape, epoch + 1e-3 * i, dtype=w.dtype) for i, w in enumerate(model.weights)]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def write_set(model, directory, name, max_shard_size):
    for member, write in ShardedWeightsEngine(max_shard_size).snapshot(model).files(name):
        write(os.path.join(directory, member))


def on_disk(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith(("keras_best", ".keras_best")))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_set_is_the_one_save_weights_writes(tmp_path, name):
    model = original(name)
    randomize(model, 3)
    snapshot = WeightsEngine().snapshot(model)
    sizes = [a.nbytes for _, _, entries in snapshot.groups for _, a in entries]
    snapshot.release()
    limit = max(max(sizes), sum(sizes) / 3) / GB
    (tmp_path / "k").mkdir()
    (tmp_path / "o").mkdir()
    model.save_weights(str(tmp_path / "k" / "m.weights.json"), max_shard_size=limit)
    write_set(model, str(tmp_path / "o"), "m.weights.json", limit)
    theirs, ours = sorted(os.listdir(tmp_path / "k")), sorted(os.listdir(tmp_path / "o"))
    assert ours == theirs and len(theirs) >= 3  # the index and two shards or more
    assert (tmp_path / "o" / "m.weights.json").read_text() == (tmp_path / "k" / "m.weights.json").read_text()
    for shard in theirs[1:]:
        assert tree(str(tmp_path / "o" / shard)) == tree(str(tmp_path / "k" / shard)), shard


def test_a_variable_larger_than_a_shard_is_refused_as_keras_refuses_it(tmp_path):
    model = big()
    with pytest.raises(ValueError, match="exceeds the maximum shard size") as ours:
        ShardedWeightsEngine(1000 / GB).snapshot(model)
    with pytest.raises(ValueError, match="exceeds the maximum shard size") as theirs:
        model.save_weights(str(tmp_path / "m.weights.json"), max_shard_size=1000 / GB)
    assert str(ours.value) == str(theirs.value)


def test_top_k_keeps_whole_sets_and_stock_load_weights_reads_them(tmp_path):
    model = big()
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.json"), keep_top_k=2,
                                 max_shard_size=SHARD, verbose=0)
    for epoch, loss in enumerate([5.0, 4.0, 3.0, 3.5, 2.0]):
        model.set_weights(pattern(model, epoch))
        tracker.update(epoch, {"val_loss": loss})
    tracker.finish()
    record = manifest.read(str(tmp_path))
    assert [r.path for r in record.kept] == ["05.weights.json", "03.weights.json"]
    kept = [m for r in record.kept for m in files.members(str(tmp_path), r.path)]
    assert len(kept) >= 2 * 4
    assert on_disk(tmp_path) == sorted(kept), "evicted sets must go whole, shards and index"
    for r in record.kept:
        fresh = big()
        fresh.load_weights(str(tmp_path / r.path))  # stock Keras, through the index
        assert same(fresh.get_weights(), pattern(model, r.epoch))
    fresh = big()
    assert load_best(fresh, str(tmp_path)).epoch == 4
    assert same(fresh.get_weights(), pattern(model, 4))
    summary = summarize(str(tmp_path))
    sizes = {r["path"]: r["size_bytes"] for r in summary["kept"]}
    for r in record.kept:
        assert sizes[r.path] == sum(os.path.getsize(tmp_path / m) for m in files.members(str(tmp_path), r.path))


def test_a_fixed_name_rewritten_keeps_one_set_and_restores_best(tmp_path):
    model = big()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.json"), max_shard_size=SHARD, verbose=0,
                                 restore_best_weights=True)
    for epoch, loss in enumerate([3.0, 2.0, 2.5]):
        model.set_weights(pattern(model, epoch))
        tracker.update(epoch, {"val_loss": loss})
    tracker.finish()
    assert same(model.get_weights(), pattern(model, 1))
    assert on_disk(tmp_path) == sorted(files.members(str(tmp_path), "best.weights.json"))
    fresh = big()
    fresh.load_weights(str(tmp_path / "best.weights.json"))
    assert same(fresh.get_weights(), pattern(model, 1))


def test_load_best_never_mixes_two_sets_renamed_while_it_reads(tmp_path, monkeypatch):
    """A fixed-name set replaced while `load_best` reads it (the record read
    before the commit, the shards read while they are renamed one by one):
    the weights loaded are one save's, never old shards with new ones."""
    import threading

    from keras_best.frontends import loading

    model = big()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.json"), max_shard_size=SHARD, verbose=0)
    model.set_weights(pattern(model, 0))
    tracker.update(0, {"val_loss": 3.0})
    tracker.flush()
    mid, go = threading.Event(), threading.Event()
    real_replace, real_read_best = files.replace, loading.read_best

    def replace(src, dst, *args):  # the new set's first shard goes in; the writer waits there
        real_replace(src, dst, *args)
        if files.is_shard_of(os.path.basename(dst), "best.weights.json") and not mid.is_set():
            mid.set()
            assert go.wait(30)

    def read_best(directory):  # the record is read; then the next save commits
        best = real_read_best(directory)
        if not mid.is_set():
            model.set_weights(pattern(model, 1))
            tracker.update(1, {"val_loss": 2.0})
            assert mid.wait(30)
        return best

    monkeypatch.setattr(files, "replace", replace)
    monkeypatch.setattr(loading, "read_best", read_best)
    reader = big()
    try:
        loaded = load_best(reader, str(tmp_path))
    finally:
        go.set()
    tracker.finish()
    assert loaded.epoch == 1 and same(reader.get_weights(), pattern(model, 1))


def test_best_checkpoint_writes_sets_in_fit(tmp_path):
    model = big()
    model.compile("sgd", "mse")
    x, y = np.ones((8, 64), "float32"), np.zeros((8, 1), "float32")
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[BestCheckpoint(
        str(tmp_path / "best.weights.json"), save_weights_only=True, max_shard_size=SHARD, verbose=0)])
    fresh = big()
    fresh.load_weights(str(tmp_path / "best.weights.json"))
    assert len(files.members(str(tmp_path), "best.weights.json")) >= 5
    assert load_best(big(), str(tmp_path)).path.endswith("best.weights.json")


def test_journal_renames_a_set_as_one_unit_and_drops_an_older_sets_extra_shards(tmp_path):
    d = str(tmp_path)
    for i in range(4):  # an older set of the same name, with one shard more
        (tmp_path / f"best_{i:05}.weights.h5").write_bytes(b"old")
    (tmp_path / "best.weights.json").write_bytes(b"old")
    (tmp_path / "other_00000.weights.h5").write_bytes(b"other")  # not a member: never touched
    token = files.tmp_path("")
    new = [f"best_{i:05}.weights.h5" for i in range(3)] + ["best.weights.json"]
    for n in new:
        (tmp_path / (token + n)).write_bytes(b"new")
    pending = {"renames": [[token + n, n] for n in new], "deletes": []}
    journal.apply(d, {"renames": pending["renames"][:2], "deletes": []})  # a crash after two renames...
    journal.apply(d, pending)  # ...rolled forward
    assert on_disk(tmp_path) == sorted(new + ["other_00000.weights.h5"])
    assert all((tmp_path / n).read_bytes() == b"new" for n in new)
    journal.apply(d, {"renames": [], "deletes": ["best.weights.json"]})
    assert on_disk(tmp_path) == ["other_00000.weights.h5"]


def test_a_pending_set_loads_through_its_temp_names(tmp_path):
    """Killed after the journal, before its renames: load_best reads the new set."""
    model = big()
    d = str(tmp_path)
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.json"), max_shard_size=SHARD, verbose=0)
    model.set_weights(pattern(model, 0))
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    record = manifest.read(d)
    token = files.tmp_path("")
    model.set_weights(pattern(model, 7))
    renames = []
    for name, write in ShardedWeightsEngine(SHARD).snapshot(model).files("best.weights.json"):
        write(os.path.join(d, token + name))
        renames.append([token + name, name])
    journal.apply(d, {"renames": renames[:1], "deletes": []})  # one shard already renamed
    record.__class__(**{**record.__dict__, "pending": {"renames": renames, "deletes": []}}).write(d)
    fresh = big()
    load_best(fresh, d)
    assert same(fresh.get_weights(), pattern(model, 7))


def test_the_record_names_shards_only_as_members_of_a_set(tmp_path):
    model = big()
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.json"), max_shard_size=SHARD,
                                 keep_top_k=None, verbose=0)
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    path = tmp_path / manifest.MANIFEST_NAME
    data = json.loads(path.read_text())
    data["kept"].append(dict(data["kept"][0], path="01_00000.weights.h5", epoch=5))
    path.write_text(json.dumps(data))
    with pytest.raises(manifest.ManifestError, match="a shard of the recorded set"):
        manifest.read(str(tmp_path))
    data["kept"].pop()
    data["pending"] = {"renames": [[files.tmp_path("01.weights.json"), "01.weights.json"],
                                   [files.tmp_path("x.weights.h5"), "x.weights.h5"]], "deletes": []}
    path.write_text(json.dumps(data))
    with pytest.raises(manifest.ManifestError, match="whose shards it is not"):
        manifest.read(str(tmp_path))


@pytest.mark.parametrize("kwargs, filepath, match", [
    ({"max_shard_size": -1}, "m.weights.json", "must be > 0"),
    ({"max_shard_size": 0}, "m.weights.json", "must be > 0"),
    ({"max_shard_size": "1GB"}, "m.weights.json", "must be a number"),
    ({"max_shard_size": True}, "m.weights.json", "must be a number"),
    ({"max_shard_size": float("nan")}, "m.weights.json", "must be a number"),
    ({"max_shard_size": 1, "save_format": "savedmodel"}, "export", "SavedModel directory"),
    ({"max_shard_size": 1}, "m.keras", "no sharded `.keras`"),
    ({"max_shard_size": 1}, "m.weights.h5", "must end in `.weights.json`"),
    ({}, "m.weights.json", "pass `max_shard_size`"),
    ({"max_shard_size": 1, "save_format": "savedmodel", "export_at_finish": True}, "export", "cannot be sharded"),
])
def test_options_are_checked_at_construction(tmp_path, kwargs, filepath, match):
    with pytest.raises(ValueError, match=match):
        BestWeightsTracker(big(), str(tmp_path / filepath), **kwargs)
    assert not (tmp_path / manifest.MANIFEST_NAME).exists()


def test_best_checkpoint_checks_the_same(tmp_path):
    with pytest.raises(ValueError, match="no sharded `.keras`"):
        BestCheckpoint(str(tmp_path / "m.weights.json"), max_shard_size=1)  # save_weights_only=False
    with pytest.raises(ValueError, match="must be > 0"):
        BestCheckpoint(str(tmp_path / "m.weights.json"), save_weights_only=True, max_shard_size=-0.5)
    assert BestCheckpoint(str(tmp_path / "m.weights.json"), save_weights_only=True, max_shard_size=2)


@pytest.mark.parametrize("newer_kept, newer_set, survives", [
    (["a.weights.json", "b.weights.json"], "b.weights.json", True),  # still named: every shard kept
    (["a.weights.json"], "a.weights.json", False),  # rewritten: none of the older shards kept
    (["b.weights.json"], "b.weights.json", False),  # evicted since: none kept
])
def test_a_merged_transaction_keeps_or_drops_a_set_whole(newer_kept, newer_set, survives):
    from keras_best.storage.writer import Transaction, merge
    from tests.test_async_writer import run_record

    def set_txn(name, kept, shards):
        token = files.tmp_path("")
        members = [files.shard_name(name, i) for i in range(shards)] + [name]
        return Transaction(record=run_record(kept), jobs=[(print, token + m) for m in members],
                           renames=[(token + m, m) for m in members])

    older = set_txn("a.weights.json", ["a.weights.json"], 4)
    newer = set_txn(newer_set, newer_kept, 3)
    newer.jobs = []  # written already: the two may merge
    merged = merge(older, newer)
    left = [final for _, final in merged.renames if files.is_shard_of(final, "a.weights.json")
            or final == "a.weights.json"]
    kept_jobs = [t for _, t in merged.jobs]
    if survives:
        assert len(left) == 5 and len(kept_jobs) == 5
    else:
        assert len(kept_jobs) == 0
        assert left == ([] if newer_set != "a.weights.json" else [n for _, n in newer.renames])


def test_resume_reads_the_best_set_back(tmp_path):
    def tracker(model):
        model.compile("sgd", "mse")
        return BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.json"), max_shard_size=SHARD,
                                  keep_top_k=2, resume=True, restore_best_weights=True, verbose=0)

    model = big()
    first = tracker(model)
    for epoch, loss in enumerate([2.0, 1.0, 1.5]):
        model.set_weights(pattern(model, epoch))
        first.update(epoch, {"val_loss": loss})
    first.finish()
    model = big()
    second = tracker(model)
    assert second.initial_epoch == 3
    model.set_weights(pattern(model, 3))
    second.update(3, {"val_loss": 1.2})
    second.finish()
    assert same(model.get_weights(), pattern(model, 1))  # the best set, read back at resume
    assert on_disk(tmp_path) == sorted(files.members(str(tmp_path), "02.weights.json")
                                       + files.members(str(tmp_path), "04.weights.json"))


class OwnSave(keras.Sequential):
    """A model with its own `save_weights`: saved by it, in the training thread."""

    calls = 0

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        OwnSave.calls += 1
        return super().save_weights(filepath, overwrite=overwrite, max_shard_size=max_shard_size)


def test_a_model_with_its_own_save_weights_writes_its_set_itself(tmp_path):
    keras.utils.set_random_seed(0)
    model = OwnSave([keras.Input((64,))] + [keras.layers.Dense(64) for _ in range(3)])
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.json"), max_shard_size=SHARD,
                                 verbose=0)
    for epoch, loss in enumerate([2.0, 1.0]):
        model.set_weights(pattern(model, epoch))
        tracker.update(epoch, {"val_loss": loss})
    tracker.finish()
    assert OwnSave.calls == 2
    assert on_disk(tmp_path) == sorted(files.members(str(tmp_path), "02.weights.json"))
    assert len(on_disk(tmp_path)) == 4
    fresh = keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64) for _ in range(3)])
    fresh.load_weights(str(tmp_path / "02.weights.json"))
    assert same(fresh.get_weights(), pattern(model, 1))


def test_sets_in_a_remote_run_directory(tmp_path):
    pytest.importorskip("fsspec")
    import uuid

    remote = f"memory://sharded-{uuid.uuid4().hex[:8]}"
    model = big()
    tracker = BestWeightsTracker(model, remote + "/{epoch:02d}.weights.json", max_shard_size=SHARD, verbose=0)
    for epoch, loss in enumerate([2.0, 1.0]):
        model.set_weights(pattern(model, epoch))
        tracker.update(epoch, {"val_loss": loss})
    tracker.finish()
    names = sorted(files.listdir(remote))
    assert [n for n in names if "weights" in n] == sorted(files.members(remote, "02.weights.json"))
    fresh = big()
    assert load_best(fresh, remote).epoch == 1
    assert same(fresh.get_weights(), pattern(model, 1))
