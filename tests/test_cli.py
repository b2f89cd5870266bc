"""The `keras-best` command: demo, inspect, plot, and its errors.

Runs are made by real trackers on tiny real models; the command reads them
back from disk. Errors must be one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import keras
import pytest

from keras_best import BestWeightsTracker, average_best, load_best
from keras_best.cli.commands import main
from keras_best.cli.summary import summarize
from keras_best.cli.tables import format_size
from tests.conftest import BACKEND, make_model, perturb

# val_loss per epoch: best at epoch index 3, then 3 epochs without improvement.
VALUES = [1.0, 0.8, 0.9, 0.7, 0.75, 0.72, 0.71, 0.69]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics(v):
    return {"val_loss": v, "val_acc": 1 - v / 2, "loss": v * 0.9}


def make_run(directory, values=VALUES, patience=3, keep_top_k=3, save_last=True, metrics=_metrics, **options):
    """A real run: a tiny model whose weights change each epoch, scripted val_loss
    (`metrics(v)` gives each epoch's metrics)."""
    model = make_model()
    options.setdefault("verbose", 0)
    if save_last or options.get("resume"):
        options.setdefault("optimizer", keras.optimizers.Adam())
    tracker = BestWeightsTracker(
        model, os.path.join(directory, "{epoch:03d}-{val_loss:.4f}.weights.h5"),
        keep_top_k=keep_top_k, patience=patience, save_last=save_last, **options)
    for epoch, v in enumerate(values):
        perturb(model, epoch)
        decision = tracker.update(epoch, metrics(v))
        if decision.should_stop:
            break
    tracker.finish()
    return str(directory)


def keras_best_process(*argv, command=(sys.executable, "-m", "keras_best"), **options):
    """The command line in a fresh process (`python -m keras_best ...`), importing this checkout."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*command, *map(str, argv)], capture_output=True, text=True, env=env, timeout=300,
                          **options)


def fields_of(text):
    """The `Name  value` lines at the top of `inspect`'s text, as a dict."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.split("\n\n")[0].splitlines())


def section(text, title):
    """The table rows (split on 2+ spaces) under the line starting with `title`, header left out."""
    lines = text.split("\n" + title)[1].split("\n\n")[0].splitlines()[2:]
    return [re.split(r"\s{2,}", line.strip()) for line in lines]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ inspect
def test_inspect_table_shows_the_run(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    code, out, err = run_cli(capsys, "inspect", run)
    assert code == 0 and err == ""
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.split("\n\n")[0].splitlines())
    assert fields["Monitor"] == "val_loss"
    assert fields["Mode"] == "min (lower is better)"
    # 1-based epochs, as Keras prints them and as {epoch} names the files.
    assert fields["Best"] == "0.7000 at epoch 4  (004-0.7000.weights.h5)"
    assert fields["Epochs run"] == "7 (epochs 1-7)"
    assert fields["Early stopped"] == "yes, at epoch 7: patience of 3 epochs exhausted"
    assert fields["Resumable"].startswith("yes: state of epoch 7 in keras_best_last.h5; the run stopped early")
    assert fields["Keep top k"] == "3"
    table = out.split("Kept files (best first, 3):\n")[1].splitlines()
    assert table[0].split() == ["rank", "epoch", "val_loss", "loss", "val_acc", "size", "file", "kept", "by"]
    rows = [line.split() for line in table[1:]]
    assert [r[1] for r in rows] == ["4", "7", "6"]
    assert [r[-3] for r in rows] == ["004-0.7000.weights.h5", "007-0.7100.weights.h5", "006-0.7200.weights.h5"]
    assert all(r[-2:] == ["best", "3"] for r in rows)  # the rule that keeps each file
    for r, line in zip(rows, table[1:]):
        size = os.path.getsize(os.path.join(run, r[-3]))
        assert " ".join(r[-5:-3]) == format_size(size)
        assert line.index(r[-3]) == table[0].index("file")  # aligned columns


def test_inspect_ranked_by_another_metric(tmp_path, capsys):
    run = make_run(tmp_path / "run", values=[1.0, 0.8, 0.9, 0.7], patience=None)
    # Re-rank by metrics the tracker recorded: the same order as
    # load_best(by=...) picks, shown instead of the monitor's order.
    code, out, err = run_cli(capsys, "inspect", run, "--by", "val_acc")
    assert code == 0 and err == ""
    table = out.split("Kept files (best first by val_acc, not by the monitor; 3):\n")[1].splitlines()
    assert table[0].split()[:3] == ["rank", "epoch", "val_acc"]
    assert [line.split()[1] for line in table[1:]] == ["4", "2", "3"]  # val_acc = 1 - val_loss / 2
    assert [line.split()[2] for line in table[1:]] == ["0.6500", "0.6000", "0.5500"]
    data = json.loads(run_cli(capsys, "inspect", run, "--json", "--by", "loss", "--by-mode", "max")[1])
    assert data["ranked_by"] == "loss"
    assert [(k["epoch"], k["rank"]) for k in data["kept"]] == [(2, 1), (1, 2), (3, 3)]
    assert data["kept"][0]["by_value"] == pytest.approx(0.81)
    assert load_best(make_model(), run, by="loss", by_mode="max").epoch == 2
    assert data["best"]["epoch"] == 3  # the run's own best is unchanged
    # A list breaks ties in order; unknown metrics and a lone --by-mode fail in one line.
    data = json.loads(run_cli(capsys, "inspect", run, "--json", "--by", "val_acc,loss", "--by-mode", "max,min")[1])
    assert data["ranked_by"] == ["val_acc", "loss"] and data["kept"][0]["epoch"] == 3
    code, _, err = run_cli(capsys, "inspect", run, "--by", "val_auc")
    assert code == 1 and "val_auc" in err and "Recorded metrics" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(capsys, "inspect", run, "--by-mode", "max")
    assert code == 1 and "--by-mode needs --by" in err
    data = json.loads(run_cli(capsys, "inspect", run, "--json", "--by", "loss")[1])  # "loss": min
    assert [k["epoch"] for k in data["kept"]] == [3, 1, 2]


def test_inspect_json_matches_load_best_and_disk(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    code, out, _ = run_cli(capsys, "inspect", run, "--json")
    assert code == 0
    data = json.loads(out)
    rec = load_best(make_model(), run)
    assert (data["best"]["epoch"], data["best"]["value"]) == (rec.epoch, rec.value) == (3, 0.7)
    assert data["monitor"] == "val_loss" and data["mode"] == "min"
    assert data["epochs_run"] == 7 and data["last_epoch"] == 6
    assert data["stopped"] == {"epoch": 6, "step": None, "reason": "patience_exhausted"}
    assert data["resumable"]["resumable"] is True and data["resumable"]["next_epoch"] is None
    on_disk = sorted(n for n in os.listdir(run) if n.endswith(".weights.h5"))
    assert sorted(k["path"] for k in data["kept"]) == on_disk
    for k in data["kept"]:
        assert k["size_bytes"] == os.path.getsize(os.path.join(run, k["path"]))
    assert [k["metrics"]["val_acc"] for k in data["kept"]] == [0.65, 0.645, 0.64]
    assert "history" not in data


def test_inspect_running_run_is_resumable_at_the_next_epoch(tmp_path, capsys):
    run = make_run(tmp_path / "run", values=[1.0, 0.9, 0.95], patience=None)
    data = json.loads(run_cli(capsys, "inspect", run, "--json")[1])
    assert data["stopped"] is None
    assert data["resumable"]["next_epoch"] == 3
    out = run_cli(capsys, "inspect", run)[1]
    assert "Early stopped  no (early stopping off: patience=None)" in out
    assert "resume=True continues at epoch 4" in out
    # ... and a resumed tracker does continue there.
    tracker = BestWeightsTracker(make_model(), os.path.join(run, "{epoch:03d}-{val_loss:.4f}.weights.h5"),
                                 keep_top_k=3, resume=True, optimizer=keras.optimizers.Adam(), verbose=0)
    assert tracker.initial_epoch == data["resumable"]["next_epoch"]
    tracker.finish()


def test_inspect_without_training_state_is_not_resumable(tmp_path, capsys):
    run = make_run(tmp_path / "run", values=[1.0, 0.9], patience=4, save_last=False)
    out = run_cli(capsys, "inspect", run)[1]
    assert "Resumable      no: no training state saved" in out
    assert "Early stopped  no (waited 0 of patience=4)" in out


def test_inspect_json_history_keeps_non_finite_values_strict(tmp_path, capsys):
    run = make_run(tmp_path / "run", values=[1.0, math.nan, 0.5], patience=None)
    code, out, _ = run_cli(capsys, "inspect", run, "--json", "--history")
    assert code == 0
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert [h["value"] for h in data["history"]] == [1.0, "nan", 0.5]
    assert [h["improved"] for h in data["history"]] == [True, False, True]


def test_inspect_accepts_the_manifest_path(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    code, out, _ = run_cli(capsys, "inspect", os.path.join(run, "keras_best.json"))
    assert code == 0 and f"Run directory  {run}" in out


# --------------------------------------------------------------------- plot
def test_plot_writes_a_labelled_png(tmp_path, capsys):
    from keras_best.cli.plot import plot_run

    run = make_run(tmp_path / "run")
    out_png = tmp_path / "figs" / "curve.png"
    code, out, err = run_cli(capsys, "plot", run, "-o", str(out_png))
    assert code == 0 and err == "" and out.strip() == f"wrote {out_png}"
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(str(out_png)).shape[:2]
    assert (width, height) == (1080, 840)

    fig = plot_run(run)
    top, bottom = fig.axes[:2]
    assert top.get_ylabel() == "val_loss (lower is better)"
    assert bottom.get_xlabel() == "epoch"
    assert bottom.get_ylabel() == "loss" and fig.axes[2].get_ylabel() == "val_acc"
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert "kept on disk (3 files, keep_top_k=3)" in labels
    assert "best: 0.7000 at epoch 4" in labels
    assert "early stop at epoch 7 (patience of 3 epochs exhausted)" in labels
    # The monitored curve is the recorded val_loss, one point per epoch.
    xs, ys = top.get_lines()[0].get_data()
    assert list(xs) == [1, 2, 3, 4, 5, 6, 7] and list(ys) == VALUES[:7]
    # The kept rings sit on the kept epochs.
    rings = [c for c in top.collections if c.get_label().startswith("kept on disk")][0]
    assert sorted(x for x, _ in rings.get_offsets()) == [4, 6, 7]


def test_plot_default_output_name(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "myrun", values=[1.0, 0.5])
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "plot", run)
    assert code == 0 and out.strip() == "wrote myrun-curve.png"
    assert (tmp_path / "myrun-curve.png").stat().st_size > 10_000


def test_plot_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "run", values=[1.0])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    code, out, err = run_cli(capsys, "plot", run, "-o", str(tmp_path / "c.png"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("keras-best plot: error: Plotting needs matplotlib")
    # keras-best is not on a package index: the hint names matplotlib, and the checkout form.
    assert 'python -m pip install matplotlib (or, in a keras-best checkout: python -m pip install -e ".[plot]")' in err
    assert "keras-best[" not in err
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------- errors
def _corrupt(directory, text):
    os.makedirs(directory)
    with open(os.path.join(directory, "keras_best.json"), "w") as f:
        f.write(text)
    return str(directory)


@pytest.mark.parametrize("command", ["inspect", "plot"])
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: str(p / "missing"), r"Run directory '.*missing' does not exist\."),
        (lambda p: _corrupt(p / "bad", "{oops"), r"keras_best\.json is not valid JSON"),
        (lambda p: _corrupt(p / "bad", '{"format": "keras_best", "version": 1, "kept": "x"}'),
         r"keras_best\.json: field 'kept' must be a list, not str\. Was it edited by hand"),
        (lambda p: _corrupt(p / "bad", '{"format": "keras_best", "version": 99}'),
         r"schema version 99; this keras-best reads 1 to 3\. Upgrade keras-best\."),
        (lambda p: _corrupt(p / "bad", '{"best": null}'), r"is not a keras-best manifest"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"),
         r"No keras-best run in '.*empty': keras_best\.json not found\. Pass the folder"),
    ],
    ids=["missing-dir", "not-json", "wrong-fields", "newer-schema", "not-ours", "no-manifest"],
)
def test_errors_are_one_line_and_exit_1(tmp_path, capsys, command, make, message):
    path = make(tmp_path)
    code, out, err = run_cli(capsys, command, path, *(["-o", str(tmp_path / "c.png")] if command == "plot" else []))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"keras-best {command}: error: ")
    assert re.search(message, err), err


def test_error_names_the_runs_inside_a_parent_directory(tmp_path, capsys):
    make_run(tmp_path / "study" / "trial-00001", values=[1.0])
    make_run(tmp_path / "study" / "trial-00002", values=[1.0])
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "study"))
    assert code == 1
    assert "It holds runs in: trial-00001, trial-00002; pass one of them" in err


def test_error_for_a_file_instead_of_a_directory(tmp_path, capsys):
    run = make_run(tmp_path / "run", values=[1.0])
    code, _, err = run_cli(capsys, "inspect", os.path.join(run, "001-1.0000.weights.h5"))
    assert code == 1 and "is a file; pass the run directory" in err


def test_bad_arguments_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["inspect"])
    assert "the following arguments are required: RUN_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["nonsense"])
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("demo", "inspect", "plot"))


# --------------------------------------------------------------------- demo
@pytest.mark.slow
def test_demo_short_run_keeps_three_and_reloads_the_best(tmp_path, capsys):
    from keras_best.cli import demo

    out_dir = tmp_path / "demo"
    code, out, err = run_cli(capsys, "demo", "--output", str(out_dir), "--epochs", "4")
    assert code == 0, err
    how = {"tensorflow": "tf.GradientTape", "jax": "jax.value_and_grad", "torch": "torch backward()"}
    assert f"[1/2 custom {how[BACKEND]} loop + BestWeightsTracker]" in out  # the backend's own way
    assert f"a 2-layer MLP, {BACKEND} backend." in out
    assert "[2/2 model.fit() + BestCheckpoint (drop-in for ModelCheckpoint)]" in out
    assert out.count("epoch 4/4 [####################]") == 2
    for name in ("custom_loop", "fit"):
        run = out_dir / name
        s = summarize(run)
        assert s["epochs_run"] == 4 and len(s["kept"]) == 3
        assert sorted(k["path"] for k in s["kept"]) == sorted(
            n for n in os.listdir(run) if n.endswith(".weights.h5"))
        assert f"Best: val_loss {s['best']['value']:.4f} at epoch {s['best']['epoch'] + 1}." in out
        assert (out_dir / f"{name}.png").stat().st_size > 10_000
    # The accuracy it prints is the reloaded best model's, on the test split.
    data = demo.load_data()
    model = demo.build_model(seed=1)
    load_best(model, out_dir / "fit")
    acc = demo.test_accuracy(model, data)
    assert f"test accuracy {acc:.4f} (360 unseen digits)" in out
    assert acc > 0.8
    # ...and the one after it, the average of the 3 kept files'.
    soup = demo.build_model(seed=1)
    averaged = average_best(soup, out_dir / "fit", k=3)
    assert len(averaged.epochs) == 3
    assert (f"k=3) -> epochs {', '.join(str(e + 1) for e in averaged.epochs)} averaged; "
            f"test accuracy {demo.test_accuracy(soup, data):.4f}") in out

    # Running it again into the same directory starts afresh (it made that directory).
    code, out, err = run_cli(capsys, "demo", "--output", str(out_dir), "--epochs", "2")
    assert code == 0, err
    assert summarize(out_dir / "fit")["epochs_run"] == 2


def test_demo_refuses_a_directory_it_did_not_make(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    code, out, err = run_cli(capsys, "demo", "--output", str(tmp_path), "--epochs", "1")
    assert code == 1 and out == ""
    assert "is not empty and was not made by keras-best demo" in err
    assert os.listdir(tmp_path) == ["precious.txt"]


def test_demo_without_scikit_learn_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code, out, err = run_cli(capsys, "demo", "--output", str(tmp_path / "d"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "keras-best demo needs scikit-learn" in err
    assert 'python -m pip install "keras-best[demo]"' in err
    assert not (tmp_path / "d").exists()  # nothing written before the check


def test_demo_without_matplotlib_still_trains_and_says_how_to_get_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    code, out, err = run_cli(capsys, "demo", "--output", str(tmp_path / "d"), "--epochs", "1")
    assert code == 0, err
    assert 'No learning-curve plots: Plotting needs matplotlib' in out
    assert 'python -m pip install -e ".[plot]"' in out
    assert summarize(tmp_path / "d" / "fit")["epochs_run"] == 1
    assert not list((tmp_path / "d").glob("*.png"))


def test_demo_rejects_bad_epochs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "demo", "--output", str(tmp_path / "d"), "--epochs", "0")
    assert code == 1 and "--epochs must be an int >= 1. Received: 0" in err


@pytest.mark.slow
@pytest.mark.once  # on every backend: test_demo_short_run_keeps_three_and_reloads_the_best
def test_full_demo_as_python_m_keras_best(tmp_path):
    """The README's demo, end to end in a fresh process: early stops, plots, under 2 minutes."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the demo quiets TF itself
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "keras_best", "demo", "--output", str(tmp_path / "d")],
                          capture_output=True, text=True, env=env, timeout=300)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # No TensorFlow C++ warnings or errors (W0000/E0000 lines, e.g. "failed call to cuInit").
    assert not re.findall(r"^[WEF]\d{4} .*", proc.stderr, re.M) and "cpu_feature_guard" not in proc.stderr
    print(f"full demo ({BACKEND}): {seconds:.1f} s")
    assert proc.stdout.count("-> early stop") == 2
    assert proc.stdout.count("Kept the 3 best files") == 2
    for name in ("custom_loop", "fit"):
        s = summarize(tmp_path / "d" / name)
        assert s["stopped"]["reason"] == "patience_exhausted"
        assert s["epochs_run"] == s["best"]["epoch"] + 1 + 5  # patience=5
    accuracies = [float(line.split("test accuracy ")[1].split()[0])
                  for line in proc.stdout.splitlines() if "test accuracy" in line]
    assert len(accuracies) == 4 and min(accuracies) > 0.93  # each run's best file, then its average of 3
    assert (tmp_path / "d" / "custom_loop.png").exists() and (tmp_path / "d" / "fit.png").exists()


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["keras-best"] == "keras_best.cli:main"
    assert {"scikit-learn>=1.3", "matplotlib>=3.7"} <= set(project["optional-dependencies"]["demo"])


# ------------------------------------------------------------------- README
def test_readme_commands_and_cited_tests_exist():
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    venv = "python3 -m venv .venv && . .venv/bin/activate && "
    assert venv + 'python -m pip install -e ".[tensorflow,demo]" && keras-best demo' in readme
    assert venv + 'python -m pip install -e ".[tensorflow,test]" && python -m pytest -n 2' in readme
    # Every test the claims table names exists (a renamed test must update the README).
    table = readme.split("## What it adds to")[1].split("\n## ")[0]
    cited = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`|`(test_\w+)`", table)
    assert len(cited) >= 20
    current_file = None
    for file, name, bare in cited:
        current_file = file or current_file
        with open(os.path.join(root, "tests", current_file)) as f:
            source = f.read()
        test = name or bare
        if test:
            assert re.search(rf"^def {test}\(", source, re.M), f"README cites {current_file}::{test}, which does not exist"


def test_inspect_does_not_import_tensorflow(tmp_path):
    # The package's public names load lazily: looking at a run stays instant.
    run = make_run(tmp_path / "run")
    code = (
        "import sys, keras_best\n"
        "from keras_best.cli.commands import main\n"
        f"assert main(['inspect', {run!r}]) == 0\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'\n"
        "assert all(getattr(keras_best, n) is not None for n in keras_best.__all__)\n"
        "assert 'keras' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Kept files" in done.stdout


# ----------------------------------------- what the messages say (fresh processes)
def test_inspect_says_every_epoch_broke_the_requirement(tmp_path):
    run = make_run(tmp_path / "run", values=[1.0, 0.9], patience=None, require={"val_acc": (">=", 0.99)})
    done = keras_best_process("inspect", run)
    assert done.returncode == 0 and done.stderr == ""
    fields = fields_of(done.stdout)
    # Not "no epoch improved on the baseline": no baseline was set.
    assert fields["Best"] == "none yet (every epoch broke the requirement val_acc >= 0.99)"
    assert fields["Require"] == "val_acc >= 0.99"
    assert "baseline" not in done.stdout
    data = json.loads(keras_best_process("inspect", run, "--json").stdout)
    assert data["best"] is None and data["no_best"] == "every epoch broke the requirement val_acc >= 0.99"


def test_inspect_by_an_unknown_metric_suggests_the_recorded_one(tmp_path):
    run = make_run(tmp_path / "run", values=[1.0, 0.8], patience=None,
                   metrics=lambda v: {"val_loss": v, "val_accuracy": 1 - v / 2})
    done = keras_best_process("inspect", run, "--by", "val_acc")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"keras-best inspect: error: Cannot rank by 'val_acc': unknown metric (no kept file of the run in "
        f"{run!r} recorded it). Recorded metrics: ['val_accuracy', 'val_loss']. Did you mean 'val_accuracy'?\n")
    assert "edited by hand" not in done.stderr  # the file is fine: the argument is not


def test_inspect_history_is_a_table(tmp_path):
    run = make_run(tmp_path / "run")
    done = keras_best_process("inspect", run, "--history")
    assert done.returncode == 0 and done.stderr == ""
    # The kept files' table, then one row per update; --history is no longer ignored without --json.
    assert done.stdout.endswith("""
History (7 updates):
  epoch  val_loss    loss  val_acc  wait  saved                             note
      1    1.0000  0.9000   0.5000     0  001-1.0000.weights.h5 (not kept)  improved
      2    0.8000  0.7200   0.6000     0  002-0.8000.weights.h5 (not kept)  improved
      3    0.9000  0.8100   0.5500     1  003-0.9000.weights.h5 (not kept)
      4    0.7000  0.6300   0.6500     0  004-0.7000.weights.h5             best
      5    0.7500  0.6750   0.6250     1  005-0.7500.weights.h5 (not kept)
      6    0.7200  0.6480   0.6400     2  006-0.7200.weights.h5
      7    0.7100  0.6390   0.6450     3  007-0.7100.weights.h5             early stop
""")
    assert "History" not in keras_best_process("inspect", run).stdout


def test_inspect_history_marks_nan_unvalidated_and_infeasible_updates(tmp_path, capsys):
    rows = [(math.nan, 0.9), (0.5, 0.1), (0.4, 0.9)]
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), require={"val_recall": (">=", 0.5)},
                                 verbose=0)
    for epoch, (v, recall) in enumerate(rows):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": v, "val_recall": recall})
    tracker.update(3, {"loss": 0.3})  # no validation values this epoch
    tracker.finish()
    out = run_cli(capsys, "inspect", str(tmp_path), "--history")[1]
    assert out.endswith("""
History (4 updates):
  epoch  val_loss    loss  val_recall  wait  saved            note
      1       nan       -      0.9000     1                   not finite: not a candidate
      2    0.5000       -      0.1000     2                   breaks require
      3    0.4000       -      0.9000     0  best.weights.h5  best
      4         -  0.3000           -     0                   no validation values
""")


def test_inspect_text_and_json_agree_on_epochs(tmp_path, capsys):
    # Keras's convention: 0-based in code and JSON, 1-based for people. Every
    # epoch a person reads (the tracker's lines, inspect's text, {epoch} in the
    # file names) is the JSON's plus one, and the JSON's text names no epoch.
    run = make_run(tmp_path / "run", verbose=1)
    printed = capsys.readouterr().out
    text = keras_best_process("inspect", run, "--history").stdout
    data = json.loads(keras_best_process("inspect", run, "--json", "--history").stdout)
    fields = fields_of(text)
    best, stopped, res = data["best"], data["stopped"], data["resumable"]
    assert best["epoch"] == load_best(make_model(), run).epoch == 3
    assert fields["Best"] == f"0.7000 at epoch {best['epoch'] + 1}  ({best['path']})"
    assert best["path"].startswith(f"{best['epoch'] + 1:03d}-")  # {epoch} counts from 1, as in Keras
    assert f"Epoch {best['epoch'] + 1}: val_loss improved from 0.80000 to 0.70000" in printed
    assert fields["Early stopped"] == f"yes, at epoch {stopped['epoch'] + 1}: patience of 3 epochs exhausted"
    assert f"Epoch {stopped['epoch'] + 1}: early stopping: patience of 3 epochs exhausted" in printed
    assert fields["Epochs run"] == f"7 (epochs {data['first_epoch'] + 1}-{data['last_epoch'] + 1})"
    assert fields["Resumable"].startswith(f"yes: state of epoch {res['epoch'] + 1} in ")
    assert res["epoch"] == stopped["epoch"] == data["last_epoch"] == 6
    kept_rows = section(text, "Kept files")
    assert [int(r[1]) for r in kept_rows] == [k["epoch"] + 1 for k in data["kept"]] == [4, 7, 6]
    assert [r[-2][:3] for r in kept_rows] == [f"{k['epoch'] + 1:03d}" for k in data["kept"]]
    history_rows = section(text, "History")
    assert [int(r[0]) for r in history_rows] == [h["epoch"] + 1 for h in data["history"]] == list(range(1, 8))

    def strings(x):
        if isinstance(x, dict):
            return [s for v in x.values() for s in strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return [x] if isinstance(x, str) else []

    assert not [s for s in strings(data) if re.search(r"epoch \d", s)]  # numbers live in fields only

    # A run still going: where resume=True continues, in both, and in what the resumed tracker says.
    going = make_run(tmp_path / "going", values=[1.0, 0.9, 0.95], patience=None)
    text = keras_best_process("inspect", going).stdout
    res = json.loads(keras_best_process("inspect", going, "--json").stdout)["resumable"]
    assert fields_of(text)["Resumable"].endswith(f"resume=True continues at epoch {res['next_epoch'] + 1}")
    tracker = BestWeightsTracker(make_model(), os.path.join(going, "{epoch:03d}-{val_loss:.4f}.weights.h5"),
                                 keep_top_k=3, resume=True, optimizer=keras.optimizers.Adam())
    assert tracker.initial_epoch == res["next_epoch"] == 3
    assert capsys.readouterr().out == f"Resuming {going} at epoch 4 (initial_epoch=3; best val_loss 0.90000 at epoch 2)\n"
    tracker.finish()


@pytest.mark.parametrize("table", [False, True], ids=["json", "table"])
def test_a_closed_pipe_ends_quietly(tmp_path, table):
    # `keras-best inspect RUN | head`: the reader goes away before the output is written.
    run = make_run(tmp_path / "run", values=[1.0 + i / 1000 for i in range(400)], patience=None,
                   keep_top_k=1, save_last=False)
    argv = ["inspect", run, "--history", *([] if table else ["--json"])]
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "keras_best", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})
    if table:
        proc.stdout.close()  # long before the new interpreter has started writing
    else:
        assert proc.stdout.readline() == b"{\n"
        proc.stdout.close()  # the rest is more than a pipe holds (64 KiB): the writer is blocked
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err  # as a command killed by SIGPIPE (`yes | head`)
    assert err == ""  # no "[Errno 32] Broken pipe", no "Exception ignored"
    if not table:
        assert len(keras_best_process(*argv).stdout) > 70_000


# ------------------------------------------------------------------ compare
def test_compare_ranks_runs_best_first(tmp_path):
    a = make_run(tmp_path / "a")  # best 0.70 at epoch 4, stopped at 7
    b = make_run(tmp_path / "b", values=[0.9, 0.6, 0.65], patience=None)  # best 0.60 at epoch 2
    c = make_run(tmp_path / "c", values=[1.0], patience=None, require={"val_acc": (">=", 0.99)})  # no best
    script = os.path.join(os.path.dirname(sys.executable), "keras-best")
    command = (script,) if os.path.exists(script) else (sys.executable, "-m", "keras_best")
    done = keras_best_process("compare", a, b, c, command=command)  # the console script
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == f"""\
3 runs, best first by val_loss (lower is better):
  rank  {'run'.ljust(len(a))}    best  at epoch  epochs  early stopped
     1  {b}  0.6000         2       3  no
     2  {a}  0.7000         4       7  at epoch 7: patience of 3 epochs exhausted
     3  {c}    none         -       1  no

  {c}: no best: every epoch broke the requirement val_acc >= 0.99
"""
    data = json.loads(keras_best_process("compare", a, b, c, "--json").stdout)
    assert data["ranked_by"] == "val_loss"
    assert [(r["directory"], r["rank"]) for r in data["runs"]] == [(b, 1), (a, 2), (c, 3)]
    assert [r["best"] and r["best"]["epoch"] for r in data["runs"]] == [1, 3, None]  # 0-based in JSON
    assert data["runs"][1]["stopped"] == {"epoch": 6, "step": None, "reason": "patience_exhausted"}


def test_compare_plots_the_runs_on_one_axis(tmp_path):
    from keras_best.cli.plot import plot_compare

    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", values=[0.9, 0.6, 0.65], patience=None)
    out_png = tmp_path / "cmp.png"
    done = keras_best_process("compare", a, b, "--plot", out_png)
    assert done.returncode == 0 and done.stdout.endswith(f"\nwrote {out_png}\n")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot_compare([a, b])
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.get_lines()] == ["a: best 0.7000 at epoch 4", "b: best 0.6000 at epoch 2"]
    xs, ys = ax.get_lines()[1].get_data()
    assert list(xs) == [1, 2, 3] and list(ys) == [0.9, 0.6, 0.65]
    assert sorted(tuple(c.get_offsets()[0]) for c in ax.collections) == [(2, 0.6), (4, 0.7)]  # the stars
    assert ax.get_yscale() == "linear"


def test_compare_runs_with_other_monitors_keeps_their_order(tmp_path):
    a = make_run(tmp_path / "a", values=[0.9, 0.6], patience=None)
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "acc" / "best.weights.h5"), monitor="val_acc", verbose=0)
    tracker.update(0, {"val_acc": 0.5})
    tracker.finish()
    acc = str(tmp_path / "acc")
    out = keras_best_process("compare", acc, a).stdout
    assert out.splitlines()[:2] == [
        "2 runs, in the order given (their monitors or modes differ, so they are not ranked):",
        f"  {'run'.ljust(len(acc))}  monitor     best  at epoch  epochs  early stopped",
    ]
    assert [line.split()[:3] for line in out.splitlines()[2:]] == [
        [str(tmp_path / "acc"), "val_acc", "0.5000"], [a, "val_loss", "0.6000"]]


def test_compare_errors_are_one_line(tmp_path):
    done = keras_best_process("compare", tmp_path / "nope")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr
    assert keras_best_process("compare").returncode == 2  # at least one run


# ---------------------------------------------------------------- log scale
@pytest.mark.parametrize(
    "values, scale",
    [([10.0, 1.0, 0.5, 0.3], "log"), ([1.0, 0.5, 0.2], "linear"), ([-5.0, -0.1, -0.2], "linear")],
    ids=["spans-33x", "spans-5x", "negative"],
)
def test_plot_uses_a_log_axis_for_values_spanning_more_than_10x(tmp_path, values, scale):
    from keras_best.cli.plot import plot_compare, plot_run

    run = make_run(tmp_path / "run", values=values, patience=None, mode="min")
    assert plot_run(run).axes[0].get_yscale() == scale
    assert plot_compare([run]).axes[0].get_yscale() == scale


def test_help_gives_the_checkout_install_form():
    # keras-best is not on a package index: no "pip install keras-best[...]".
    for command in ("plot", "compare"):
        out = " ".join(keras_best_process(command, "--help").stdout.split())  # as argparse wraps it
        assert 'python -m pip install matplotlib (or, in a keras-best checkout: python -m pip install -e' in out
        assert "keras-best[" not in out
