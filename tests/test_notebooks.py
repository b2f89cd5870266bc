"""The example notebooks: stored without outputs, and each runs from top to bottom.

Each notebook checks its own results with `assert` cells (the best reloaded
is the one recorded, the resumed run continued at the right epoch, ...), so
executing it is a test. Kernels run this interpreter, in a temp directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 240


def test_there_are_at_least_three_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert len(names) >= 3, names
    for topic in ("custom_loop", "fit_callback", "optuna"):
        assert any(topic in n for n in names), (topic, names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs; clear them before committing"


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch):
    """A `python3` kernel spec that runs this interpreter (not some other Jupyter on the machine)."""
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (keras-best tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel imports keras_best from this checkout even when it is not installed.
    root = str(Path(__file__).parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, kernel_of_this_python):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if "optuna" in path.name:
        pytest.importorskip("optuna")
    if "keras_tuner" in path.name:
        pytest.importorskip("keras_tuner", reason="needs keras-tuner (the keras-tuner extra)")
    nb = nbformat.read(path, as_version=4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=kernel_of_this_python,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) when a cell fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # Every notebook ends by showing a run on disk, written where the notebook ran.
    assert any(workdir.joinpath("runs").iterdir())
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Kept files (best first" in text
