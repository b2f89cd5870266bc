"""Remote run directories, on two in-memory file systems that live in this
process (so every test uses a fresh name): fsspec's `memory://` (on every
backend) and TensorFlow's `ram://` through `tf.io.gfile` (TensorFlow backend
only). Every saved format, the manifest, resume, `load_best`, inspect, the
journal's roll-forward, a failed upload, hostile records, and errors for
schemes nothing here can reach. Files are read back with fsspec and
`tf.io.gfile` themselves, and with Keras's stock loaders."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import sys
import uuid

import keras
import numpy as np
import pytest

from keras_best import BestCheckpoint, BestWeightsTracker, SaveError, load_best
from keras_best.cli import commands as cli
from keras_best.cli.summary import summarize
from keras_best.core import formats
from keras_best.storage import files, manifest
from keras_best.storage.manifest import ManifestError
from tests.conftest import BACKEND, VALUES, make_model, model_at, perturb, run_json, train, weights_equal

HAS_FSSPEC = importlib.util.find_spec("fsspec") is not None
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
needs_fsspec = pytest.mark.skipif(not HAS_FSSPEC, reason="needs fsspec (pip install 'keras-best[remote]')")
SCHEMES = [
    pytest.param("memory", marks=needs_fsspec),
    pytest.param("ram", marks=pytest.mark.skipif(BACKEND != "tensorflow", reason="ram:// is TensorFlow's")),
]


class Store:
    """The file system under a test directory, straight from fsspec or
    `tf.io.gfile` (not through keras-best)."""

    def __init__(self, directory: str) -> None:
        self.gfile = None
        if directory.startswith("ram://"):
            import tensorflow as tf

            self.gfile = tf.io.gfile
        else:
            import fsspec

            self.fs, _ = fsspec.core.url_to_fs(directory)

    def tree(self, directory: str) -> set[str]:
        """Every file under `directory`, relative, '/'-separated."""
        if self.gfile:
            walk = ((root, names) for root, _, names in self.gfile.walk(directory))
        else:
            walk = ((root, names) for root, _, names in self.fs.walk(directory))
            directory = self.fs._strip_protocol(directory)
        out = set()
        for root, names in walk:
            rel = root[len(directory):].strip("/")
            out |= {f"{rel}/{n}" if rel else n for n in names}
        return out

    def write(self, path: str, data: bytes) -> None:
        if self.gfile:
            self.gfile.makedirs(path.rsplit("/", 1)[0])
            if self.gfile.exists(path):  # on ram://, "wb" does not truncate
                self.gfile.remove(path)
            with self.gfile.GFile(path, "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(path, data)

    def read(self, path: str) -> bytes:
        if self.gfile:
            with self.gfile.GFile(path, "rb") as f:
                return f.read()
        return self.fs.cat_file(path)

    def exists(self, path: str) -> bool:
        return self.gfile.exists(path) if self.gfile else self.fs.exists(path)

    def makedirs(self, path: str) -> None:
        if self.gfile:
            self.gfile.makedirs(path)
        else:
            self.fs.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        if self.gfile:
            return [n.rstrip("/") for n in self.gfile.listdir(path)]
        return [p.rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)]

    def write_dir(self, directory: str, content: dict[str, bytes]) -> None:
        for rel, data in content.items():
            self.write(f"{directory}/{rel}", data)

    def read_dir(self, directory: str) -> dict[str, bytes]:
        return {rel: self.read(f"{directory}/{rel}") for rel in self.tree(directory)}

    def download(self, path: str, local: str) -> str:
        """A path stock loaders read: `path` itself on ram:// (they read it
        through tf.io.gfile), else a local copy of the file or directory."""
        if self.gfile:
            return path
        if not self.isdir(path):
            with open(local, "wb") as f:
                f.write(self.read(path))
            return local
        for rel in self.tree(path):
            target = os.path.join(local, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(self.read(f"{path}/{rel}"))
        return local

    def isdir(self, path: str) -> bool:
        return self.gfile.isdir(path) if self.gfile else self.fs.isdir(path)


@pytest.fixture(params=SCHEMES)
def remote_dir(request):
    directory = f"{request.param}://keras_best_tests/{uuid.uuid4().hex}"
    yield directory
    files.remove(directory, missing_ok=True)


@pytest.fixture
def store(remote_dir):
    return Store(remote_dir)


def _optimizer():
    return keras.optimizers.Adam()


FORMATS = [
    ("best.weights.h5", {}, {"best.weights.h5"}),
    ("m-{epoch:02d}.keras", {"keep_top_k": 2}, {"m-02.keras", "m-04.keras"}),
    pytest.param(
        "export", {"save_format": "savedmodel"},
        {"export/saved_model.pb", "export/fingerprint.pb", "export/variables/variables.index",
         "export/variables/variables.data-00000-of-00001", f"export/{formats.EXPORT_WEIGHTS_NAME}"},
        marks=pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs TensorFlow")),
]


@pytest.mark.parametrize("name,options,saved", FORMATS, ids=["weights", "keras", "savedmodel"])
def test_every_format(remote_dir, store, tmp_path, name, options, saved):
    model = make_model()
    tracker = train(model, f"{remote_dir}/{name}", save_last=True, optimizer=_optimizer(), **options)

    # Exactly the kept files, the manifest and the training state: no temp
    # names, no completion markers, no local leftovers.
    assert store.tree(remote_dir) == saved | {manifest.MANIFEST_NAME, manifest.HISTORY_NAME, "keras_best_last.h5"}
    data = run_json(remote_dir)
    assert data["best"]["epoch"] == 3 and data["best"]["value"] == 1.0
    assert "pending" not in data
    best = model_at(3)

    # load_best straight from the remote directory...
    restored = make_model(seed=7)
    record = load_best(restored, remote_dir)
    assert (record.epoch, record.value) == (3, 1.0)
    assert record.path == tracker.best_path and record.path.startswith(remote_dir + "/")
    assert weights_equal(restored, best)
    # ...and the stock loader of each format, on the file as stored there.
    local = store.download(record.path, str(tmp_path / files.basename(record.path)))
    fmt = formats.resolve_format(name, options.get("save_format"))
    if fmt == "weights":
        stock = make_model(seed=7)
        stock.load_weights(local)
        assert weights_equal(stock, best)
    elif fmt == "keras":
        assert weights_equal(keras.models.load_model(local), best)
    else:
        import tensorflow as tf

        x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
        loaded = tf.saved_model.load(local)  # kept: its functions need its variables
        served = loaded.serve(x)
        np.testing.assert_allclose(served.numpy(), best(x).numpy(), rtol=1e-6)
    if remote_dir.startswith("memory://") and BACKEND != "tensorflow":
        assert "tensorflow" not in sys.modules  # fsspec paths never need it


@pytest.mark.parametrize("name,options,saved", FORMATS, ids=["weights", "keras", "savedmodel"])
def test_resume(remote_dir, store, name, options, saved):
    model = make_model()
    train(model, f"{remote_dir}/{name}", save_last=True, optimizer=_optimizer(), **options)

    resumed = make_model(seed=9)
    tracker = BestWeightsTracker(resumed, f"{remote_dir}/{name}", monitor="val_loss", resume=True,
                                 optimizer=_optimizer(), restore_best_weights=True, verbose=0, **options)
    assert tracker.initial_epoch == len(VALUES)
    assert (tracker.best, tracker.best_epoch) == (1.0, 3)
    assert weights_equal(resumed, model_at(len(VALUES) - 1))  # the last state
    perturb(resumed, 99)
    decision = tracker.update(len(VALUES), {"val_loss": 0.5})
    tracker.finish()
    assert decision.improved and decision.saved_path.startswith(remote_dir + "/")
    assert load_best(make_model(seed=7), remote_dir).epoch == len(VALUES)
    assert not any(files.is_tmp_name(n.split("/")[0]) for n in store.tree(remote_dir))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs TensorFlow")
def test_export_at_finish(remote_dir, store, tmp_path):
    import tensorflow as tf

    model = make_model()
    train(model, f"{remote_dir}/best", save_format="savedmodel", export_at_finish=True)
    tree = store.tree(remote_dir)
    assert {"best.weights.h5", "best/saved_model.pb", manifest.MANIFEST_NAME} <= tree
    assert not any(files.COMPLETE_MARKER in n or files.is_tmp_name(n.split("/")[0]) for n in tree)
    x = np.ones((1, 4), "float32")
    loaded = tf.saved_model.load(store.download(f"{remote_dir}/best", str(tmp_path / "best")))
    served = loaded.serve(x)
    np.testing.assert_allclose(served.numpy(), model_at(3)(x).numpy(), rtol=1e-6)
    assert weights_equal(model, model_at(len(VALUES) - 1))  # export left the model as it was


def test_fit_callback_keeps_the_top_k(remote_dir, store, data):
    x, y = data
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    callback = BestCheckpoint(f"{remote_dir}/e{{epoch:02d}}.weights.h5", monitor="loss", keep_top_k=2)
    losses = model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[callback]).history["loss"]
    top = sorted(range(len(losses)), key=losses.__getitem__)[:2]
    assert store.tree(remote_dir) == {f"e{e + 1:02d}.weights.h5" for e in top} | {
        manifest.MANIFEST_NAME, manifest.HISTORY_NAME}
    record = load_best(make_model(seed=3), remote_dir)
    assert record.value == pytest.approx(min(losses)) and record.epoch == top[0]


def test_roll_forward(remote_dir, store, tmp_path):
    """A crash after the journal was written: the next tracker finishes the
    renames and deletes, and removes stray temp files."""
    model = make_model()
    train(model, f"{remote_dir}/best.weights.h5")
    newer = model_at(50)
    tmp = files.tmp_path("best.weights.h5")
    stray = files.tmp_path("other.weights.h5")
    newer.save_weights(str(tmp_path / "newer.weights.h5"))
    for name in (tmp, stray):
        store.write(f"{remote_dir}/{name}", (tmp_path / "newer.weights.h5").read_bytes())
    data = run_json(remote_dir)
    data["best"] = data["kept"][0] = {**data["best"], "epoch": 50, "value": 0.1}
    data["pending"] = {"renames": [[tmp, "best.weights.h5"]], "deletes": []}
    del data["history"]
    store.write(manifest.manifest_path(remote_dir), json.dumps(data).encode())

    # Readers see the new content while the journal is pending, under its recorded name...
    reader = make_model(seed=7)
    assert load_best(reader, remote_dir).path == f"{remote_dir}/best.weights.h5"
    assert weights_equal(reader, newer)
    # ...and a new tracker rolls it forward, then moves it aside (a new run starts there).
    with pytest.warns(UserWarning, match="already holds a keras-best run.*were moved to .*previous-1"):
        BestWeightsTracker(make_model(), f"{remote_dir}/best.weights.h5", monitor="val_loss",
                           verbose=0).finish()
    assert store.tree(remote_dir) == {f"previous-1/{n}" for n in (
        "best.weights.h5", manifest.MANIFEST_NAME, manifest.HISTORY_NAME)}
    assert "pending" not in run_json(f"{remote_dir}/previous-1")
    restored = make_model(seed=7)
    assert load_best(restored, f"{remote_dir}/previous-1").epoch == 50 and weights_equal(restored, newer)


NEW = {"saved_model.pb": b"new", "variables/v.index": b"new-index", files.COMPLETE_MARKER: b"1"}
COPIED = {"saved_model.pb": b"new", "variables/v.index": b"new-index"}


def test_remote_directory_replace_is_a_copy(remote_dir, store):
    """Remote directories cannot be renamed (gfile.rename drops a ram://
    directory's content): replace copies them."""
    store.write_dir(f"{remote_dir}/src", NEW)
    store.write_dir(f"{remote_dir}/dst", {"saved_model.pb": b"old", "stale.txt": b"old"})
    files.replace(f"{remote_dir}/src", f"{remote_dir}/dst")
    assert store.read_dir(f"{remote_dir}/dst") == COPIED
    assert not store.exists(f"{remote_dir}/src")


def test_remote_directory_replace_after_a_crash_while_copying(remote_dir, store):
    """The source still has its marker: copy again, over the partial copy."""
    store.write_dir(f"{remote_dir}/src", NEW)
    store.write_dir(f"{remote_dir}/dst", {"saved_model.pb": b"new"})  # half copied
    files.replace(f"{remote_dir}/src", f"{remote_dir}/dst")
    assert store.read_dir(f"{remote_dir}/dst") == COPIED


def test_remote_directory_replace_after_a_crash_while_removing(remote_dir, store):
    """The marker is gone: the copy was complete, only the source is removed."""
    store.write_dir(f"{remote_dir}/src", {"variables/v.index": b"new-index"})  # marker removed
    store.write_dir(f"{remote_dir}/dst", COPIED)
    files.replace(f"{remote_dir}/src", f"{remote_dir}/dst")
    assert store.read_dir(f"{remote_dir}/dst") == COPIED
    assert not store.exists(f"{remote_dir}/src")


def test_manifest_is_json(remote_dir):
    train(make_model(), f"{remote_dir}/best.weights.h5")
    data = run_json(remote_dir)
    assert data["format"] == "keras_best" and data["best"]["path"] == "best.weights.h5"
    assert [h["epoch"] for h in data["history"]] == list(range(len(VALUES)))


def test_load_best_on_an_empty_remote_directory(remote_dir, store):
    store.makedirs(remote_dir)
    with pytest.raises(FileNotFoundError, match="keras_best.json not found"):
        load_best(make_model(), remote_dir)


def test_inspect_in_process(remote_dir, store, capsys):
    """`keras-best inspect` (in this process: both file systems live in it)
    and `summarize` read the run, with the size of every kept file."""
    train(make_model(), f"{remote_dir}/e{{epoch}}.weights.h5", keep_top_k=2)
    s = summarize(remote_dir)
    assert s["best"]["epoch"] == 3 and s["directory"] == remote_dir
    assert [(k["epoch"], k["size_bytes"]) for k in s["kept"]] == [
        (e, len(store.read(f"{remote_dir}/e{e + 1}.weights.h5"))) for e in (3, 1)]
    assert cli.main(["inspect", remote_dir]) == 0
    assert "e4.weights.h5" in capsys.readouterr().out
    assert cli.main(["inspect", "--json", f"{remote_dir}/{manifest.MANIFEST_NAME}"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["path"] == "e4.weights.h5"


def test_unknown_scheme_says_how_to_fix(model):
    with pytest.raises(ValueError, match=r"No file system for 'nosuchfs://' paths.*fsspec.*tensorflow-io"):
        BestWeightsTracker(model, "nosuchfs://bucket/run/best.weights.h5")
    with pytest.raises(ValueError, match=r"No file system for 'nosuchfs://'.*Received: nosuchfs://bucket/run"):
        load_best(model, "nosuchfs://bucket/run")


@pytest.mark.skipif(HAS_TENSORFLOW or importlib.util.find_spec("gcsfs") is not None or not HAS_FSSPEC,
                    reason="gs:// is reachable here (gcsfs or tf.io.gfile)")
def test_a_missing_fsspec_implementation_names_the_package(model):
    with pytest.raises(ValueError, match=r"install gcsfs for gs:// paths: pip install gcsfs.*Received: gs://b/r"):
        BestWeightsTracker(model, "gs://b/r/best.weights.h5")


@pytest.mark.skipif(HAS_TENSORFLOW, reason="TensorFlow's tf.io.gfile is the fallback here")
def test_without_fsspec_nor_tensorflow_says_what_to_install(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"No file system for 'memory://' paths is installed\. Install fsspec"):
        load_best(model, "memory://bucket/run")


def test_names_that_share_a_prefix(remote_dir, store):
    """On ram://, exists/listdir/rmtree of `export-1` also match `export-10`:
    removing or replacing one must leave the other whole."""
    ten = {"saved_model.pb": b"ten", "variables/v.index": b"ten-index"}

    def read(directory, names):  # not read_dir: listing export-1 on ram:// shows export-10's "0"
        return {n: store.read(f"{remote_dir}/{directory}/{n}") for n in names}

    store.write_dir(f"{remote_dir}/export-10", ten)
    store.write_dir(f"{remote_dir}/export-1", {"saved_model.pb": b"one", "stale.txt": b"one"})
    store.write_dir(f"{remote_dir}/src", NEW)
    files.replace(f"{remote_dir}/src", f"{remote_dir}/export-1")
    assert read("export-1", COPIED) == COPIED
    assert not store.exists(f"{remote_dir}/export-1/stale.txt")
    assert read("export-10", ten) == ten
    files.remove(f"{remote_dir}/export-1")
    assert not store.exists(f"{remote_dir}/export-1/saved_model.pb")
    assert read("export-10", ten) == ten
    files.remove(f"{remote_dir}/export-1", missing_ok=True)  # only a prefix of export-10 now
    assert store.read_dir(f"{remote_dir}/export-10") == ten
    assert sorted(store.listdir(remote_dir)) == ["export-10"]


def test_remote_errors_are_python_errors(remote_dir, store):
    store.makedirs(remote_dir)
    with pytest.raises(FileNotFoundError, match=r"://.*/nope\.json"):
        files.read_bytes(f"{remote_dir}/nope.json")
    with pytest.raises(FileNotFoundError, match=r"://.*/nope\.h5"):
        files.replace(f"{remote_dir}/nope.h5", f"{remote_dir}/other.h5")
    with pytest.raises(FileNotFoundError, match=r"://.*/nope\.h5"):
        load_best(make_model(), f"{remote_dir}/nope.h5")


@pytest.mark.parametrize("value", ["../outside.weights.h5", "/keras_best_tests/outside.weights.h5", "..",
                                   "sub/x.weights.h5", manifest.MANIFEST_NAME])
@pytest.mark.parametrize("field", ["best", "renames", "deletes"])
def test_a_remote_record_naming_a_path_outside_the_run_is_refused(remote_dir, store, field, value):
    """Anything read from the bucket is untrusted, as on a local disk."""
    victim = f"{remote_dir}/outside.weights.h5"
    run = f"{remote_dir}/run"
    store.write(victim, b"precious")
    store.write(f"{run}/b.weights.h5", b"kept")
    good = {"epoch": 0, "value": 0.5, "path": "b.weights.h5", "step": None, "metrics": {"val_loss": 0.5}}
    data = {"format": "keras_best", "version": 2, "monitor": "val_loss", "mode": "min", "history_count": 0,
            "history_bytes": 0, "best": good, "kept": [good], "engine": {"best": 0.5, "best_epoch": 0, "wait": 0}}
    if field == "best":
        data["best"] = data["kept"][0] = {**good, "path": value}
    elif field == "renames":
        data["pending"] = {"renames": [[".kb-tmp-0123456789ab-b.weights.h5", value]], "deletes": []}
    else:
        data["pending"] = {"renames": [], "deletes": [value]}
    store.write(f"{run}/{manifest.MANIFEST_NAME}", json.dumps(data).encode())
    for action in (
        lambda: BestWeightsTracker(make_model(), f"{run}/b.weights.h5", resume=True, verbose=0),
        lambda: load_best(make_model(), run),
        lambda: summarize(run),
    ):
        with pytest.raises(ManifestError, match=r"keras_best\.json: field '.*' .*Nothing in it was acted upon"):
            action()
    assert store.read(victim) == b"precious" and store.read(f"{run}/b.weights.h5") == b"kept"
    assert store.tree(run) == {"b.weights.h5", manifest.MANIFEST_NAME}


# ------------------------------------------------- a file system that fails
if HAS_FSSPEC:
    from fsspec import register_implementation
    from fsspec.implementations.memory import MemoryFileSystem

    class FailingFS(MemoryFileSystem):
        """fsspec's in-memory file system under `kbfail://`, whose uploads of
        a file named with `fail_on` fail (as a bucket over quota would),
        `fail_count` times."""

        protocol = "kbfail"
        store: dict = {}
        pseudo_dirs = [""]
        fail_on, fail_count = "", 0

        @classmethod
        def _strip_protocol(cls, path):
            return MemoryFileSystem._strip_protocol(path.removeprefix("kbfail://"))

        def _maybe_fail(self, path):
            if FailingFS.fail_count and FailingFS.fail_on in path.rsplit("/", 1)[-1]:
                FailingFS.fail_count -= 1
                raise OSError(errno.EDQUOT, "Quota exceeded")

        def put_file(self, lpath, rpath, **kwargs):
            self._maybe_fail(rpath)
            return super().put_file(lpath, rpath, **kwargs)

        def pipe_file(self, path, value, **kwargs):
            self._maybe_fail(path)
            return super().pipe_file(path, value, **kwargs)

    register_implementation("kbfail", FailingFS, clobber=True)


@needs_fsspec
@pytest.mark.parametrize("async_save", [False, True])
@pytest.mark.parametrize("fail_on", ["e2.weights.h5", manifest.MANIFEST_NAME])
def test_a_failed_upload_keeps_the_previous_best(fail_on, async_save):
    run = f"kbfail://keras_best_tests/{uuid.uuid4().hex}"
    model = make_model()
    tracker = BestWeightsTracker(model, f"{run}/e{{epoch}}.weights.h5", keep_top_k=1, verbose=0,
                                 async_save=async_save)
    perturb(model, 0)
    tracker.update(0, {"val_loss": 1.0})
    tracker.flush()
    FailingFS.fail_on, FailingFS.fail_count = fail_on, 1
    perturb(model, 1)
    with pytest.raises(SaveError, match=r"Quota exceeded \(kbfail://.*\)"):
        tracker.update(1, {"val_loss": 0.5})
        tracker.flush()
    assert FailingFS.fail_count == 0
    restored = make_model(seed=5)
    assert load_best(restored, run).epoch == 0 and weights_equal(restored, model_at(0))
    names = set(Store(run).listdir(run))
    assert {"e1.weights.h5", manifest.MANIFEST_NAME} <= names
    if fail_on != manifest.MANIFEST_NAME:  # else the new file's temp copy stays until the next start
        assert not any(files.is_tmp_name(n) for n in names)
    perturb(model, 2)  # training carries on, and the next improvement is saved
    tracker.update(2, {"val_loss": 0.4})
    tracker.finish()
    assert load_best(restored, run).epoch == 2 and weights_equal(restored, model_at(2))
    # A temp file a failed commit left is removed at the next start.
    with pytest.warns(UserWarning, match="already holds a keras-best run"):
        BestWeightsTracker(make_model(), f"{run}/e{{epoch}}.weights.h5", verbose=0).close()
    assert Store(run).tree(run) == {f"previous-1/{n}" for n in (
        "e3.weights.h5", manifest.MANIFEST_NAME, manifest.HISTORY_NAME)}  # the old run, moved aside


@needs_fsspec
def test_a_failed_write_brings_back_best_weights_no_later_copy_overwrote(tmp_path):
    """restore_best_weights after a failed background write: the weights kept
    in memory are the previous best's, although the host copies of later
    saves (every epoch, none better) went round through the same pool."""
    run = f"kbfail://keras_best_tests/{uuid.uuid4().hex}"
    model = make_model()
    tracker = BestWeightsTracker(model, f"{run}/e{{epoch}}.weights.h5", save_best_only=False,
                                 keep_top_k=None, restore_best_weights=True, verbose=0)
    perturb(model, 0)
    best = model.get_weights()
    tracker.update(0, {"val_loss": 0.5})
    tracker.flush()
    FailingFS.fail_on, FailingFS.fail_count = "e2.weights.h5", 1  # epoch 1's file
    perturb(model, 1)
    with pytest.raises(SaveError, match="Quota exceeded"):
        tracker.update(1, {"val_loss": 0.4})  # a new best, whose write fails
        tracker.flush()
    for epoch in range(2, 6):  # saved, never better: their copies reuse free arrays
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": 0.9})
        tracker.flush()
    assert tracker._run.buffers.reused_bytes > 0
    tracker.finish()
    assert tracker.best_epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), best))


# ------------------------------------------------- file:// URLs
def test_a_file_url_is_the_local_directory(tmp_path):
    url = f"file://{tmp_path}/run"
    tracker = train(make_model(), f"{url}/best.weights.h5")
    assert tracker.best_path == str(tmp_path / "run" / "best.weights.h5")
    assert sorted(os.listdir(tmp_path / "run")) == sorted(
        ["best.weights.h5", manifest.MANIFEST_NAME, manifest.HISTORY_NAME])
    restored = make_model(seed=7)
    assert load_best(restored, url).epoch == 3 and weights_equal(restored, model_at(3))
    assert summarize(f"file://localhost{tmp_path}/run")["best"]["epoch"] == 3
    with pytest.raises(ValueError, match=r"file:///data/runs/exp1 \(three slashes\)\. Received: file://run"):
        BestWeightsTracker(make_model(), "file://run/best.weights.h5")
