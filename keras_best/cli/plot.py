"""The learning curve of a run, read from its `keras_best.json`.

```python
from keras_best.cli.plot import plot_run
plot_run("runs/exp1", "curve.png")   # also: keras-best plot runs/exp1 -o curve.png
```

The top panel shows the monitored value per epoch, the epochs saved (new
bests, and entries into the top k), the files still kept, the best epoch and
the early-stopping epoch; the bottom panel shows the other recorded metrics
(losses on the left axis, the rest on the right). `plot_compare` draws the
monitored curves of several runs on one axis. A y axis spanning more than a
factor of 10 (positive values only) is drawn on a log scale. A run with
`smooth=` draws the smoothed curve (what was decided on) and, faint, the
values as read. Needs matplotlib
(`python -m pip install matplotlib`); it does not touch pyplot's global state.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

from keras_best.cli import summary as summary_lib
from keras_best.cli.tables import monitor_names, smooth_label
from keras_best.core.extras import install_hint
from keras_best.core.monitor import describe_stop
from keras_best.frontends.loading import format_value


class MissingDependency(ImportError):
    """An optional package is missing; the message says what to install."""


def figure_class() -> Any:
    """matplotlib's `Figure` class; a `MissingDependency` (saying what to install) without matplotlib.

    The command line calls it first, to fail before reading anything.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependency(
            f"Plotting needs matplotlib, which is not installed. Install it with: {install_hint('plot', 'matplotlib')}"
        ) from e
    return Figure


def plot_run(directory: str | os.PathLike, output: str | os.PathLike | None = None, *, dpi: int = 120) -> Any:
    """Draw the run in `directory`; save it to `output` (PNG, SVG, PDF...) if given.

    Returns the `matplotlib.figure.Figure`. Raises `MissingDependency` (an
    `ImportError`) when matplotlib is missing, and what `summary.summarize`
    raises when the directory holds no readable run.
    """
    Figure = figure_class()
    s = summary_lib.summarize(directory, history=True)
    history = s["history"]
    others = sorted({k for h in history for k in h["metrics"]} - set(monitor_names(s["monitor"])[:1]))
    fig = Figure(figsize=(9, 7 if others else 4.8), layout="constrained")
    if others:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    else:
        top, bottom = fig.subplots(1, 1), None
    xs, xlabel = _x_axis(history)
    _draw_monitor(top, s, history, xs)
    if bottom is not None:
        _draw_others(bottom, history, xs, others)
        bottom.set_xlabel(xlabel)
    else:
        top.set_xlabel(xlabel)
    if len(xs) and max(xs) <= 30:
        top.set_xticks(range(1, int(max(xs)) + 1, 1 if max(xs) <= 15 else 2))
    _save(fig, output, dpi)
    return fig


def plot_compare(directories: list[str | os.PathLike], output: str | os.PathLike | None = None, *,
                 names: list[str] | None = None, dpi: int = 120) -> Any:
    """Draw the monitored curves of several runs on one axis, each run's best
    starred; save to `output` if given. `names` label the runs (default:
    their directories' names). Returns the `matplotlib.figure.Figure`.

    ```python
    plot_compare(["runs/a", "runs/b"], "compare.png")  # keras-best compare runs/a runs/b --plot compare.png
    ```
    """
    Figure = figure_class()
    runs = [summary_lib.summarize(d, history=True) for d in directories]
    if names is None:
        names = [os.path.basename(os.path.normpath(s["directory"])) for s in runs]
        if len(set(names)) < len(names):  # runs/a/run and runs/b/run
            names = [s["directory"] for s in runs]
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots(1, 1)
    values, steps = [], False
    monitors = list(dict.fromkeys(monitor_names(s["monitor"])[0] for s in runs))
    for i, (name, s) in enumerate(zip(names, runs)):
        history = s["history"]
        xs, xlabel = _x_axis(history)
        steps = steps or xlabel != "epoch"
        ys = [_finite(h["value"]) for h in history]
        values += ys
        label = name if len(monitors) == 1 else f"{name} ({monitor_names(s['monitor'])[0]})"
        if s["best"]:
            label += f": best {format_value(s['best']['value'])} at epoch {s['best']['epoch'] + 1}"
        if smooth_label(s["options"]):
            label += f" (smoothed: {smooth_label(s['options'])}; dotted: raw)"
            ax.plot(xs, [_finite(h.get("raw", math.nan)) for h in history], ":", linewidth=1, alpha=0.6,
                    color=f"C{i % 10}")
        (line,) = ax.plot(xs, ys, "-", marker=".", markersize=4, linewidth=1.5, color=f"C{i % 10}", label=label)
        at = {(h["epoch"], h.get("step")): (x, y) for h, x, y in zip(history, xs, ys)}
        best = s["best"] and at.get((s["best"]["epoch"], s["best"].get("step")))
        if best:
            ax.scatter([best[0]], [best[1]], s=120, marker="*", color=line.get_color(), zorder=4)
    ax.set_ylabel(", ".join(monitors))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("update" if steps else "epoch")
    _log_scale_if_wide(ax, values)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{', '.join(monitors)} of {len(runs)} run{'s' if len(runs) != 1 else ''} (stars: best epochs)")
    _save(fig, output, dpi)
    return fig


def _save(fig: Any, output: str | os.PathLike | None, dpi: int) -> None:
    if output is not None:
        output = os.fspath(output)
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        fig.savefig(output, dpi=dpi)


def _log_scale_if_wide(ax: Any, values: list[float]) -> None:
    """A log y axis when the finite values are all positive and span more than a factor of 10."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_yscale("log")


def _x_axis(history: list[Mapping[str, Any]]) -> tuple[list[float], str]:
    if any(h.get("step") is not None for h in history):
        return [float(i + 1) for i in range(len(history))], "update (saves every N batches)"
    return [float(h["epoch"] + 1) for h in history], "epoch"


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.nan


def _draw_monitor(ax: Any, s: Mapping[str, Any], history: list[Mapping[str, Any]], xs: list[float]) -> None:
    name = monitor_names(s["monitor"])[0]
    mode = s["mode"][0] if isinstance(s["mode"], list) else s["mode"]
    ys = [_finite(h["value"]) for h in history]
    smooth = smooth_label(s["options"])
    if smooth:  # the values as read, faint; the decisions are on the smoothed curve
        raw = [_finite(h.get("raw", math.nan)) for h in history]
        ax.plot(xs, raw, "-", color="#9ecae1", marker=".", markersize=3, linewidth=1, label=f"{name} (raw)", zorder=1)
    ax.plot(xs, ys, "-", color="#1f77b4", marker=".", markersize=5, linewidth=1.6,
            label=f"{name} (smoothed: {smooth})" if smooth else name, zorder=2)

    by_key = {(h["epoch"], h.get("step")): (x, y) for h, x, y in zip(history, xs, ys)}
    new_best = [(x, y) for h, x, y in zip(history, xs, ys) if h.get("saved") and h.get("improved")]
    top_k = [(x, y) for h, x, y in zip(history, xs, ys) if h.get("saved") and not h.get("improved")]
    if new_best:
        ax.scatter(*zip(*new_best), s=36, color="#2ca02c", zorder=3, label="saved: new best")
    if top_k:
        ax.scatter(*zip(*top_k), s=36, marker="s", color="#ff7f0e", zorder=3, label="saved: entered the top k")
    kept = [by_key[(r["epoch"], r.get("step"))] for r in s["kept"] if (r["epoch"], r.get("step")) in by_key]
    if kept:
        keep = s["options"].get("keep_top_k")
        ax.scatter(*zip(*kept), s=190, facecolors="none", edgecolors="#d4a017", linewidths=2.2, zorder=4,
                   label=f"kept on disk ({len(kept)} file{'s' if len(kept) != 1 else ''}, "
                         f"keep_top_k={'all' if keep is None else keep})")
    best = s["best"]
    if best and (best["epoch"], best.get("step")) in by_key:
        bx, by = by_key[(best["epoch"], best.get("step"))]
        ax.scatter([bx], [by], s=160, marker="*", color="#d62728", zorder=5,
                   label=f"best: {format_value(best['value'])} at epoch {best['epoch'] + 1}")
    stopped = s["stopped"]
    if stopped and (stopped["epoch"], stopped.get("step")) in by_key:
        sx, _ = by_key[(stopped["epoch"], stopped.get("step"))]
        reason = describe_stop(stopped["reason"], s["options"], name)
        ax.axvline(sx, color="#7f7f7f", linestyle="--", linewidth=1.4,
                   label=f"early stop at epoch {stopped['epoch'] + 1} ({reason})")
    better = {"min": "lower is better", "max": "higher is better"}.get(mode, "")
    ax.set_ylabel(f"{name} ({better})" if better else name)
    _log_scale_if_wide(ax, ys)
    title = f"{os.path.basename(os.path.normpath(s['directory']))}: {name}"
    if best:
        raw = f" (smoothed; raw {format_value(best['raw'])})" if "raw" in best else ""
        title += f", best {format_value(best['value'])}{raw} at epoch {best['epoch'] + 1}"
    ax.figure.suptitle(title)
    ax.grid(True, alpha=0.3)
    # Above the panel, never over the curve.
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize="small", frameon=False)


def _draw_others(ax: Any, history: list[Mapping[str, Any]], xs: list[float], names: list[str]) -> None:
    losses = [n for n in names if "loss" in n.lower()]
    rest = [n for n in names if n not in losses]
    left, right = (losses, rest) if losses and rest else (names, [])
    lines, values = [], []
    for i, n in enumerate(left):
        ys = [_finite(float(h["metrics"].get(n, math.nan))) for h in history]
        lines += ax.plot(xs, ys, marker=".", markersize=4, linewidth=1.3, color=f"C{(i + 1) % 10}", label=n)
        values += ys
    ax.set_ylabel("loss" if left is losses else "other metrics")
    _log_scale_if_wide(ax, values)
    ax.grid(True, alpha=0.3)
    if right:
        twin = ax.twinx()
        right_values = []
        for i, n in enumerate(right):
            ys = [_finite(float(h["metrics"].get(n, math.nan))) for h in history]
            right_values += ys
            lines += twin.plot(xs, ys, marker=".", markersize=4, linewidth=1.3, linestyle="--",
                               color=f"C{(len(left) + i + 1) % 10}", label=n)
        twin.set_ylabel(", ".join(right) if len(right) <= 2 else "other metrics")
        _log_scale_if_wide(twin, right_values)
    # Above the panel, not on it: a twin axis would draw its lines over the legend.
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncol=min(len(lines), 4), fontsize="small", frameon=False,
              title="other recorded metrics" + (" (dashed: right axis)" if right else ""),
              title_fontsize="small", alignment="left")


__all__ = ["MissingDependency", "plot_compare", "plot_run"]
