"""`RunPath`: the run directory and file-name template of a `filepath`."""

from __future__ import annotations

import pathlib

import pytest

from keras_best.core.paths import RunPath


@pytest.mark.parametrize(
    "filepath, directory, template, shown",
    [
        ("best.weights.h5", ".", "best.weights.h5", "best.weights.h5"),  # bare, as Keras prints it
        ("./best.weights.h5", ".", "best.weights.h5", "./best.weights.h5"),
        ("runs/exp1/best.keras", "runs/exp1", "best.keras", "runs/exp1/best.keras"),
        ("runs/exp1//best.keras", "runs/exp1", "best.keras", "runs/exp1/best.keras"),
        ("/best.keras", "/", "best.keras", "/best.keras"),
        ("ram://bucket/run/best.keras", "ram://bucket/run", "best.keras", "ram://bucket/run/best.keras"),
        (pathlib.Path("runs") / "b.weights.h5", "runs", "b.weights.h5", "runs/b.weights.h5"),
    ],
)
def test_directory_and_template(filepath, directory, template, shown):
    p = RunPath(filepath)
    assert (p.directory, p.template, p.shown(p.template)) == (directory, template, shown)


def test_format_counts_epochs_and_batches_from_one():
    p = RunPath("r/{epoch:03d}-{batch}-{val_loss:.2f}.weights.h5")
    assert p.fields == ["epoch", "batch", "val_loss"] and p.metric_fields() == ["val_loss"]
    assert p.format(0, 9, {"val_loss": 0.123}) == "001-10-0.12.weights.h5"
    with pytest.raises(ValueError, match=r"Failed to format filepath .*'batch'"):
        p.format(0, None, {"val_loss": 0.1})


@pytest.mark.parametrize(
    "filepath, match",
    [
        ("", r"`filepath` must be a non-empty path"),
        (None, r"`filepath` must be a non-empty path"),
        ("r/{epoch/b.weights.h5", r"Placeholders are allowed in the file name only"),
        ("r/{}.weights.h5", r"placeholders must be metric names or `epoch`"),
        ("r/{epoch.weights.h5", r"not a valid format string"),
        ("r/{val_loss!x}.weights.h5", r"unknown conversion '!x' in \{val_loss!x\}"),
    ],
)
def test_bad_filepaths(filepath, match):
    with pytest.raises(ValueError, match=match):
        RunPath(filepath)
