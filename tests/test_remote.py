"""Remote run directories through `tf.io.gfile`, tested with TensorFlow's
`ram://` file system (it lives in this process's memory, so every test uses a
fresh name): every saved format, the manifest, resume, `load_best`, the
journal's roll-forward, and errors for schemes TensorFlow cannot reach."""

from __future__ import annotations

import json
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_best import BestCheckpoint, BestWeightsTracker, files, load_best, manifest, savers
from tests.conftest import make_model, perturb, run_json, weights_equal

gfile = tf.io.gfile
VALUES = [3.0, 2.0, 2.5, 1.0, 4.0]  # best at epoch 3


@pytest.fixture
def ram_dir():
    directory = f"ram://keras_best_tests/{uuid.uuid4().hex}"
    yield directory
    files.remove(directory, missing_ok=True)


def _tree(directory: str) -> set[str]:
    """Every file under `directory`, relative, '/'-separated."""
    out = set()
    for root, _, names in gfile.walk(directory):
        rel = root[len(directory):].strip("/")
        out |= {f"{rel}/{n}" if rel else n for n in names}
    return out


def _train(model, filepath, **options):
    tracker = BestWeightsTracker(model, filepath, monitor="val_loss", verbose=0, **options)
    for epoch, value in enumerate(VALUES):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": value})
    tracker.finish()
    return tracker


def _model_at(epoch: int) -> keras.Model:
    model = make_model()
    perturb(model, epoch)
    return model


FORMATS = [
    ("best.weights.h5", {}, {"best.weights.h5"}),
    ("m-{epoch:02d}.keras", {"keep_top_k": 2}, {"m-02.keras", "m-04.keras"}),
    ("export", {"save_format": "savedmodel"},
     {"export/saved_model.pb", "export/fingerprint.pb", "export/variables/variables.index",
      "export/variables/variables.data-00000-of-00001", f"export/{savers.EXPORT_WEIGHTS_NAME}"}),
]


@pytest.mark.parametrize("name,options,saved", FORMATS, ids=["weights", "keras", "savedmodel"])
def test_every_format_on_ram(ram_dir, name, options, saved):
    model = make_model()
    tracker = _train(model, f"{ram_dir}/{name}", save_last=True,
                     optimizer=keras.optimizers.Adam(), **options)

    # Exactly the kept files, the manifest and the training state: no temp
    # names, no completion markers, no local leftovers.
    assert _tree(ram_dir) == saved | {manifest.MANIFEST_NAME, manifest.HISTORY_NAME, "keras_best_last.h5"}
    data = run_json(ram_dir)
    assert data["best"]["epoch"] == 3 and data["best"]["value"] == 1.0
    assert "pending" not in data
    best = _model_at(3)

    # load_best, and the stock loader of each format, straight from ram://.
    restored = make_model(seed=7)
    record = load_best(restored, ram_dir)
    assert (record.epoch, record.value) == (3, 1.0)
    assert record.path == tracker.best_path
    assert weights_equal(restored, best)
    fmt = savers.resolve_format(name, options.get("save_format"))
    if fmt == "weights":
        stock = make_model(seed=7)
        stock.load_weights(record.path)
        assert weights_equal(stock, best)
    elif fmt == "keras":
        assert weights_equal(keras.models.load_model(record.path), best)
    else:
        x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
        loaded = tf.saved_model.load(record.path)
        served = loaded.serve(x)
        np.testing.assert_allclose(served.numpy(), best(x).numpy(), rtol=1e-6)


@pytest.mark.parametrize("name,options,saved", FORMATS, ids=["weights", "keras", "savedmodel"])
def test_resume_on_ram(ram_dir, name, options, saved):
    model = make_model()
    _train(model, f"{ram_dir}/{name}", save_last=True, optimizer=keras.optimizers.Adam(), **options)

    resumed = make_model(seed=9)
    tracker = BestWeightsTracker(resumed, f"{ram_dir}/{name}", monitor="val_loss", resume=True,
                                 optimizer=keras.optimizers.Adam(), restore_best_weights=True,
                                 verbose=0, **options)
    assert tracker.initial_epoch == len(VALUES)
    assert (tracker.best, tracker.best_epoch) == (1.0, 3)
    assert weights_equal(resumed, _model_at(len(VALUES) - 1))  # the last state
    perturb(resumed, 99)
    decision = tracker.update(len(VALUES), {"val_loss": 0.5})
    tracker.finish()
    assert decision.improved and decision.saved_path.startswith(ram_dir + "/")
    assert load_best(make_model(seed=7), ram_dir).epoch == len(VALUES)
    assert not any(files.is_tmp_name(n.split("/")[0]) for n in _tree(ram_dir))


def test_export_at_finish_on_ram(ram_dir):
    model = make_model()
    _train(model, f"{ram_dir}/best", save_format="savedmodel", export_at_finish=True)
    tree = _tree(ram_dir)
    assert {"best.weights.h5", "best/saved_model.pb", manifest.MANIFEST_NAME} <= tree
    assert not any(files.COMPLETE_MARKER in n or files.is_tmp_name(n.split("/")[0]) for n in tree)
    x = np.ones((1, 4), "float32")
    loaded = tf.saved_model.load(f"{ram_dir}/best")
    served = loaded.serve(x)
    np.testing.assert_allclose(served.numpy(), _model_at(3)(x).numpy(), rtol=1e-6)
    assert weights_equal(model, _model_at(len(VALUES) - 1))  # export left the model as it was


def test_fit_callback_on_ram(ram_dir, data):
    x, y = data
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    callback = BestCheckpoint(f"{ram_dir}/best.weights.h5", monitor="loss", save_best_only=True)
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
    losses = history.history["loss"]
    record = load_best(make_model(seed=3), ram_dir)
    assert record.value == pytest.approx(min(losses)) and record.epoch == int(np.argmin(losses))


def test_roll_forward_on_ram(ram_dir):
    """A crash after the journal was written: the next tracker finishes the
    renames and deletes, and removes stray temp files."""
    model = make_model()
    _train(model, f"{ram_dir}/best.weights.h5")
    newer = _model_at(50)
    tmp = files.tmp_path("best.weights.h5")
    stray = files.tmp_path("other.weights.h5")
    newer.save_weights(f"{ram_dir}/{tmp}")
    newer.save_weights(f"{ram_dir}/{stray}")
    data = run_json(ram_dir)
    data["best"] = data["kept"][0] = {**data["best"], "epoch": 50, "value": 0.1}
    data["pending"] = {"renames": [[tmp, "best.weights.h5"]], "deletes": []}
    del data["history"]
    files.write_bytes_atomic(manifest.manifest_path(ram_dir), json.dumps(data).encode())

    # Readers see the new content while the journal is pending...
    assert load_best(make_model(seed=7), ram_dir).path == f"{ram_dir}/{tmp}"
    # ...and a new tracker rolls it forward.
    BestWeightsTracker(make_model(), f"{ram_dir}/best.weights.h5", monitor="val_loss", resume=True,
                       verbose=0).finish()
    assert _tree(ram_dir) == {"best.weights.h5", manifest.MANIFEST_NAME, manifest.HISTORY_NAME}
    assert "pending" not in run_json(ram_dir)
    restored = make_model(seed=7)
    assert load_best(restored, ram_dir).epoch == 50 and weights_equal(restored, newer)


def _write_dir(directory: str, content: dict[str, bytes]) -> None:
    for rel, data in content.items():
        gfile.makedirs(f"{directory}/{rel}".rsplit("/", 1)[0])
        with gfile.GFile(f"{directory}/{rel}", "wb") as f:
            f.write(data)


def _read_dir(directory: str) -> dict[str, bytes]:
    return {rel: gfile.GFile(f"{directory}/{rel}", "rb").read() for rel in _tree(directory)}


NEW = {"saved_model.pb": b"new", "variables/v.index": b"new-index", files.COMPLETE_MARKER: b"1"}


def test_remote_directory_replace_is_a_copy(ram_dir):
    """gfile.rename drops a ram:// directory's content; replace copies it."""
    _write_dir(f"{ram_dir}/src", NEW)
    _write_dir(f"{ram_dir}/dst", {"saved_model.pb": b"old", "stale.txt": b"old"})
    files.replace(f"{ram_dir}/src", f"{ram_dir}/dst")
    assert _read_dir(f"{ram_dir}/dst") == {"saved_model.pb": b"new", "variables/v.index": b"new-index"}
    assert not gfile.exists(f"{ram_dir}/src")


def test_remote_directory_replace_after_a_crash_while_copying(ram_dir):
    """The source still has its marker: copy again, over the partial copy."""
    _write_dir(f"{ram_dir}/src", NEW)
    _write_dir(f"{ram_dir}/dst", {"saved_model.pb": b"new"})  # half copied
    files.replace(f"{ram_dir}/src", f"{ram_dir}/dst")
    assert _read_dir(f"{ram_dir}/dst") == {"saved_model.pb": b"new", "variables/v.index": b"new-index"}


def test_remote_directory_replace_after_a_crash_while_removing(ram_dir):
    """The marker is gone: the copy was complete, only the source is removed."""
    _write_dir(f"{ram_dir}/src", {"variables/v.index": b"new-index"})  # marker removed
    _write_dir(f"{ram_dir}/dst", {"saved_model.pb": b"new", "variables/v.index": b"new-index"})
    files.replace(f"{ram_dir}/src", f"{ram_dir}/dst")
    assert _read_dir(f"{ram_dir}/dst") == {"saved_model.pb": b"new", "variables/v.index": b"new-index"}
    assert not gfile.exists(f"{ram_dir}/src")


def test_manifest_is_json_on_ram(ram_dir):
    _train(make_model(), f"{ram_dir}/best.weights.h5")
    data = run_json(ram_dir)
    assert data["format"] == "keras_best" and data["best"]["path"] == "best.weights.h5"
    assert [h["epoch"] for h in data["history"]] == list(range(len(VALUES)))


def test_load_best_on_an_empty_remote_directory(ram_dir):
    gfile.makedirs(ram_dir)
    with pytest.raises(FileNotFoundError, match="keras_best.json not found"):
        load_best(make_model(), ram_dir)


def test_unknown_scheme_says_how_to_fix(model):
    with pytest.raises(ValueError, match=r"no file system for 'nosuchfs://' paths.*tensorflow-io"):
        BestWeightsTracker(model, "nosuchfs://bucket/run/best.weights.h5")
    with pytest.raises(ValueError, match=r"no file system for 'nosuchfs://'.*Received: nosuchfs://bucket/run"):
        load_best(model, "nosuchfs://bucket/run")


def test_names_that_share_a_prefix_on_ram(ram_dir):
    """On ram://, exists/listdir/rmtree of `export-1` also match `export-10`:
    removing or replacing one must leave the other whole."""
    ten = {"saved_model.pb": b"ten", "variables/v.index": b"ten-index"}

    def read(directory, names):  # not _read_dir: listing export-1 shows export-10's "0"
        return {n: gfile.GFile(f"{ram_dir}/{directory}/{n}", "rb").read() for n in names}

    _write_dir(f"{ram_dir}/export-10", ten)
    _write_dir(f"{ram_dir}/export-1", {"saved_model.pb": b"one", "stale.txt": b"one"})
    _write_dir(f"{ram_dir}/src", NEW)
    files.replace(f"{ram_dir}/src", f"{ram_dir}/export-1")
    assert read("export-1", ["saved_model.pb", "variables/v.index"]) == {
        "saved_model.pb": b"new", "variables/v.index": b"new-index"}
    assert not gfile.exists(f"{ram_dir}/export-1/stale.txt")
    assert read("export-10", ten) == ten
    files.remove(f"{ram_dir}/export-1")
    assert not gfile.exists(f"{ram_dir}/export-1/saved_model.pb")
    assert read("export-10", ten) == ten
    files.remove(f"{ram_dir}/export-1", missing_ok=True)  # only a prefix of export-10 now
    assert _read_dir(f"{ram_dir}/export-10") == ten
    assert sorted(gfile.listdir(ram_dir)) == ["export-10"]


def test_remote_errors_are_python_errors(ram_dir):
    gfile.makedirs(ram_dir)
    with pytest.raises(FileNotFoundError, match=r"ram://.*/nope\.json"):
        files.read_bytes(f"{ram_dir}/nope.json")
    with pytest.raises(FileNotFoundError, match=r"ram://.*/nope\.h5"):
        files.replace(f"{ram_dir}/nope.h5", f"{ram_dir}/other.h5")
