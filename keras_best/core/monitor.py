"""The decision engine: is this value better, and should training stop?

`Monitor` holds the rules (validated once, at construction); `MonitorState`
is what a run has seen so far (a frozen value carried in
`keras_best.core.policy.RunState`). `Monitor.step` is a pure function:
`(state, epoch, value) -> (Decision, new state)`. Plain Python: no TensorFlow,
no I/O. Unit-testable in microseconds.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Iterator, Mapping

from keras_best.core.objective import Score, beats
from keras_best.core.smoothing import Smoothing, Window, check_window, parse


class StopReason(str, enum.Enum):
    """Why `Decision.should_stop` is true (empty string when it is not)."""

    NONE = ""
    PATIENCE_EXHAUSTED = "patience_exhausted"
    NON_FINITE_METRIC = "non_finite_metric"
    STOPPING_THRESHOLD = "stopping_threshold"
    DIVERGENCE_THRESHOLD = "divergence_threshold"

    def __str__(self) -> str:
        return self.value


def describe_stop(reason: Any, options: Mapping[str, Any], monitor: str = "the monitored value") -> str:
    """Why a run stopped early, in words (the `StopReason` value is for programs).

    `options` are the run's recorded options (keras_best.json's "options");
    `reason` may come from disk, so an unknown one is shown as it is.

    >>> describe_stop("patience_exhausted", {"patience": 5})
    'patience of 5 epochs exhausted'
    """
    if reason == StopReason.PATIENCE_EXHAUSTED:
        patience = options.get("patience")
        if patience is None:
            return "patience exhausted"
        return f"patience of {patience} epoch{'' if patience == 1 else 's'} exhausted"
    if reason == StopReason.NON_FINITE_METRIC:
        return f"{monitor} was NaN or infinite (stop_on_non_finite=True)"
    if reason == StopReason.STOPPING_THRESHOLD:
        return f"{monitor} reached stopping_threshold={options.get('stopping_threshold')}"
    if reason == StopReason.DIVERGENCE_THRESHOLD:
        return f"{monitor} was worse than divergence_threshold={options.get('divergence_threshold')} (or NaN)"
    return str(reason)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What one `update()` decided. Frozen: a record, not a handle.

    Attributes:
        epoch: the epoch given to `update()`.
        value: the monitored value this epoch (may be NaN): with `smooth`,
            the smoothed value, the one every rule decides on.
        improved: whether `value` beat the best so far.
        best: the best value after this update (`None` until one is finite
            and beats `baseline`).
        best_epoch: the epoch of `best`.
        saved_path: the file written for this epoch, or `None`.
        evicted: files deleted because they fell out of the top k.
        should_stop: early stopping says stop.
        stop_reason: a `StopReason` (empty when `should_stop` is false).
        wait: epochs since the last improvement.
        ties: the tie-break values read this epoch (list `monitor`).
        feasible: whether this epoch met the `require` constraints.
        raw: the monitored value as read, before smoothing (`value` without `smooth`).
    """

    epoch: int
    value: float
    improved: bool
    best: float | None
    best_epoch: int | None
    saved_path: str | None = None
    evicted: tuple[str, ...] = ()
    should_stop: bool = False
    stop_reason: StopReason = StopReason.NONE
    wait: int = 0
    ties: tuple[float, ...] = ()
    feasible: bool = True
    raw: float = math.nan


@dataclasses.dataclass(frozen=True)
class MonitorState(Mapping[str, Any]):
    """What the engine has seen so far. Frozen: `Monitor.step` returns the next one.

    It reads as its JSON form (the "engine" of keras_best.json), a read-only
    mapping: `state["best"]` is the best primary value, `dict(state)` what is
    written. `MonitorState.from_json` reads it back.

    Attributes:
        best: the best `Score` (`None` until one is eligible and beats `baseline`).
        best_epoch: the epoch of `best`.
        wait: epochs since the last improvement that counts for patience.
        patience_best: the best `Score` since `start_from_epoch` (what
            patience compares with, as `keras.callbacks.EarlyStopping`).
        smooth: the `smooth=` windows (`keras_best.core.smoothing`), one per
            compared value; written as "smooth" once there is one.

    >>> state = MonitorState(Score(0.5), 1, 0, Score(0.5))
    >>> state["best"], MonitorState.from_json(dict(state)) == state
    (0.5, True)
    """

    best: Score | None = None
    best_epoch: int | None = None
    wait: int = 0
    patience_best: Score | None = None
    smooth: Window = ()

    @property
    def best_value(self) -> float | None:
        """The best primary value (`None` until there is a best)."""
        return None if self.best is None else self.best.primary

    def to_json(self) -> dict[str, Any]:
        return {
            "best": self.best_value,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "patience_best": None if self.patience_best is None else self.patience_best.primary,
            "best_ties": [] if self.best is None else list(self.best.ties),
            "patience_ties": [] if self.patience_best is None else list(self.patience_best.ties),
        } | ({"smooth": [list(w) for w in self.smooth]} if self.smooth else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MonitorState:
        """Read `to_json()`'s form back; raise `ValueError` for a missing required key."""
        for key in ("best", "best_epoch", "wait"):
            if key not in data:
                raise ValueError(f"Required state attribute {key!r} is absent from {dict(data)!r}")
        # Only eligible scores are ever stored, so they are feasible.
        best = _stored_score(data["best"], data.get("best_ties"))
        # Absent in manifests written before it existed: then it was `best`.
        patience_best = _stored_score(data["patience_best"], data.get("patience_ties")) if (
            "patience_best" in data) else best
        smooth = check_window(data["smooth"]) if data.get("smooth") else ()
        return cls(best, data["best_epoch"], int(data["wait"]), patience_best, smooth)

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(_STATE_KEYS + (("smooth",) if self.smooth else ()))

    def __len__(self) -> int:
        return len(_STATE_KEYS) + bool(self.smooth)


_STATE_KEYS = ("best", "best_epoch", "wait", "patience_best", "best_ties", "patience_ties")


@dataclasses.dataclass(frozen=True)
class Monitor:
    """Decides whether a monitored value improved and whether to stop early.

    The rules only: what a run has seen is a `MonitorState`, given to and
    returned by `step`. Every argument is checked here, once.

    Args:
        modes: "min" or "max" (resolve "auto" with `infer_mode` first), or a
            sequence of those: the primary direction, then one per tie-break
            value of the `Score`s given to `step` (see `keras_best.core.objective`).
        min_delta: an improvement must beat the best by more than this
            (primary value only; an exactly equal primary is a tie).
        baseline: initial best; nothing counts as improvement until beaten.
        patience: stop after this many epochs in a row without improvement,
            as `keras.callbacks.EarlyStopping` does (`None`: never stop).
        start_from_epoch: epochs before this are ignored by early stopping
            (as in `keras.callbacks.EarlyStopping`): they neither count
            towards patience nor set the value patience must beat. They
            still count for `best` (what gets saved).
        stop_on_non_finite: stop at once when the value is NaN or infinite.
        stopping_threshold: stop as soon as an eligible value reaches this
            (`<=` in "min" mode, `>=` in "max" mode): good enough, as
            Lightning's `EarlyStopping(stopping_threshold=...)`. The epoch
            that reaches it is still saved when it is the best.
        divergence_threshold: stop as soon as a value is worse than this
            (`>` in "min" mode, `<` in "max" mode) or NaN: training diverged.
        smooth: `("mean", n)` or `("ema", alpha)` (`keras_best.core.smoothing`):
            every rule above decides on the smoothed value (each compared
            value of a `Score` averaged on its own; feasibility is the
            epoch's own), except `stop_on_non_finite`, which reads the raw one.

    Example:
    >>> m, state = Monitor("min", patience=2), MonitorState()
    >>> for epoch, value in enumerate([3.0, 2.0, 2.5, 2.2]):
    ...     decision, state = m.step(state, epoch, value)
    ...     print(decision.improved, decision.should_stop)
    True False
    True False
    False False
    False True
    """

    modes: tuple[str, ...]
    min_delta: float = 0.0
    baseline: float | None = None
    patience: int | None = None
    start_from_epoch: int = 0
    stop_on_non_finite: bool = False
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None
    smooth: Smoothing | None = None

    def __post_init__(self) -> None:
        mode, set_ = self.modes, lambda name, value: object.__setattr__(self, name, value)
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
        if not modes or any(m not in ("min", "max") for m in modes):
            raise ValueError(f'Monitor needs mode "min" or "max". Received: mode={mode!r}')
        min_delta, baseline = self.min_delta, self.baseline
        if not _is_number(min_delta) or min_delta < 0 or not math.isfinite(min_delta):
            raise ValueError(
                f"`min_delta` must be a finite number >= 0. Received: min_delta={min_delta!r}"
            )
        if baseline is not None and (not _is_number(baseline) or math.isnan(baseline)):
            raise ValueError(f"`baseline` must be a number or None. Received: baseline={baseline!r}")
        patience, start = self.patience, self.start_from_epoch
        if patience is not None and (not isinstance(patience, int) or patience < 0):
            raise ValueError(
                f"`patience` must be an int >= 0 or None. Received: patience={patience!r}"
            )
        if not isinstance(start, int) or start < 0:
            raise ValueError(
                f"`start_from_epoch` must be an int >= 0. Received: start_from_epoch={start!r}"
            )
        stop, diverge = self.stopping_threshold, self.divergence_threshold
        for name, value in (("stopping_threshold", stop), ("divergence_threshold", diverge)):
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                raise ValueError(f"`{name}` must be a finite number or None. Received: {name}={value!r}")
        if stop is not None and diverge is not None and not _signed(stop, modes[0]) < _signed(diverge, modes[0]):
            raise ValueError(
                f"`stopping_threshold` must be a better value than `divergence_threshold` for mode="
                f"{modes[0]!r} ({'lower' if modes[0] == 'min' else 'higher'}), or no epoch could train "
                f"on. Received: stopping_threshold={stop!r}, divergence_threshold={diverge!r}"
            )
        set_("modes", modes)
        set_("smooth", parse(self.smooth))
        set_("min_delta", float(min_delta))
        for name in ("baseline", "stopping_threshold", "divergence_threshold"):
            value = getattr(self, name)
            set_(name, None if value is None else float(value))

    @property
    def mode(self) -> str:
        """The primary direction, "min" or "max"."""
        return self.modes[0]

    def is_improvement(self, state: MonitorState, value: float | Score) -> bool:
        """Would `value` beat `state`'s best (or the baseline, before a best)?"""
        return self._beats(_score(value), state.best if state.best is not None else self._baseline)

    def clears_baseline(self, value: float | Score) -> bool:
        """Would `value` beat `baseline` as an improvement must (with `min_delta`)?
        True without a baseline, for an eligible value."""
        return self._beats(_score(value), self._baseline)

    def step(self, state: MonitorState, epoch: int, value: float | Score) -> tuple[Decision, MonitorState]:
        """Decide `value` (a number, or a `Score` with tie-breaks) for `epoch`
        after `state`; return the decision and the state after it."""
        raw = score = _score(value)
        smooth = state.smooth
        if self.smooth is not None:
            smoothed, smooth = self.smooth.smooth(smooth, (raw.primary, *raw.ties))
            score = Score(smoothed[0], smoothed[1:], raw.feasible)
        improved = self.is_improvement(state, score)
        best, best_epoch = (score, epoch) if improved else (state.best, state.best_epoch)
        wait, patience_best, exhausted = state.wait, state.patience_best, False
        if epoch >= self.start_from_epoch:
            # keras.callbacks.EarlyStopping's rule: the counter restarts on a
            # value that beats the best since `start_from_epoch` and the
            # baseline; a value that beats only the former never stops.
            wait += 1
            if self._beats(score, patience_best):
                patience_best = score
                if self._beats(score, self._baseline):
                    wait = 0
            else:
                exhausted = self.patience is not None and wait >= self.patience
        after = MonitorState(best, best_epoch, wait, patience_best, smooth)
        reason = self._stop_reason(score, raw.primary, exhausted)
        return Decision(
            epoch=epoch,
            value=score.primary,
            improved=improved,
            best=after.best_value,
            best_epoch=best_epoch,
            should_stop=reason is not StopReason.NONE,
            stop_reason=reason,
            wait=wait,
            ties=score.ties,
            feasible=score.feasible,
            raw=raw.primary,
        ), after

    def _stop_reason(self, score: Score, raw: float, patience_exhausted: bool) -> StopReason:
        signed = _signed(score.primary, self.mode)
        if self.stop_on_non_finite and not math.isfinite(raw):
            return StopReason.NON_FINITE_METRIC
        if self.stopping_threshold is not None and score.eligible and (
            signed <= _signed(self.stopping_threshold, self.mode)
        ):
            return StopReason.STOPPING_THRESHOLD
        if self.divergence_threshold is not None and (
            math.isnan(signed) or signed > _signed(self.divergence_threshold, self.mode)
        ):
            return StopReason.DIVERGENCE_THRESHOLD
        return StopReason.PATIENCE_EXHAUSTED if patience_exhausted else StopReason.NONE

    @property
    def _baseline(self) -> Score | None:
        return None if self.baseline is None else Score(self.baseline)

    def _beats(self, score: Score, reference: Score | None) -> bool:
        return beats(score, reference, self.modes, self.min_delta)


def _score(value: float | Score) -> Score:
    return value if isinstance(value, Score) else Score(float(value))


def _stored_score(primary: Any, ties: Any) -> Score | None:
    if primary is None:
        return None
    # NaN tie-breaks are written as "nan" in the manifest: float() reads both.
    return Score(float(primary), tuple(float(t) for t in ties or ()))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _signed(value: float, mode: str) -> float:
    """`value` as a quantity to minimise."""
    return value if mode == "min" else -value
