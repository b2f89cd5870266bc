"""The loop idiom `for epoch in tracker.epochs(n)` (resume, early stop, reruns)
and the loop `tracker.run()` drives (one progress bar line per epoch), on any
backend: real trackers, real subprocesses, a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker, load_best
from tests.conftest import make_model, perturb, run_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# val_loss per epoch: best at epoch 1, then 3 worse ones: patience=3 stops after epoch 4.
VALUES = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6, 0.5]
PATIENCE = 3
STOP = 4

# The user's script, run again after each interruption: `python - RUN_DIR [STOP_AFTER]`.
SCRIPT = f"""
import sys
from keras_best import BestWeightsTracker, load_best
from tests.conftest import make_model, perturb

VALUES = {VALUES!r}
run_dir, stop_after = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None
model = make_model()
tracker = BestWeightsTracker(model, run_dir + "/e{{epoch:02d}}.weights.h5", patience={PATIENCE},
                             keep_top_k=2, resume=True, verbose=0)
trained = []
for epoch in tracker.epochs(len(VALUES)):
    perturb(model, epoch)  # stands in for a training epoch
    tracker.update(epoch, {{"val_loss": VALUES[epoch]}})
    trained.append(epoch)
    if epoch == stop_after:
        tracker.close()  # the process dies here
        break
else:
    tracker.finish()
print("TRAINED", trained)
"""


def _script(run_dir, *args):
    done = subprocess.run([sys.executable, "-", str(run_dir), *map(str, args)], input=SCRIPT,
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=keras.backend.backend()))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("TRAINED ")[-1])


def _scripted(tracker, model, epochs=len(VALUES)):
    trained = []
    for epoch in tracker.epochs(epochs):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": VALUES[epoch]})
        trained.append(epoch)
    return trained


# ------------------------------------------------------------ tracker.epochs
def test_epochs_ends_after_the_update_that_said_stop(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), patience=PATIENCE, verbose=0)
    assert _scripted(tracker, model) == list(range(STOP + 1))  # no `if decision.should_stop: break`
    assert tracker.stopped and tracker.history[-1]["wait"] == PATIENCE
    assert list(tracker.epochs(len(VALUES))) == []  # a stopped run has no epochs left
    tracker.finish()


def test_epochs_runs_to_the_end_without_early_stopping(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0)
    assert _scripted(tracker, model, epochs=5) == [0, 1, 2, 3, 4]
    tracker.finish()
    empty = BestWeightsTracker(make_model(), str(tmp_path / "other" / "c.weights.h5"))
    assert list(empty.epochs(0)) == []
    empty.close()


@pytest.mark.slow
def test_rerun_after_early_stop_trains_nothing_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    assert _script(run) == list(range(STOP + 1))
    before = run_json(run)
    files = sorted(os.listdir(run))
    assert before["stopped"]["epoch"] == STOP and before["history"][-1]["wait"] == PATIENCE
    # The same script again (what `keras-best inspect` promises: "trains no more epochs").
    assert _script(run) == []
    assert run_json(run) == before and sorted(os.listdir(run)) == files


@pytest.mark.slow
def test_resumed_mid_run_continues_at_the_next_epoch_and_stops_as_before(tmp_path):
    run = tmp_path / "run"
    assert _script(run, 1) == [0, 1]  # dies after epoch 2
    assert _script(run) == [2, 3, 4]  # continues at epoch 3, early stops after epoch 5
    data = run_json(run)
    assert [h["epoch"] for h in data["history"]] == list(range(STOP + 1))
    assert [h["wait"] for h in data["history"]] == [0, 0, 1, 2, 3]
    # The same decisions as an uninterrupted run in this process.
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "whole" / "e{epoch:02d}.weights.h5"), patience=PATIENCE,
                                 keep_top_k=2, verbose=0)
    _scripted(tracker, model)
    tracker.finish()
    whole = run_json(tmp_path / "whole")
    assert [(k["epoch"], k["path"]) for k in whole["kept"]] == [(k["epoch"], k["path"]) for k in data["kept"]]
    assert whole["stopped"] == data["stopped"]


def test_resumed_in_process_continues_at_initial_epoch(tmp_path):
    path = str(tmp_path / "e{epoch:02d}.weights.h5")
    model = make_model()
    first = BestWeightsTracker(model, path, patience=PATIENCE, keep_top_k=2, resume=True, verbose=0)
    for epoch in first.epochs(len(VALUES)):
        perturb(model, epoch)
        first.update(epoch, {"val_loss": VALUES[epoch]})
        if epoch == 2:
            break
    first.close()
    second = BestWeightsTracker(make_model(), path, patience=PATIENCE, keep_top_k=2, resume=True, verbose=0)
    epochs = second.epochs(len(VALUES))
    assert second.initial_epoch == 3 and next(epochs) == 3
    second.close()


@pytest.mark.parametrize("epochs", [-1, 2.0, "3", True, None])
def test_epochs_must_be_a_non_negative_int(tmp_path, epochs):
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"))
    with pytest.raises(ValueError, match=re.escape(f"`epochs` must be an int >= 0. Received: epochs={epochs!r}")):
        tracker.epochs(epochs)  # at the call, not at the first next()
    assert list(tracker.epochs(np.int64(2))) == [0, 1]
    tracker.close()


# ------------------------------------------------------- tracker.run progbar
EPOCHS = 3
RUN_SCRIPT = f"""
import sys
import keras
import numpy as np
from keras_best import BestWeightsTracker, load_best
from tests.conftest import make_model

assert sys.stdout.isatty() == (sys.argv[2] == "tty")
model = make_model()
rng = np.random.default_rng(0)
data = [(rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")) for _ in range(3)]
loss, val_loss = keras.metrics.Mean(name="loss"), keras.metrics.Mean(name="val_loss")
loss_fn = keras.losses.MeanSquaredError()


def train_step(x, y):
    bias = model.layers[0].bias
    bias.assign(keras.ops.convert_to_numpy(bias) + 0.01)  # stands in for training
    loss.update_state(loss_fn(y, model(x)))


def val_step(x, y):
    val_loss.update_state(loss_fn(y, model(x)))


tracker = BestWeightsTracker(model, sys.argv[1] + "/best.weights.h5", verbose=1)
tracker.run(train_step, val_step, data, data[:1], epochs={EPOCHS}, metrics=[loss, val_loss])
"""


def _visible_lines(raw: str) -> list[str]:
    """What a terminal shows: each line's text after its last carriage return."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", raw).replace("\b", "").replace("\r\n", "\n")
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]


def _run_in(tmp_path, tty: bool) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=keras.backend.backend())
    argv = [sys.executable, "-c", RUN_SCRIPT, str(tmp_path), "tty" if tty else "pipe"]
    if not tty:
        done = subprocess.run(argv, capture_output=True, timeout=300, cwd=ROOT, env=env)  # bytes: keep each \r
        assert done.returncode == 0, done.stderr[-3000:].decode(errors="replace")
        return done.stdout.decode()
    primary, secondary = pty.openpty()
    with subprocess.Popen(argv, stdout=secondary, stderr=subprocess.PIPE, cwd=ROOT, env=env) as proc:
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(primary)
        stderr = proc.stderr.read().decode(errors="replace")
    assert proc.returncode == 0, stderr[-3000:]
    return b"".join(chunks).decode()


@pytest.mark.slow
@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "captured"])
def test_run_shows_one_progress_bar_line_per_epoch(tmp_path, tty):
    lines = _visible_lines(_run_in(tmp_path, tty))
    bars = [line for line in lines if re.match(r"\s*\d+/\d+ ━", line)]
    assert [line for line in lines if line.startswith("Epoch ") and "/" in line.split()[1]] == [
        f"Epoch {e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    assert len(bars) == EPOCHS, "\n".join(lines)  # one line per epoch, as fit() shows it
    history = run_json(tmp_path)["history"]
    for bar, h in zip(bars, history):
        assert bar.lstrip().startswith("3/3 ")
        # The line ends with the epoch's training and validation values, as recorded.
        assert f"loss: {h['metrics']['loss']:.4f}" in bar and f"val_loss: {h['metrics']['val_loss']:.4f}" in bar


# ------------------------------------------------------------- docs pages
@pytest.mark.slow
def test_readme_custom_loop_runs_on_this_backend(tmp_path):
    with open(os.path.join(ROOT, "docs", "backends.md")) as f:
        section = f.read()
    heading = {"tensorflow": "# TensorFlow:", "jax": "# JAX:", "torch": "# PyTorch:"}[keras.backend.backend()]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if b.startswith(heading)]
    assert len(blocks) == 1, f"docs/backends.md has no custom loop starting with {heading!r}"
    code = blocks[0].replace("tracker.epochs(100)", "tracker.epochs(EPOCHS)")
    assert "tracker.epochs(EPOCHS)" in code
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=keras.backend.backend())
    for epochs in (2, 4):  # the second run resumes after epoch 2
        done = subprocess.run([sys.executable, "-c", f"EPOCHS = {epochs}\n{code}"], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    history = run_json(run)["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    losses = [h["value"] for h in history]
    assert losses[-1] < losses[0]  # it trained (the state written back, on JAX), and resumed
    model = make_model(units=16, inputs=8)
    assert load_best(model, str(run)).epoch == int(np.argmin(losses))
