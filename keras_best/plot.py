"""The learning curve of a run, read from its `keras_best.json`.

```python
from keras_best.plot import plot_run
plot_run("runs/exp1", "curve.png")   # also: keras-best plot runs/exp1 -o curve.png
```

The top panel shows the monitored value per epoch, the epochs saved (new
bests, and entries into the top k), the files still kept, the best epoch and
the early-stopping epoch; the bottom panel shows the other recorded metrics
(losses on the left axis, the rest on the right). Needs matplotlib
(`pip install "keras-best[plot]"`); it does not touch pyplot's global state.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

from keras_best import summary as summary_lib


class MissingDependency(ImportError):
    """An optional package is missing; the message says what to install."""


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependency(
            "Plotting needs matplotlib, which is not installed. Install it with: "
            'python -m pip install "keras-best[plot]"  (or: python -m pip install matplotlib)'
        ) from e
    return Figure


def plot_run(directory: str | os.PathLike, output: str | os.PathLike | None = None, *, dpi: int = 120) -> Any:
    """Draw the run in `directory`; save it to `output` (PNG, SVG, PDF...) if given.

    Returns the `matplotlib.figure.Figure`. Raises `MissingDependency` (an
    `ImportError`) when matplotlib is missing, and what `summary.summarize`
    raises when the directory holds no readable run.
    """
    Figure = _figure_class()
    s = summary_lib.summarize(directory, history=True)
    history = s["history"]
    others = sorted({k for h in history for k in h["metrics"]} - set(_names(s["monitor"])[:1]))
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
    if output is not None:
        output = os.fspath(output)
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        fig.savefig(output, dpi=dpi)
    return fig


def _names(monitor: Any) -> list[str]:
    return [str(m) for m in monitor] if isinstance(monitor, list) else [str(monitor)]


def _x_axis(history: list[Mapping[str, Any]]) -> tuple[list[float], str]:
    if any(h.get("step") is not None for h in history):
        return [float(i + 1) for i in range(len(history))], "update (saves every N batches)"
    return [float(h["epoch"] + 1) for h in history], "epoch"


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.nan


def _draw_monitor(ax: Any, s: Mapping[str, Any], history: list[Mapping[str, Any]], xs: list[float]) -> None:
    name = _names(s["monitor"])[0]
    mode = s["mode"][0] if isinstance(s["mode"], list) else s["mode"]
    ys = [_finite(h["value"]) for h in history]
    ax.plot(xs, ys, "-", color="#1f77b4", marker=".", markersize=5, linewidth=1.6, label=name, zorder=2)

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
                   label=f"best: {summary_lib.format_value(best['value'])} at epoch {best['epoch'] + 1}")
    stopped = s["stopped"]
    if stopped and (stopped["epoch"], stopped.get("step")) in by_key:
        sx, _ = by_key[(stopped["epoch"], stopped.get("step"))]
        reason = stopped["reason"].replace("_", " ")
        ax.axvline(sx, color="#7f7f7f", linestyle="--", linewidth=1.4,
                   label=f"early stop at epoch {stopped['epoch'] + 1} ({reason})")
    better = {"min": "lower is better", "max": "higher is better"}.get(mode, "")
    ax.set_ylabel(f"{name} ({better})" if better else name)
    title = f"{os.path.basename(os.path.normpath(s['directory']))}: {name}"
    if best:
        title += f", best {summary_lib.format_value(best['value'])} at epoch {best['epoch'] + 1}"
    ax.figure.suptitle(title)
    ax.grid(True, alpha=0.3)
    # Above the panel, never over the curve.
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize="small", frameon=False)


def _draw_others(ax: Any, history: list[Mapping[str, Any]], xs: list[float], names: list[str]) -> None:
    losses = [n for n in names if "loss" in n.lower()]
    rest = [n for n in names if n not in losses]
    left, right = (losses, rest) if losses and rest else (names, [])
    lines = []
    for i, n in enumerate(left):
        ys = [_finite(float(h["metrics"].get(n, math.nan))) for h in history]
        lines += ax.plot(xs, ys, marker=".", markersize=4, linewidth=1.3, color=f"C{(i + 1) % 10}", label=n)
    ax.set_ylabel("loss" if left is losses else "other metrics")
    ax.grid(True, alpha=0.3)
    if right:
        twin = ax.twinx()
        for i, n in enumerate(right):
            ys = [_finite(float(h["metrics"].get(n, math.nan))) for h in history]
            lines += twin.plot(xs, ys, marker=".", markersize=4, linewidth=1.3, linestyle="--",
                               color=f"C{(len(left) + i + 1) % 10}", label=n)
        twin.set_ylabel(", ".join(right) if len(right) <= 2 else "other metrics")
    # Above the panel, not on it: a twin axis would draw its lines over the legend.
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncol=min(len(lines), 4), fontsize="small", frameon=False,
              title="other recorded metrics" + (" (dashed: right axis)" if right else ""),
              title_fontsize="small", alignment="left")


__all__ = ["MissingDependency", "plot_run"]
