"""The decision engine: is this value better, and should training stop?

Plain Python: no TensorFlow, no I/O. Unit-testable in microseconds.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from keras_best.core import objective as _objective  # objective imports us: use it at call time

if TYPE_CHECKING:
    from keras_best.core.objective import Score

MODES = ("min", "max", "auto")

_MIN_HINTS = ("loss", "error", "mse", "mae", "mape", "msle", "hinge", "crossentropy", "perplexity")
_MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "fbeta", "iou", "r2", "top_k", "psnr", "ssim")


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
        value: the monitored value read this epoch (may be NaN).
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


def infer_mode(monitor: str, direction: str | None = None) -> str:
    """Return "min" or "max" for `monitor`, or raise `ValueError`.

    `direction` is a Keras metric object's own hint ("up"/"down") when known.

    >>> infer_mode("val_loss"), infer_mode("val_accuracy")
    ('min', 'max')
    """
    if direction == "up":
        return "max"
    if direction == "down":
        return "min"
    name = monitor.lower()
    if any(h in name for h in _MIN_HINTS):
        return "min"
    if any(h in name for h in _MAX_HINTS):
        return "max"
    raise ValueError(
        f"Cannot infer whether `{monitor}` should be minimised or maximised. "
        f'Pass `mode="min"` or `mode="max"`. Received: monitor={monitor!r}, mode="auto"'
    )


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f'`mode` must be one of "min", "max" or "auto". Received: mode={mode!r}'
        )
    return mode


class Monitor:
    """Decides whether a monitored value improved and whether to stop early.

    Args:
        mode: "min" or "max" (resolve "auto" with `infer_mode` first), or a
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

    Example:
    >>> m = Monitor("min", patience=2)
    >>> [m.step(e, v).improved for e, v in enumerate([3.0, 2.0, 2.5])]
    [True, True, False]
    >>> m.step(3, 2.2).should_stop
    True
    """

    def __init__(
        self,
        mode: str | Sequence[str],
        *,
        min_delta: float = 0.0,
        baseline: float | None = None,
        patience: int | None = None,
        start_from_epoch: int = 0,
        stop_on_non_finite: bool = False,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
    ) -> None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
        if not modes or any(m not in ("min", "max") for m in modes):
            raise ValueError(f'Monitor needs mode "min" or "max". Received: mode={mode!r}')
        if not _is_number(min_delta) or min_delta < 0 or not math.isfinite(min_delta):
            raise ValueError(
                f"`min_delta` must be a finite number >= 0. Received: min_delta={min_delta!r}"
            )
        if baseline is not None and (not _is_number(baseline) or math.isnan(baseline)):
            raise ValueError(f"`baseline` must be a number or None. Received: baseline={baseline!r}")
        if patience is not None and (not isinstance(patience, int) or patience < 0):
            raise ValueError(
                f"`patience` must be an int >= 0 or None. Received: patience={patience!r}"
            )
        if not isinstance(start_from_epoch, int) or start_from_epoch < 0:
            raise ValueError(
                "`start_from_epoch` must be an int >= 0. "
                f"Received: start_from_epoch={start_from_epoch!r}"
            )
        for name, value in (("stopping_threshold", stopping_threshold), ("divergence_threshold", divergence_threshold)):
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                raise ValueError(f"`{name}` must be a finite number or None. Received: {name}={value!r}")
        if stopping_threshold is not None and divergence_threshold is not None and not (
            _signed(stopping_threshold, modes[0]) < _signed(divergence_threshold, modes[0])
        ):
            raise ValueError(
                f"`stopping_threshold` must be a better value than `divergence_threshold` for mode="
                f"{modes[0]!r} ({'lower' if modes[0] == 'min' else 'higher'}), or no epoch could train "
                f"on. Received: stopping_threshold={stopping_threshold!r}, "
                f"divergence_threshold={divergence_threshold!r}"
            )
        self.stopping_threshold = None if stopping_threshold is None else float(stopping_threshold)
        self.divergence_threshold = None if divergence_threshold is None else float(divergence_threshold)
        self.mode = modes[0]
        self.modes = modes
        self.min_delta = float(min_delta)
        self.baseline = None if baseline is None else float(baseline)
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.stop_on_non_finite = stop_on_non_finite
        self.best_epoch: int | None = None
        self.wait = 0
        self._best: Score | None = None
        # Patience compares with the best since `start_from_epoch` only, as
        # keras.callbacks.EarlyStopping does (warm-up epochs are ignored).
        self._patience_best: Score | None = None
        self._baseline = None if self.baseline is None else _objective.Score(self.baseline)

    @property
    def best(self) -> float | None:
        """The best primary value (`None` until one is eligible and beats `baseline`)."""
        return None if self._best is None else self._best.primary

    @property
    def best_score(self) -> Score | None:
        return self._best

    @property
    def patience_best(self) -> float | None:
        return None if self._patience_best is None else self._patience_best.primary

    def is_improvement(self, value: float | Score) -> bool:
        """Pure check: would `value` beat the current best (or baseline)?"""
        return self._beats(_score(value), self._best if self._best is not None else self._baseline)

    def clears_baseline(self, value: float | Score) -> bool:
        """Would `value` beat `baseline` as an improvement must (with `min_delta`)?
        True without a baseline, for an eligible value."""
        return self._beats(_score(value), self._baseline)

    def _beats(self, score: Score, reference: Score | None) -> bool:
        return _objective.beats(score, reference, self.modes, self.min_delta)

    def step(self, epoch: int, value: float | Score) -> Decision:
        """Record `value` (a number, or a `Score` with tie-breaks) for `epoch`."""
        score = _score(value)
        improved = self.is_improvement(score)
        if improved:
            self._best, self.best_epoch = score, epoch
        patience_exhausted = False
        if epoch >= self.start_from_epoch:
            # keras.callbacks.EarlyStopping's rule: the counter restarts on a
            # value that beats the best since `start_from_epoch` and the
            # baseline; a value that beats only the former never stops.
            self.wait += 1
            if self._beats(score, self._patience_best):
                self._patience_best = score
                if self._beats(score, self._baseline):
                    self.wait = 0
            else:
                patience_exhausted = self.patience is not None and self.wait >= self.patience
        reason = StopReason.NONE
        signed = _signed(score.primary, self.mode)
        if self.stop_on_non_finite and not math.isfinite(score.primary):
            reason = StopReason.NON_FINITE_METRIC
        elif self.stopping_threshold is not None and score.eligible and (
            signed <= _signed(self.stopping_threshold, self.mode)
        ):
            reason = StopReason.STOPPING_THRESHOLD
        elif self.divergence_threshold is not None and (
            math.isnan(signed) or signed > _signed(self.divergence_threshold, self.mode)
        ):
            reason = StopReason.DIVERGENCE_THRESHOLD
        elif patience_exhausted:
            reason = StopReason.PATIENCE_EXHAUSTED
        return Decision(
            epoch=epoch,
            value=score.primary,
            improved=improved,
            best=self.best,
            best_epoch=self.best_epoch,
            should_stop=reason is not StopReason.NONE,
            stop_reason=reason,
            wait=self.wait,
            ties=score.ties,
            feasible=score.feasible,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "patience_best": self.patience_best,
            "best_ties": [] if self._best is None else list(self._best.ties),
            "patience_ties": [] if self._patience_best is None else list(self._patience_best.ties),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("best", "best_epoch", "wait"):
            if key not in state:
                raise ValueError(f"Required state attribute {key!r} is absent from {dict(state)!r}")
        # Only eligible scores are ever stored, so they are feasible.
        self._best = _stored_score(state["best"], state.get("best_ties"))
        self.best_epoch = state["best_epoch"]
        self.wait = int(state["wait"])
        # Absent in manifests written before it existed: then it was `best`.
        if "patience_best" in state:
            self._patience_best = _stored_score(state["patience_best"], state.get("patience_ties"))
        else:
            self._patience_best = self._best


def _score(value: float | Score) -> Score:
    return value if isinstance(value, _objective.Score) else _objective.Score(float(value))


def _stored_score(primary: Any, ties: Any) -> Score | None:
    if primary is None:
        return None
    # NaN tie-breaks are written as "nan" in the manifest: float() reads both.
    return _objective.Score(float(primary), tuple(float(t) for t in ties or ()))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _signed(value: float, mode: str) -> float:
    """`value` as a quantity to minimise."""
    return value if mode == "min" else -value
