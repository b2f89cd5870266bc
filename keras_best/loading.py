"""`load_best`: put a run's recorded best into a model."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from keras_best import manifest, savers


@dataclasses.dataclass(frozen=True)
class BestRecord:
    """What `load_best` loaded.

    Attributes:
        epoch: 0-based epoch of the loaded weights (as given to `update()`).
        value: the monitored value at that epoch.
        path: the file (or SavedModel directory) the weights came from.
        monitor: the monitored metric's name.
        metrics: every metric recorded for that epoch.
        step: the step given to `update()`, if any.
    """

    epoch: int
    value: float
    path: str
    monitor: str
    metrics: Mapping[str, float]
    step: int | None = None


def read_best(directory: str | os.PathLike) -> BestRecord:
    """The run's best kept record, without loading anything."""
    directory = os.fspath(directory)
    data = manifest.read(directory)
    best = data.get("best")
    if not best:
        raise FileNotFoundError(
            f"The run in {directory!r} ({manifest.MANIFEST_NAME}) has no saved best yet: "
            "no epoch has improved (or beaten the baseline) so far."
        )
    return BestRecord(
        epoch=int(best["epoch"]),
        value=float(best["value"]),
        path=manifest.effective_path(directory, data, best["path"]),
        monitor=data.get("monitor", ""),
        metrics={k: float(v) for k, v in (best.get("metrics") or {}).items()},
        step=best.get("step"),
    )


def load_best(model: Any, directory: str | os.PathLike) -> BestRecord:
    """Load the best weights recorded in `directory` into `model`.

    The weights loaded are exactly those of the epoch returned, even when the
    run crashed at any instant or is still writing.

    ```python
    rec = load_best(model, "runs/exp1")
    print(rec.epoch, rec.value, rec.path)
    ```

    Raises `FileNotFoundError` (naming `keras_best.json`) when `directory`
    holds no run, and `ValueError` when `model` has another architecture.
    """
    directory = os.fspath(directory)
    data = manifest.read(directory)
    record = read_best(directory)
    _check_architecture(model, data, directory)
    fmt = data.get("save_format", savers.WEIGHTS)
    path = record.path
    try:
        model.load_weights(savers.weights_file(path, fmt))
    except (FileNotFoundError, OSError):
        # A writer renamed the temp file into place meanwhile: read again.
        record = read_best(directory)
        path = record.path
        model.load_weights(savers.weights_file(path, fmt))
    return record


def _check_architecture(model: Any, data: Mapping[str, Any], directory: str) -> None:
    from keras_best.tracker import architecture_of

    recorded = data.get("architecture")
    if recorded and getattr(model, "built", False) and architecture_of(model) != recorded:
        raise ValueError(
            f"The model's architecture (its weight shapes) differs from the run recorded in "
            f"{directory!r}. Build the same model as in training before `load_best`."
        )


__all__ = ["BestRecord", "load_best", "read_best"]
