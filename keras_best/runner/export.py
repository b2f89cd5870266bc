"""`export_at_finish`: the best weights exported as a SavedModel beside the run's files, at `finish()`."""

from __future__ import annotations

import dataclasses
from typing import Any

from keras_best.engines import savedmodel
from keras_best.runner import distribute
from keras_best.storage import files
from keras_best.storage.writer import Transaction


def export_best(run: Any, model: Any) -> None:
    """Export the best of `run` (a `keras_best.runner.run.Run`) as a SavedModel, recorded as its `export`;
    `model` keeps its weights."""
    best = run.state.best_record()
    if best is None:
        return
    current = model.get_weights()
    try:
        # Other workers join the load's collective ops and export to scratch (distribute.py).
        distribute.load_weights(model, files.join(run.directory, best.path), run.chief)
        rel = best.path[: -len(".weights.h5")]
        tmp_rel = files.tmp_path(rel)
        distribute.write_durably(files.join(run.directory, tmp_rel), lambda p: savedmodel.export(model, p),
                                 run.chief)
        run.state = dataclasses.replace(run.state, export=rel)
        run.writer.submit(Transaction(record=run.record(), renames=[(tmp_rel, rel)]))
    finally:
        model.set_weights(current)

