"""`load_best`: put a run's recorded best into a model."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, Mapping

from keras_best.core import options
from keras_best.core.objective import Objective, Score, describe_require, rank_key
from keras_best.engines import engine_for
from keras_best.engines.partial import mismatch_error
from keras_best.storage import files, manifest


@dataclasses.dataclass(frozen=True)
class BestRecord:
    """What `load_best` loaded.

    Attributes:
        epoch: 0-based epoch of the loaded weights (as given to `update()`).
        value: the monitored value at that epoch (with `by=`: the value
            ranked by, i.e. that metric's or score function's value).
        path: the file (or SavedModel directory) the weights came from, by
            its recorded name (never a temp name: right after a crash in the
            middle of a rename, the weights are read from the temp file that
            holds them until the next start finishes the rename).
        monitor: the monitored metric's name (with `by=`: the ranking's name;
            for a list, its first name).
        metrics: every metric recorded for that epoch.
        step: the step given to `update()`, if any.
        raw: with `smooth=`, the monitored value as read (`value` is the
            smoothed one the best was chosen by); else `None`.
        skipped: with `skip_mismatch=True`, the objects (their paths in the
            file, e.g. `"layers/dense_1"`) that differ from the model's and
            kept their values; `()` when everything chosen was loaded.
    """

    epoch: int
    value: float
    path: str
    monitor: str
    metrics: Mapping[str, float]
    step: int | None = None
    raw: float | None = None
    skipped: tuple[str, ...] = ()

    @classmethod
    def of(cls, kept: Any, data: manifest.RunRecord, directory: str, monitor: Any,
           value: float | None = None) -> BestRecord:
        """The record of the kept file `kept` of the run `data` in `directory`
        (`value`: the value it is ranked by, when not the recorded one)."""
        return cls(epoch=kept.epoch, value=kept.value if value is None else value,
                   path=files.join(directory, kept.path), monitor=monitor, metrics=dict(kept.metrics),
                   step=kept.step, raw=kept.raw if value is None else None)


def current_file(directory: str, path: str, data: manifest.RunRecord | None = None) -> str:
    """Where the content of `path` (a `BestRecord.path` of the run in `directory`,
    as `data` records it) is right now: `path`, or its temp name while the
    transaction that renames it is pending."""
    return (data or manifest.read(directory)).effective_path(directory, files.basename(path))


def read_best(directory: str | os.PathLike) -> BestRecord:
    """The run's best kept record, without loading anything."""
    directory = files.fspath(directory)
    record = manifest.read(directory)
    best = record.best
    if best is None:
        raise FileNotFoundError(
            f"The run in {directory!r} ({manifest.MANIFEST_NAME}) has no saved best yet: "
            f"{why_no_best(record, record.history(directory))}."
        )
    return BestRecord.of(best, record, directory, record.monitor if record.monitor is not None else "")


def rank_kept(directory: str | os.PathLike, by: Any, by_mode: Any = None) -> list[BestRecord]:
    """The run's kept files ranked by another metric, best first.

    Every metric given to `update()` (or in the `fit()` logs) is recorded with
    each kept file, so a run can be re-ranked afterwards. `by` takes what
    `monitor` takes: a metric name, a list of names (later ones break exact
    ties), or a callable over the metrics dict; `by_mode` is "min"/"max" (one
    per name for a list), inferred from the names when left out. Files that
    broke the run's `require` constraints rank last; equal values go to the
    earlier epoch. Only kept files can be ranked: keep several
    (`keep_top_k=N` or `None`) to choose among them. Nothing is loaded.

    ```python
    for rec in rank_kept("runs/exp1", by="val_acc"):
        print(rec.epoch, rec.value, rec.path)
    ```
    """
    directory = files.fspath(directory)
    data = manifest.read(directory)
    kept = list(data.kept)
    if not kept:
        raise FileNotFoundError(
            f"The run in {directory!r} ({manifest.MANIFEST_NAME}) keeps no saved file yet, "
            "so there is nothing to rank."
        )
    try:
        objective = Objective(by, "auto" if by_mode is None else by_mode)
    except ValueError as e:
        raise ValueError(f"Cannot rank by={by!r}, by_mode={by_mode!r}: {e}") from e
    recorded = sorted({k for r in kept for k in r.metrics})
    absent = [n for n in objective.names if not any(n in r.metrics for r in kept)]
    if absent:
        close = difflib.get_close_matches(absent[0], recorded, n=1)
        raise ValueError(
            f"Cannot rank by {absent[0]!r}: unknown metric (no kept file of the run in {directory!r} "
            f"recorded it). Recorded metrics: {recorded}.{f' Did you mean {close[0]!r}?' if close else ''}"
        )
    if objective.unresolved:
        raise ValueError(
            f"Cannot infer whether {objective.unresolved[0]!r} should be minimised or "
            f'maximised. Pass `by_mode="min"` or `by_mode="max"`. Received: by={by!r}'
        )
    modes = objective.engine_modes
    scores = [(objective.score(r.metrics), r) for r in kept]
    scores = [(Score(s.primary, s.ties, r.feasible), r) for s, r in scores]
    scores.sort(key=lambda sr: (*rank_key(sr[0], modes), sr[1].epoch, sr[1].step or 0))
    return [BestRecord.of(r, data, directory, objective.name, value=s.primary) for s, r in scores]


def load_best(
    model: Any, directory: str | os.PathLike, *, by: Any = None, by_mode: Any = None,
    skip_mismatch: bool = False, only: Any = None, storage_options: Mapping[str, Any] | None = None,
) -> BestRecord:
    """Load the best weights recorded in `directory` into `model`.

    The weights loaded are exactly those of the epoch returned, even when the
    run crashed at any instant or is still writing.

    ```python
    rec = load_best(model, "runs/exp1")
    print(rec.epoch, rec.value, rec.path)
    rec = load_best(model, "runs/exp1", by="val_acc")  # re-rank the kept files
    ```

    With `by=` (and optionally `by_mode=`) the kept files are ranked by
    another metric, list of metrics or score function (see `rank_kept`) and
    the first is loaded.

    Partial restore, e.g. to fine-tune a new head on the best backbone:
    `only=` loads some layers only (a layer name or layer, or a list of them;
    each with the layers inside it), and `skip_mismatch=True` skips, with a
    warning naming them, the layers whose saved variables differ in shape (as
    Keras's `load_weights(..., skip_mismatch=True)`); `rec.skipped` lists them.
    Layers are matched as Keras matches them: by class and position, not by name.

    ```python
    rec = load_best(new_model, "runs/exp1", only=["backbone"])
    ```

    `storage_options=`: for a remote `directory` (`s3://`, `gs://`...), fsspec's arguments of its
    file system (endpoint, credentials: docs/remote-storage.md); a missing bucket or missing
    credentials are a `ValueError` saying what to fix.

    Raises `FileNotFoundError` (naming `keras_best.json`) when `directory`
    holds no run, and `ValueError` when `model` has another architecture (naming
    the first variables that differ and their shapes); nothing is loaded then.
    """
    if not isinstance(skip_mismatch, bool):
        raise ValueError(f"`skip_mismatch` must be True or False. Received: skip_mismatch={skip_mismatch!r}")
    directory = files.fspath(directory)
    files.prepare_directory(directory, options.storage_options(storage_options), create=False)
    data = manifest.read(directory)

    def choose() -> BestRecord:
        if by is None:
            return read_best(directory)
        best = rank_kept(directory, by, by_mode)[0]
        if not math.isfinite(best.value):
            raise ValueError(
                f"No kept file of the run in {directory!r} has a finite {best.monitor} to rank by."
            )
        return best

    engine = engine_for(data.save_format)
    whole = not skip_mismatch and only is None
    hint = (" Load another kept file with load_best(model, directory, by=...) (see "
            "`keras-best inspect`), or restore this one from a copy.")

    def load(path: str, hint: str = "") -> tuple[str, ...]:
        if whole and not _same_architecture(model, data):
            _refuse_mismatch(engine, model, path, hint)
        try:
            skipped = engine.load(model, path, hint, skip_mismatch=skip_mismatch, only=only)
        except files.DamagedFileError:
            raise
        except ValueError:
            if whole:  # stock load_weights refused: say which variables differ
                _refuse_mismatch(engine, model, path, hint)
            raise
        return tuple(dict.fromkeys(m.path for m in skipped))

    for attempt in range(_READS):
        record = choose()
        try:
            skipped = load(current_file(directory, record.path, data), hint if attempt else "")
        except (FileNotFoundError, files.DamagedFileError):
            if attempt == _READS - 1:
                raise
            continue  # a writer renamed the temp file into place meanwhile: read again
        # A commit between the two reads of the record may have renamed the files
        # of a unit (a sharded set's shards, then its index) while they were read:
        # read again, so that the weights are one save's, never a mix.
        after = manifest.read(directory)
        if _files_of(after) == _files_of(data):
            return dataclasses.replace(record, skipped=skipped)
        data = after
    raise OSError(f"The run in {directory!r} replaced its best files {_READS} times while they were read. "
                  "Call load_best again (or wait for the run to finish).")


def _files_of(data: manifest.RunRecord) -> Any:
    """What changes with the files on disk: a pending journal, and the kept saves."""
    return data.pending, [(r.path, r.epoch, r.step) for r in data.state.kept]


_READS = 5  # reads of a run directory that a writer keeps changing, before giving up


def check_architecture(model: Any, data: manifest.RunRecord, directory: str) -> None:
    """Raise a `ValueError` when `model`'s weight shapes differ from the run's recorded ones."""
    if not _same_architecture(model, data):
        raise ValueError(
            f"The model's architecture (its weight shapes) differs from the run recorded in "
            f"{directory!r}. Build the same model as in training before `load_best`."
        )


def _same_architecture(model: Any, data: manifest.RunRecord) -> bool:
    from keras_best.runner.run import architecture_of

    recorded = data.architecture
    return not (recorded and getattr(model, "built", False) and architecture_of(model) != recorded)


def _refuse_mismatch(engine: Any, model: Any, path: str, hint: str) -> None:
    """Raise the error naming the variables of `model` that differ from `path`'s, if any."""
    found = engine.mismatches(model, path, hint)
    if found:
        raise mismatch_error(found, path) from None


def why_no_best(data: manifest.RunRecord, history: list[Mapping[str, Any]]) -> str:
    """Why the run has no best yet, in words (for `inspect` and `load_best`'s error).

    `history` is the run's history with float values."""
    monitor = monitor_name(data.monitor)
    scored = [h for h in history if h.get("validated", True)]
    if not history:
        return "no epoch recorded yet"
    if not scored:
        return f"no update held {monitor} (no validation values)"
    if not any(h.get("feasible", True) for h in scored):
        return f"every epoch broke the requirement {describe_require(data.require)}"
    if not any(math.isfinite(float(h["value"])) for h in scored if h.get("feasible", True)):
        return f"{monitor} was NaN or infinite at every epoch"
    baseline = data.options.get("baseline")
    if baseline is not None:
        return f"no epoch beat the baseline {format_value(float(baseline))}"
    return "no epoch improved"


def format_value(v: float | None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4f}"
    return f"{v:.4g}"


def monitor_name(monitor: Any) -> str:
    return ", ".join(monitor) if isinstance(monitor, list) else str(monitor)


__all__ = ["BestRecord", "check_architecture", "load_best", "rank_kept", "read_best"]
