"""The `smooth=` option: decide on an average of the monitored value, not on one noisy reading.

`Smoothing` is the rule, validated once (`parse`); what it has seen is a
tuple of windows, one per compared value (the primary, then each tie-break),
carried in `keras_best.core.monitor.MonitorState` (so keras_best.json holds it
and `resume=True` continues the same averages). Plain Python, pure.

- `("mean", n)`: the mean of the last `n` finite values (fewer at the start:
  the first epoch's smoothed value is its own value). The window holds them.
- `("ema", alpha)`: the exponential moving average with `alpha` the weight of
  the NEW value, as pandas' `Series.ewm(alpha=alpha, adjust=False).mean()`:
  `s_0 = x_0`, `s_t = alpha * x_t + (1 - alpha) * s_{t-1}`, `0 < alpha <= 1`
  (`alpha=1` is no smoothing; smaller is smoother). The window holds `s`.

A NaN or infinite value is not averaged: that epoch's smoothed value is NaN
(never best; it counts for patience as no improvement), the window is left as
it was, and the next finite values average with the ones before it.

>>> rule, window = parse(("mean", 2)), ()
>>> for x in [4.0, 2.0, float("nan"), 1.0]:
...     s, window = rule.smooth(window, (x,))
...     print(s[0])
4.0
3.0
nan
1.5
>>> rule, window = parse(("ema", 0.5)), ()
>>> [(s := rule.smooth(window, (x,)), window := s[1])[0][0][0] for x in [4.0, 2.0, 0.0]]
[4.0, 3.0, 1.5]
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

Window = tuple[tuple[float, ...], ...]  # one per compared value: the last finite values (mean) or (s,) (ema)

_USAGE = ('`smooth` must be None, ("mean", n) with n an int >= 1 (the mean of the last n validations), or '
          '("ema", alpha) with 0 < alpha <= 1 (alpha: the weight of the new value)')


class Smoothing(NamedTuple):
    """`("mean", n)` or `("ema", alpha)`: a tuple, so `tracker.smooth == ("mean", 3)`."""

    kind: str
    param: float

    def describe(self) -> str:
        """E.g. "mean of the last 3" or "EMA alpha=0.3" (for `inspect` and the messages)."""
        return f"mean of the last {self.param}" if self.kind == "mean" else f"EMA alpha={self.param:g}"

    def smooth(self, window: Window, values: tuple[float, ...]) -> tuple[tuple[float, ...], Window]:
        """The smoothed `values` (each averaged in its own window) and the windows after them."""
        window = tuple(window) + ((),) * (len(values) - len(window))
        out, after = [], []
        for x, w in zip(values, window):
            if not math.isfinite(x):  # not averaged: NaN now, the window as it was
                out.append(math.nan)
                after.append(tuple(w))
                continue
            if self.kind == "mean":
                w = (tuple(w) + (x,))[-int(self.param):]
                out.append(_mean(w))
            else:
                w = (x if not w else self.param * x + (1.0 - self.param) * w[0],)
                out.append(w[0])
            after.append(w)
        return tuple(out), tuple(after)


def parse(value: Any) -> Smoothing | None:
    """The `smooth=` option, checked (a list from keras_best.json is read as the tuple).

    >>> parse(["ema", 1])
    Smoothing(kind='ema', param=1.0)
    >>> parse(("mean", 0))
    Traceback (most recent call last):
    ...
    ValueError: `smooth` must be None, ("mean", n) with n an int >= 1 (the mean of the last n validations), or ("ema", alpha) with 0 < alpha <= 1 (alpha: the weight of the new value). Received: smooth=('mean', 0)
    """
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        kind, param = value
        number = isinstance(param, numbers.Real) and not isinstance(param, bool)  # numpy bools are not Real
        if kind == "mean" and number and isinstance(param, numbers.Integral) and int(param) >= 1:
            return Smoothing("mean", int(param))
        if kind == "ema" and number and 0 < float(param) <= 1:
            return Smoothing("ema", float(param))
    raise ValueError(f"{_USAGE}. Received: smooth={value!r}")


def check_window(value: Any) -> Window:
    """A window read back from keras_best.json: lists of finite numbers, else `ValueError`."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(w, (list, tuple)) and all(_is_finite(x) for x in w) for w in value):
        raise ValueError(f"must be a list of lists of finite numbers, not {value!r}")
    return tuple(tuple(float(x) for x in w) for w in value)


def _is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean(w: tuple[float, ...]) -> float:
    """`statistics.fmean(w)` (an exactly rounded sum over n), without its overflow for huge values."""
    try:
        return math.fsum(w) / len(w)
    except OverflowError:
        return math.fsum(x / len(w) for x in w)
