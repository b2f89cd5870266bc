"""What "best" means: turn an epoch's metrics into a comparable `Score`.

An `Objective` is built from the tracker's `monitor`, `mode` and `require`
options and is the only place that reads the monitored metrics. It turns a
metrics dict into a `Score`: the primary value, the tie-break values and
whether the epoch meets the constraints (`keras_best.core.require`). `Monitor`
(is it better? should we stop?) and `retention` (which files to keep) compare
scores with `beats` and `rank_key` below, so the custom-loop tracker and the
`fit()` callback decide the same way. A metric's direction ("min"/"max") is
decided here too: `infer_mode`, `check_mode`, and `Objective.hint`.

The order, written down:

1. An epoch that breaks a constraint (`feasible=False`) or whose primary
   value is NaN or infinite is never best and never enters the top k.
2. Otherwise the primary values decide; `min_delta` applies to them only.
3. A *tie* is an exactly equal primary value: then the tie-break metrics
   decide, one after the other, each in its own direction, with no
   `min_delta`. A NaN tie-break value never wins a tie (it ranks below every
   number, and two NaNs are equal, so the next tie-break decides).
4. Among equal scores the earlier epoch ranks first (see `retention`).

Plain Python: no TensorFlow, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

from keras_best.core import require as _require
from keras_best.core.require import OPS, describe_require

# What `monitor=` takes: a metric name, names compared in order, or a function of the metrics.
MonitorSpec = str | Sequence[str] | Callable[[Mapping[str, float]], float]

MODES = ("min", "max", "auto")

_MIN_HINTS = ("loss", "error", "mse", "mae", "mape", "msle", "hinge", "crossentropy", "perplexity")
_MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "fbeta", "iou", "r2", "top_k", "psnr", "ssim")


def infer_mode(monitor: str, direction: str | None = None) -> str:
    """Return "min" or "max" for `monitor`, or raise `ValueError`.

    `direction` is a Keras metric object's own hint ("up"/"down") when known.

    >>> infer_mode("val_loss"), infer_mode("val_accuracy"), infer_mode("val_score", "up")
    ('min', 'max', 'max')
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
    """`mode` itself when it is one of `MODES`; raise `ValueError` otherwise."""
    if mode not in MODES:
        raise ValueError(
            f'`mode` must be one of "min", "max" or "auto". Received: mode={mode!r}'
        )
    return mode


@dataclasses.dataclass(frozen=True)
class Score:
    """One epoch as the objective sees it.

    Attributes:
        primary: the primary value (`min_delta` and `baseline` apply to it).
        ties: the tie-break values, in order (may hold NaN).
        feasible: whether the epoch meets every constraint of `require`.
    """

    primary: float
    ties: tuple[float, ...] = ()
    feasible: bool = True

    @property
    def eligible(self) -> bool:
        """Can this score be best at all? (feasible, finite primary)."""
        return self.feasible and math.isfinite(self.primary)


def compare_ties(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> int:
    """+1 if tie-break values `a` beat `b`, -1 if they lose, 0 if equal.

    >>> compare_ties([0.9], [0.8], ["max"]), compare_ties([math.nan], [0.1], ["max"])
    (1, -1)
    >>> compare_ties([math.nan, 2.0], [math.nan, 1.0], ["max", "min"])
    -1
    """
    for x, y, mode in zip(a, b, modes):
        x_nan, y_nan = math.isnan(x), math.isnan(y)
        if x_nan or y_nan:
            if x_nan and y_nan:
                continue
            return -1 if x_nan else 1
        if x == y:
            continue
        return 1 if (x < y) == (mode == "min") else -1
    return 0


def beats(a: Score, b: Score | None, modes: Sequence[str], min_delta: float = 0.0) -> bool:
    """Is `a` strictly better than `b` (`None`: nothing to beat)?

    `modes[0]` is the primary direction, `modes[1:]` those of the tie-breaks.

    >>> beats(Score(0.5, (0.9,)), Score(0.5, (0.8,)), ["min", "max"])
    True
    >>> beats(Score(0.5, (0.9,)), Score(0.5, (0.8,)), ["min", "max"], min_delta=0.1)
    True
    >>> beats(Score(0.45, (0.0,)), Score(0.5, (0.8,)), ["min", "max"], min_delta=0.1)
    False
    """
    if not a.eligible:
        return False
    if b is None or not b.eligible:
        return True
    if a.primary == b.primary:
        return compare_ties(a.ties, b.ties, modes[1:]) > 0
    if modes[0] == "min":
        return a.primary < b.primary - min_delta
    return a.primary > b.primary + min_delta


def rank_key(score: Score, modes: Sequence[str]) -> tuple[Any, ...]:
    """A sort key that puts better scores first (agrees with `beats` at `min_delta=0`).

    Ineligible scores sort after eligible ones: infeasible after feasible, a
    non-finite primary after a finite one.
    """
    primary = (0, _signed(score.primary, modes[0])) if math.isfinite(score.primary) else (1, 0.0)
    ties = tuple(
        (1, 0.0) if math.isnan(t) else (0, _signed(t, m)) for t, m in zip(score.ties, modes[1:])
    )
    return (0 if score.feasible else 1, primary, *ties)


def _signed(x: float, mode: str) -> float:
    return x if mode == "min" else -x


class Objective:
    """`monitor`, `mode` and `require` of a tracker, validated, as one object.

    Args:
        monitor: a metric name; a list of names compared in order (the later
            ones break exact ties of the earlier ones); or a callable taking
            the metrics dict (names to floats) and returning a number.
        mode: "min", "max" or "auto", or a list with one per name. One string
            applies to every name of a list; "auto" infers each from its name
            (or from the Keras metric, see `hint`). A callable needs "min" or
            "max".
        require: constraints an epoch must meet to be best or kept: a dict
            `{name: (op, threshold)}` with op one of `>=`, `>`, `<=`, `<`,
            `==`, or a callable taking the metrics dict and returning a bool.

    >>> o = Objective(["val_loss", "val_acc"], require={"val_recall": (">=", 0.9)})
    >>> o.modes
    ('min', 'max')
    >>> o.score({"val_loss": 0.5, "val_acc": 0.8, "val_recall": 0.95})
    Score(primary=0.5, ties=(0.8,), feasible=True)
    """

    def __init__(self, monitor: Any, mode: Any = "auto", require: Any = None) -> None:
        self.fn: Callable[[Mapping[str, float]], Any] | None = None
        if isinstance(monitor, str) and monitor:
            self.names: tuple[str, ...] = (monitor,)
        elif isinstance(monitor, (list, tuple)) and monitor and all(
            isinstance(n, str) and n for n in monitor
        ):
            if len(set(monitor)) != len(monitor):
                raise ValueError(f"`monitor` names a metric twice. Received: monitor={list(monitor)!r}")
            self.names = tuple(monitor)
        elif callable(monitor):
            self.fn = monitor
            self.names = ()
        else:
            raise ValueError(
                "`monitor` must be a metric name, a list of metric names, or a callable "
                f"taking the metrics dict and returning a number. Received: monitor={monitor!r}"
            )
        self.is_list = isinstance(monitor, (list, tuple))
        self.name = self.names[0] if self.names else _require.callable_name(monitor)
        self._modes: list[str | None] = self._resolve_modes(mode)
        self.require = _require.parse(require)

    # ------------------------------------------------------------- modes
    def _resolve_modes(self, mode: Any) -> list[str | None]:
        count = max(1, len(self.names))
        if isinstance(mode, str):
            modes = [check_mode(mode)] * count
        elif isinstance(mode, (list, tuple)) and all(isinstance(m, str) for m in mode):
            modes = [check_mode(m) for m in mode]
            if len(modes) != count:
                what = f"monitor={list(self.names)!r}" if self.names else f"the score function `{self.name}`"
                raise ValueError(
                    f"`mode` needs one entry per monitored metric: {count} for {what}, "
                    f"but {len(modes)} were given. Received: mode={list(mode)!r}"
                )
        else:
            raise ValueError(
                '`mode` must be "min", "max", "auto", or a list of those (one per monitored '
                f"metric). Received: mode={mode!r}"
            )
        if self.fn is not None:
            if modes[0] == "auto":
                raise ValueError(
                    f"Cannot infer whether the score function `{self.name}` should be minimised "
                    f'or maximised. Pass `mode="min"` or `mode="max"`.'
                )
            return list(modes)
        out: list[str | None] = []
        for name, m in zip(self.names, modes):
            if m == "auto":
                try:
                    m = infer_mode(name)
                except ValueError:
                    m = None  # a Keras metric object may tell us later (`hint`)
            out.append(m)
        return out

    @property
    def modes(self) -> tuple[str | None, ...]:
        """One direction per compared value (`None`: not inferred yet)."""
        return tuple(self._modes)

    @property
    def engine_modes(self) -> tuple[str, ...]:
        """`modes` with unresolved ones read as "min" (until they are resolved)."""
        return tuple(m or "min" for m in self._modes)

    @property
    def unresolved(self) -> list[str]:
        """Names whose direction is not known yet."""
        return [n for n, m in zip(self.names, self._modes) if m is None]

    def hint(self, name: str, direction: str | None) -> bool:
        """Resolve `name`'s "auto" mode from a Keras metric direction ("up"/"down").

        Returns whether something changed.
        """
        if direction not in ("up", "down") or name not in self.names:
            return False
        i = self.names.index(name)
        if self._modes[i] is not None:
            return False
        self._modes[i] = infer_mode(name, direction)
        return True

    def finalize(self) -> None:
        """Raise the `infer_mode` error for the first name still unresolved."""
        for name in self.unresolved:
            infer_mode(name)

    # ---------------------------------------------------------- records
    @property
    def monitor_spec(self) -> str | list[str]:
        """JSON form of `monitor`: a name, a list of names, or the callable's name."""
        return list(self.names) if self.is_list else self.name

    @property
    def mode_spec(self) -> str | list[str | None] | None:
        """JSON form of the resolved modes, shaped like `monitor_spec`."""
        return list(self._modes) if self.is_list else self._modes[0]

    @property
    def require_spec(self) -> Any:
        """JSON form of `require`: `{name: [op, threshold]}`, a callable's name, or None."""
        return _require.spec(self.require)

    def load_modes(self, mode_spec: Any) -> None:
        """Take the modes recorded in a state or manifest (`mode_spec` shape)."""
        if mode_spec is None:
            return
        recorded = list(mode_spec) if isinstance(mode_spec, (list, tuple)) else [mode_spec]
        if len(recorded) != len(self._modes):
            return
        self._modes = [r or m for r, m in zip(recorded, self._modes)]

    def modes_compatible(self, mode_spec: Any) -> bool:
        """Could a run recorded with `mode_spec` continue under these modes?"""
        if mode_spec is None:
            return True
        recorded = list(mode_spec) if isinstance(mode_spec, (list, tuple)) else [mode_spec]
        if len(recorded) != len(self._modes):
            return False
        return all(r is None or m is None or r == m for r, m in zip(recorded, self._modes))

    def describe_require(self) -> str:
        return describe_require(self.require_spec)

    # ------------------------------------------------------------ scoring
    def check_keys(self, values: Mapping[str, float], needs_monitor: bool = True) -> None:
        """The first update's checks: every name this objective reads is given."""
        if needs_monitor:
            for name in self.names:
                if name not in values:
                    raise ValueError(
                        f"The monitored metric {name!r} is not among the metrics given to "
                        f"update(): {sorted(values)}. HINT: pass it, e.g. "
                        f"tracker.update(epoch, {{{name!r}: val_metric}}), or set `monitor=`."
                    )
        _require.check_keys(self.require, values)

    def score(self, values: Mapping[str, float]) -> Score:
        """Score the metrics of one epoch (absent names read as NaN)."""
        if self.fn is not None:
            primary = _call_number(self.fn, self.name, values)
        else:
            primary = float(values.get(self.names[0], math.nan))
        ties = tuple(float(values.get(n, math.nan)) for n in self.names[1:])
        return Score(primary, ties, self.feasible(values))

    def feasible(self, values: Mapping[str, float]) -> bool:
        """Does `values` meet every constraint? (a NaN or absent metric does not)."""
        return _require.feasible(self.require, values)


def _call_number(fn: Callable[[Mapping[str, float]], Any], name: str, values: Mapping[str, float]) -> float:
    result = _require.call(fn, f"The score function `{name}`", values)
    if not _require.is_real(result):
        shape = getattr(result, "shape", None)
        if shape is not None and tuple(shape) == () and "bool" not in str(getattr(result, "dtype", "bool")):
            return float(result)  # a numpy or tensor scalar
        raise ValueError(
            f"The score function `{name}` (monitor=) must return a number; it returned "
            f"{result!r} ({type(result).__name__}) for the metrics {dict(values)!r}."
        )
    return float(result)


__all__ = ["MODES", "OPS", "Objective", "Score", "beats", "check_mode", "compare_ties", "describe_require",
           "infer_mode", "rank_key"]
