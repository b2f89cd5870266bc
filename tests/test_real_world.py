"""Nothing lost, nothing outside touched: re-run cells, symlinks, damaged files,
empty epochs, arguments that would fail late, hostile records (and a fuzz test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best import (
    BestCheckpoint,
    BestWeightsTracker,
    RunDirectoryLocked,
    SaveError,
    load_best,
)
from keras_best.cli.summary import format_table, summarize
from keras_best.storage import files, manifest
from keras_best.storage.files import DamagedFileError
from keras_best.storage.manifest import MANIFEST_NAME, ManifestError
from tests.conftest import make_model, perturb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------- a re-run notebook cell
def test_a_second_tracker_in_the_process_takes_over_after_the_first_ones_writes(tmp_path, monkeypatch):
    model = make_model()
    first = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2, verbose=0,
                               save_last=True)  # resumed below
    first.update(0, {"val_loss": 1.0})
    first.flush()
    gate, started = threading.Event(), threading.Event()
    real = files.write_h5

    def slow(path, fill):  # a slow disk for the first tracker's next file
        if path.endswith("e2.weights.h5"):
            started.set()
            assert gate.wait(60)
        real(path, fill)

    monkeypatch.setattr(files, "write_h5", slow)
    perturb(model, 1)
    weights = model.get_weights()
    first.update(1, {"val_loss": 0.5})  # written in the background, blocked
    assert started.wait(60)
    threading.Timer(0.5, gate.set).start()
    second = BestWeightsTracker(make_model(seed=3), str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2,
                                resume=True, verbose=0)  # the cell run again: waits for the write, then resumes
    assert (second.best, second.best_epoch) == (0.5, 1) and second.initial_epoch == 2
    fresh = make_model(seed=4)
    assert load_best(fresh, str(tmp_path)).epoch == 1 and _same(fresh.get_weights(), weights)
    with pytest.raises(RunDirectoryLocked, match="A newer keras-best tracker in this process took over"):
        first.update(2, {"val_loss": 0.1})
    second.update(2, {"val_loss": 0.4})
    second.finish()
    first.finish()  # the replaced tracker ends without writing anything
    assert manifest.read(str(tmp_path)).best.epoch == 2


def test_a_new_callback_after_an_interrupted_fit_takes_over(tmp_path, data):
    x, y = data
    model = make_model()
    model.compile("sgd", "mse")

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    path = str(tmp_path / "best.weights.h5")
    with pytest.raises(KeyboardInterrupt):  # no on_train_end: the first callback keeps its lock
        model.fit(x, y, validation_data=(x, y), epochs=5, verbose=0,
                  callbacks=[BestCheckpoint(path, save_best_only=True, resume=True), Interrupt()])
    again = BestCheckpoint(path, save_best_only=True, resume=True)
    model.fit(x, y, validation_data=(x, y), epochs=4, verbose=0, callbacks=[again])
    assert [h["epoch"] for h in again.tracker.history] == [0, 1, 2, 3]


# ----------------------------------------------------------------- symlinks
def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, model):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / ".keras_best.lock")
    with pytest.raises(OSError, match=r"\.keras_best\.lock is a symbolic link; keras-best does not follow it"):
        BestWeightsTracker(model, str(run / "b.weights.h5"), verbose=0)
    assert victim.read_text() == "precious"


def test_a_hard_linked_lock_file_is_refused(tmp_path, model):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim, run / ".keras_best.lock")
    with pytest.raises(OSError, match=r"is not a plain file of its own \(it has 2 links\)"):
        BestWeightsTracker(model, str(run / "b.weights.h5"), verbose=0)
    assert victim.read_text() == "precious"


def test_evicting_a_kept_name_that_became_a_symlink_deletes_only_the_link(tmp_path, model):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    run = tmp_path / "run"
    tracker = BestWeightsTracker(model, str(run / "e{epoch}.weights.h5"), verbose=0, async_save=False)
    tracker.update(0, {"val_loss": 1.0})
    os.remove(run / "e1.weights.h5")
    os.symlink(outside, run / "e1.weights.h5")  # swapped for a link to a directory outside
    tracker.update(1, {"val_loss": 0.5})  # evicts e1.weights.h5
    tracker.finish()
    assert not os.path.lexists(run / "e1.weights.h5") and (outside / "keep.txt").read_text() == "precious"


# ------------------------------------------------------------- empty epochs
def test_run_with_one_shot_generators_stops_with_a_clear_error(tmp_path):
    model = make_model()
    val_loss = keras.metrics.Mean(name="val_loss")
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    x = np.zeros((4, 4), "float32")

    def train_step(batch):
        pass

    def val_step(batch):
        val_loss.update_state(keras.ops.mean(model(batch)) ** 2)

    with pytest.raises(ValueError, match=r"Epoch 2 saw no training batches: `training_data` gave nothing "
                                         r"\(a generator or iterator can be read only once\)"):
        tracker.run(train_step, val_step, (b for b in [x, x]), (b for b in [x]), epochs=3, metrics=[val_loss])
    assert tracker.best_epoch == 0 and len(tracker.history) == 1


def test_a_mean_that_saw_nothing_never_becomes_the_best(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    val_loss = keras.metrics.Mean(name="val_loss")
    val_loss.update_state(0.5)
    tracker.update(0, {"val_loss": val_loss})
    val_loss.reset_state()
    with pytest.raises(ValueError, match=r"Metric 'val_loss' \(Mean\) has accumulated no values"):
        tracker.update(1, {"val_loss": val_loss})
    assert tracker.best == 0.5 and len(tracker.history) == 1


# ---------------------------------------------------------- damaged files
def _run_with_state(directory, model):
    tracker = BestWeightsTracker(model, str(directory / "e{epoch}.weights.h5"), keep_top_k=2, resume=True,
                                 restore_best_weights=True, verbose=0)
    for epoch, v in enumerate([1.0, 0.5, 0.7]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_a_truncated_best_file_names_itself_and_what_to_do(tmp_path):
    _run_with_state(tmp_path, make_model())
    _truncate(tmp_path / "e2.weights.h5")
    with pytest.raises(DamagedFileError, match=r"Cannot read .*e2\.weights\.h5: the file is damaged or "
                                               r"incomplete .*load_best\(model, directory, by=\.\.\.\)"):
        load_best(make_model(), str(tmp_path))


@pytest.mark.parametrize("damaged", ["keras_best_last.h5", "e2.weights.h5"])
def test_a_damaged_file_refuses_resume_and_leaves_the_model_untouched(tmp_path, damaged):
    _run_with_state(tmp_path, make_model())
    _truncate(tmp_path / damaged)
    model = make_model(seed=5)
    before = model.get_weights()
    with pytest.raises(DamagedFileError, match=rf"{damaged}.*damaged or incomplete"):
        BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2, resume=True,
                           restore_best_weights=True, verbose=0)
    assert _same(model.get_weights(), before)
    with pytest.warns(UserWarning, match="already holds a keras-best run"):  # resume=False starts over
        fresh = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2, verbose=0)
    fresh.update(0, {"val_loss": 2.0})
    fresh.finish()
    assert manifest.read(str(tmp_path)).best.value == 2.0


def test_an_optimizer_mismatch_on_resume_leaves_the_model_untouched(tmp_path):
    model = make_model()
    model.compile(keras.optimizers.Adam(), "mse")
    _run_with_state(tmp_path, model)
    other = make_model(seed=5)
    other.compile(keras.optimizers.SGD(momentum=0.9), "mse")  # other optimizer variables
    before = other.get_weights()
    with pytest.raises(ValueError, match=r"holds \d+ optimizer variables but the optimizer has"):
        BestWeightsTracker(other, str(tmp_path / "e{epoch}.weights.h5"), keep_top_k=2, resume=True, verbose=0)
    assert _same(other.get_weights(), before)


@pytest.mark.parametrize(
    "text",
    ['{"format": "keras_best", "version": 2, "history_bytes": 1e999}',
     '{"format": "keras_best", "version": 2, "x": ' + "1" * 5000 + "}",
     "[" * 100_000 + "]" * 100_000,
     '{"format": "keras_best", "version": 2, "pending": "abc", "history_count": 0, "history_bytes": 0}',
     '{"format": "keras_best", "version": 2, "kept": [{"epoch": "x"}], "history_count": 0, "history_bytes": 0}',
     '{"format": "keras_best", "version": 1, "history": [{}]}',
     '{"format": "keras_best", "version": 2, "best": {"epoch": 0}, "history_count": 0, "history_bytes": 0}'],
    ids=["1e999", "5000-digits", "deep", "pending-str", "epoch-str", "empty-history", "best-no-path"],
)
def test_a_corrupt_record_is_one_clear_error_everywhere(tmp_path, text):
    (tmp_path / MANIFEST_NAME).write_text(text)
    for action in (lambda: load_best(make_model(), str(tmp_path)), lambda: summarize(str(tmp_path)),
                   lambda: BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), resume=True)):
        with pytest.raises(ManifestError, match=r"keras_best\.json"):
            action()


# --------------------------------------------------- arguments that fail late
@pytest.mark.parametrize("template", ["{epoch}-{val_loss:03d}.weights.h5", "{epoch:s}.weights.h5",
                                      "{val_loss:zz}.weights.h5"])
def test_format_specs_that_cannot_format_fail_at_construction(tmp_path, model, template):
    with pytest.raises(ValueError, match=r"Failed to format filepath"):
        BestWeightsTracker(model, str(tmp_path / template), verbose=0)


def test_batch_without_step_fails_at_the_first_update_not_the_first_save(tmp_path, model):
    tracker = BestWeightsTracker(model, str(tmp_path / "b-{batch}.weights.h5"), baseline=0.1, verbose=0)
    with pytest.raises(ValueError, match=r"`filepath` uses \{batch\}, but update\(\) was called without `step=`"):
        tracker.update(0, {"val_loss": 0.5})  # would not even be saved (baseline)


def test_a_string_optimizer_is_refused_at_construction(tmp_path, model):
    with pytest.raises(TypeError, match=r"`optimizer` must be a keras.optimizers.Optimizer instance.*'adam'"):
        BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), optimizer="adam")


def test_an_optimizer_built_for_another_model_is_refused_at_construction(tmp_path, model):
    optimizer = keras.optimizers.Adam()
    optimizer.build(make_model(units=3).trainable_variables)
    with pytest.raises(ValueError, match=r"`optimizer` was built for other variables"):
        BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), optimizer=optimizer)


@pytest.mark.parametrize("step, message", [("x", r"`step` must be an int >= 0. Received: step='x'"),
                                           (-1, r"`step` must be an int >= 0")])
def test_a_bad_step_is_a_clear_error(tmp_path, model, step, message):
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    with pytest.raises(ValueError, match=message):
        tracker.update(0, {"val_loss": 0.5}, step=step)


# ----------------------------------------------------- inspect, hostile names
def test_inspect_never_walks_outside_and_escapes_control_characters(tmp_path, model):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x" * 100_000)
    run = tmp_path / "run"
    tracker = BestWeightsTracker(model, str(run / "{tag}.weights.h5"), monitor="val_loss", verbose=0,
                                 async_save=False)
    tracker.update(0, {"val_loss": 0.5, "tag": 1.0})
    tracker.finish()
    data = json.loads((run / MANIFEST_NAME).read_text())
    evil = "x\x1b[2J\x07.weights.h5"
    for entry in (data["best"], data["kept"][0]):
        entry["path"] = evil
    (run / MANIFEST_NAME).write_text(json.dumps(data))
    os.symlink(outside, run / evil)
    summary = summarize(str(run))
    assert summary["kept"][0]["size_bytes"] < 1000  # the link itself, not the tree it points to
    table = format_table(summary)
    assert "\x1b" not in table and "\x07" not in table and "x\\x1b[2J\\x07.weights.h5" in table
    cli = subprocess.run([sys.executable, "-m", "keras_best", "inspect", str(run)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert cli.returncode == 0 and "\x1b" not in cli.stdout


# ------------------------------------------------------------------ fuzz
def _valid_run(directory):
    model = make_model()
    tracker = BestWeightsTracker(model, str(directory / "e{epoch}.weights.h5"), keep_top_k=2, resume=True,
                                 verbose=0, async_save=False)
    for epoch, v in enumerate([1.0, 0.5, 0.7]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    return json.loads((directory / MANIFEST_NAME).read_text())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats(allow_nan=False)
    | st.sampled_from(["", ".", "..", "../outside.weights.h5", "/tmp/x", "e1.weights.h5", "nan", "keras_best.json",
                       ".kb-tmp-0123456789ab-e9.weights.h5", "sub/e1.weights.h5"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["epoch", "value", "path", "step", "metrics", "renames", "deletes", "best", "wait"]),
        children, max_size=4),
    max_leaves=8,
)
FIELDS = ["best", "kept", "engine", "last", "stopped", "export", "pending", "history_bytes", "history_count",
          "monitor", "mode", "save_format", "architecture", "options", "version", "format", "filepath"]
LIBRARY_ERRORS = (ManifestError, DamagedFileError, FileNotFoundError, ValueError, SaveError, TypeError)


@pytest.mark.slow
@pytest.mark.backend_neutral  # the record's checks: the same code on every backend
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_a_mutated_record_works_or_raises_a_clear_error_and_never_touches_outside(tmp_path_factory, data):
    base = tmp_path_factory.mktemp("fuzz")
    run = base / "run"
    run.mkdir()
    valid = _valid_run(run)
    victim = base / "outside.weights.h5"
    victim.write_bytes(b"precious")
    mutated = dict(valid)
    for field in data.draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        mutated[field] = data.draw(JSON)
    (run / MANIFEST_NAME).write_text(json.dumps(mutated))
    outside_before = sorted(os.listdir(base))
    actions = [
        lambda: load_best(make_model(seed=9), str(run)),
        lambda: summarize(str(run), history=True),
        lambda: BestWeightsTracker(make_model(), str(run / "e{epoch}.weights.h5"), keep_top_k=2, resume=True,
                                   verbose=0).close(),
        lambda: BestWeightsTracker(make_model(), str(run / "e{epoch}.weights.h5"), keep_top_k=2,
                                   verbose=0).close(),
    ]
    for action in actions:
        try:
            action()
        except LIBRARY_ERRORS as e:
            assert str(e) and not isinstance(e, (KeyError, AttributeError, RecursionError)), repr(e)
    cli = subprocess.run([sys.executable, "-m", "keras_best", "inspect", str(run)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert cli.returncode in (0, 1) and "Traceback" not in cli.stderr, cli.stderr[-2000:]
    assert victim.read_bytes() == b"precious" and sorted(os.listdir(base)) == outside_before
