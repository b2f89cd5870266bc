"""`average_best`: the uniform average of a run's k best kept files ("checkpoint soup").

Averaging the weights of a few good checkpoints of one run often generalizes
better than any one of them (Izmailov et al. 2018, "Averaging Weights Leads to
Wider Optima"; Wortsman et al. 2022, "Model soups"). `average_best` reads the
kept files one at a time, best first, into `model` and adds each float
variable of `model.weights` to a float64 accumulator: host memory is one
accumulator (float64, twice the size of float32 weights) and, in the greedy
variant, one file's weights beside it. Non-float variables (integer counters,
seed states) are the best file's. The optimizer's variables are left as they
were. BatchNormalization's moving statistics are recomputed over `data` when
it is given (`recompute_statistics`), else averaged like the weights, with a
warning saying so.

```python
record = average_best(model, "runs/exp1", k=3)
print(record.epochs, record.paths)
```
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Callable

import numpy as np

from keras_best.core.formats import SAVEDMODEL
from keras_best.core.objective import check_mode, infer_mode
from keras_best.engines import engine_for
from keras_best.frontends.loading import BestRecord, check_architecture, current_file, rank_kept
from keras_best.keras_adapter.host import host_copy
from keras_best.keras_adapter.tracked import all_layers
from keras_best.storage import files, manifest

AVERAGED_NOTE = ("the BatchNormalization moving statistics were averaged like the weights, not recomputed: "
                 "pass data= (a few training batches) to recompute them for the averaged weights")


@dataclasses.dataclass(frozen=True)
class AverageRecord:
    """What `average_best` put into the model.

    Attributes:
        members: the kept files averaged (`BestRecord`s), best first.
        candidates: the kept files considered (the k best), best first; with
            `evaluate=`, those not in `members` did not improve the score.
        scores: with `evaluate=`, the score of each candidate's trial soup (the
            members before it plus itself), one per candidate; else empty.
        score: with `evaluate=`, the score of the model returned; else `None`.
        statistics: "recomputed" (over `data`), "averaged" (no `data`), or
            "none" (the model has no BatchNormalization layer).
        notes: what the caller should know (also warned): k larger than the
            kept files, statistics averaged rather than recomputed.
    """

    members: tuple[BestRecord, ...]
    candidates: tuple[BestRecord, ...]
    scores: tuple[float, ...] = ()
    score: float | None = None
    statistics: str = "none"
    notes: tuple[str, ...] = ()

    @property
    def epochs(self) -> list[int]:
        """The 0-based epochs averaged, best first."""
        return [m.epoch for m in self.members]

    @property
    def paths(self) -> list[str]:
        """The files averaged, best first."""
        return [m.path for m in self.members]


def average_best(
    model: Any, run_dir: str | os.PathLike, k: int = 3, *, data: Any = None,
    evaluate: Callable[[Any], float] | None = None, mode: str | None = None,
    by: Any = None, by_mode: Any = None, batch_size: int = 32,
) -> AverageRecord:
    """Put the uniform average of the run's `k` best kept files into `model`.

    The files are ranked as `load_best` ranks them: by the run's monitor, or
    with `by=` (and `by_mode=`) by another recorded metric (see `rank_kept`).
    When `k` is larger than the number of kept files, all of them are averaged
    and a warning says so (keep more with `keep_top_k=`).

    Args:
        model: a built Keras model of the run's architecture.
        run_dir: the run directory (holding `keras_best.json`); `.weights.h5`,
            sharded `.weights.json` and `.keras` runs (not SavedModel exports).
        k: how many of the best kept files to average (or, with `evaluate`,
            to consider).
        data: training batches to recompute BatchNormalization's moving
            statistics for the averaged weights: an array, or a dict or list
            of arrays (the model's inputs; cut into batches of `batch_size`),
            a tuple `(x, y[, sample_weight])` of those, or an iterable of
            batches (a `tf.data.Dataset`, a generator; a tuple batch's first
            element is the input). Each BatchNormalization layer's statistic
            becomes the mean over the batches of its batch statistics (forward
            passes with `training=True`; nothing else changes). Without
            `data`, the statistics are averaged, with a warning.
        evaluate: a function `model -> score` (e.g. accuracy on held-out
            data). With it, the soup is greedy: candidates join in rank order
            only if the score of the soup with them improves on the best so far.
        mode: "min" or "max" for `evaluate`'s score; inferred from the
            function's name ("val_accuracy" -> "max", "loss" -> "min") when
            left out or "auto".
        by, by_mode: rank the kept files by another metric (see `rank_kept`).
        batch_size: the batch size used to cut array `data`.

    Returns:
        An `AverageRecord` (which files and epochs were averaged, the score).
    """
    directory = files.fspath(run_dir)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int >= 1 (how many of the best kept files to average). "
                         f"Received: k={k!r}")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"`evaluate` must be a function model -> score. Received: evaluate={evaluate!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")
    direction = None if evaluate is None else _evaluate_mode(evaluate, mode)
    record = manifest.read(directory)
    if record.save_format == SAVEDMODEL:
        raise ValueError(
            f"The run in {directory!r} keeps SavedModel exports, which average_best does not average. Keep "
            '.weights.h5 or .keras files (BestCheckpoint(..., save_format="weights"), keep_top_k=3) '
            "to average them."
        )
    ranked = _ranked(directory, record, by, by_mode)
    notes = []
    if k > len(ranked):
        plural = "s" if len(ranked) != 1 else ""
        notes.append(f"k={k} but the run in {directory!r} keeps {len(ranked)} file{plural}: "
                     "all of them are averaged (keep more with keep_top_k=)")
    candidates = tuple(ranked[:k])
    check_architecture(model, record, directory)
    norms = [layer for layer in all_layers(model) if _is_batch_norm(layer)]
    statistics = "none" if not norms else ("recomputed" if data is not None else "averaged")
    if statistics == "averaged":
        notes.append(AVERAGED_NOTE)
    for note in notes:
        warnings.warn(f"average_best: {note}.", stacklevel=2)
    soup = _Soup(model, directory, engine_for(record.save_format), norms, data if norms else None, batch_size)
    if evaluate is None:
        for i, member in enumerate(candidates):
            soup.load(member, first=i == 0)
            soup.add(soup.read())
        soup.put()
        return AverageRecord(candidates, candidates, statistics=statistics, notes=tuple(notes))
    return _greedy(soup, candidates, evaluate, direction, statistics, tuple(notes))


def _greedy(soup: _Soup, candidates: tuple[BestRecord, ...], evaluate: Callable[[Any], float],
            direction: str, statistics: str, notes: tuple[str, ...]) -> AverageRecord:
    """Wortsman et al.'s greedy soup, in rank order: a candidate joins when the
    soup with it scores better than the best score so far."""
    members: list[BestRecord] = []
    scores: list[float] = []
    best: float | None = None
    kept_statistics: list[np.ndarray] = []
    for i, candidate in enumerate(candidates):
        soup.load(candidate, first=i == 0)
        weights = soup.read()  # one file's weights, beside the accumulator
        soup.put(extra=weights)
        score = float(evaluate(soup.model))
        scores.append(score)
        if best is None or _improves(score, best, direction):
            soup.add(weights)
            members.append(candidate)
            best, kept_statistics = score, soup.statistics()
    soup.put(recomputed=kept_statistics)  # the members' average, as it was evaluated
    return AverageRecord(tuple(members), candidates, tuple(scores), best, statistics, notes)


class _Soup:
    """The accumulator: the float variables of `model.weights` summed in
    float64 over the files added, and the best file's non-float variables."""

    def __init__(self, model: Any, directory: str, engine: Any, norms: list[Any], data: Any,
                 batch_size: int) -> None:
        import keras

        self.model, self.directory, self.engine, self.norms = model, directory, engine, norms
        self.data, self.batch_size = data, batch_size
        self.averaged = [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]
        self.fixed = [v for v in model.variables if not keras.backend.is_float_dtype(v.dtype)]
        self.sums = [np.zeros(tuple(v.shape), np.float64) for v in self.averaged]
        self.dtypes: list[Any] = []
        self.best_fixed: list[np.ndarray] = []
        self.count = 0

    def load(self, member: BestRecord, first: bool) -> None:
        """Read the kept file of `member` into the model (not its optimizer)."""
        hint = " Run average_best again once the run has finished writing, or restore the file from a copy."
        where = current_file(self.directory, member.path)
        files.load_weights(self.model, self.engine.weights_file(where), hint, model_only=True)
        if first:
            self.best_fixed = [_host(v) for v in self.fixed]

    def read(self) -> list[np.ndarray]:
        values = [_host(v) for v in self.averaged]
        self.dtypes = [a.dtype for a in values]
        return values

    def add(self, values: list[np.ndarray]) -> None:
        for total, value in zip(self.sums, values):
            total += value  # float64 += any float: no temp copy of the sum
        self.count += 1

    def put(self, extra: list[np.ndarray] | None = None, recomputed: list[np.ndarray] | None = None) -> None:
        """Assign the average (of the files added, and `extra` when given) and
        the best's non-float variables; then recompute the statistics over
        `data`, or put back `recomputed` (the ones computed for these weights)."""
        n = self.count + (extra is not None)
        for i, (v, total, dtype) in enumerate(zip(self.averaged, self.sums, self.dtypes)):
            v.assign(((total if extra is None else total + extra[i]) / n).astype(dtype))
        if recomputed:
            for v, value in zip(_statistic_variables(self.norms), recomputed):
                v.assign(value)
        elif self.data is not None:
            recompute_statistics(self.model, self.data, self.norms, self.batch_size)
        for v, value in zip(self.fixed, self.best_fixed):
            v.assign(value)

    def statistics(self) -> list[np.ndarray]:
        return [_host(v) for v in _statistic_variables(self.norms)] if self.data is not None else []


def recompute_statistics(model: Any, data: Any, norms: list[Any], batch_size: int = 32) -> int:
    """Set each BatchNormalization layer's moving mean and variance in `norms`
    to the mean over `data`'s batches of its batch statistics, by forward
    passes with `training=True` (its momentum set to (n-1)/n at the n-th
    batch: a cumulative average). Every other variable is put back as it was;
    returns the number of batches."""
    stats = {id(v) for v in _statistic_variables(norms)}
    others = [v for v in model.variables if id(v) not in stats]
    saved = [_host(v) for v in others]
    momenta = [layer.momentum for layer in norms]
    n = 0
    try:
        for x in _batches(data, batch_size):
            n += 1
            for layer in norms:
                layer.momentum = (n - 1) / n
            model(x, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
        for v, value in zip(others, saved):
            v.assign(value)
    if n == 0:
        raise ValueError("`data` gave no batch: pass training inputs to recompute the "
                         "BatchNormalization statistics.")
    return n


def _batches(data: Any, batch_size: int) -> Any:
    """The model inputs of each batch of `data` (see `average_best`)."""
    import keras

    if isinstance(data, tuple) and 1 <= len(data) <= 3:
        data = data[0]  # (x, y[, sample_weight])
    if hasattr(data, "shape") or isinstance(data, (dict, list)):
        arrays = keras.tree.flatten(data)
        count = len(arrays[0]) if arrays else 0
        for start in range(0, count, batch_size):
            yield keras.tree.map_structure(lambda a, s=start: a[s:s + batch_size], data)
        return
    for batch in data:
        yield batch[0] if isinstance(batch, tuple) and 1 <= len(batch) <= 3 else batch


def _ranked(directory: str, record: manifest.RunRecord, by: Any, by_mode: Any) -> list[BestRecord]:
    if by is not None:
        return rank_kept(directory, by, by_mode)
    best, kept = record.best, list(record.kept)
    if not kept:
        raise FileNotFoundError(
            f"The run in {directory!r} ({manifest.MANIFEST_NAME}) keeps no saved file yet, "
            "so there is nothing to average."
        )
    order = ([best] if best is not None else []) + [r for r in kept if r is not best]
    monitor = record.monitor if isinstance(record.monitor, str) else ", ".join(map(str, record.monitor or []))
    return [BestRecord.of(r, record, directory, monitor) for r in order]


def _evaluate_mode(evaluate: Callable[[Any], float], mode: str | None) -> str:
    if mode is not None and check_mode(mode) != "auto":
        return mode
    name = getattr(evaluate, "__name__", type(evaluate).__name__)
    try:
        return infer_mode(name)
    except ValueError:
        raise ValueError(
            f'Cannot infer whether evaluate={name!r} should be minimised or maximised. Pass `mode="min"` or '
            f'`mode="max"` (the direction of its score). Received: mode={mode!r}'
        ) from None


def _improves(score: float, best: float, direction: str) -> bool:
    if math.isnan(score):
        return False
    if math.isnan(best):
        return True
    return score < best if direction == "min" else score > best


def _is_batch_norm(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def _statistic_variables(norms: list[Any]) -> list[Any]:
    return [v for layer in norms for v in (layer.moving_mean, layer.moving_variance)]


def _host(v: Any) -> np.ndarray:
    return np.array(host_copy(v), copy=True)  # our own: a variable's `numpy()` may share its memory


__all__ = ["AverageRecord", "average_best", "recompute_statistics"]
