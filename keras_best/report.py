"""The Keras-style lines a tracker prints for its decisions (`verbose`).

```
Epoch 3: val_loss improved from 0.31200 to 0.29810, saving model to runs/best.weights.h5
```
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from keras_best.monitor import Decision


@dataclasses.dataclass(frozen=True)
class Reporter:
    """Formats and prints decisions; `previous_best` is the best before one."""

    objective: Any  # keras_best.objective.Objective: the names, and `require` to describe
    baseline: float | None
    save_best_only: bool
    keep_top_k: int | None

    def report(self, d: Decision, previous_best: float | None, verbose: int) -> None:
        if verbose:
            sys.stdout.write("".join("\n" + line for line in self.lines(d, previous_best, verbose)) + "\n")
            sys.stdout.flush()

    def lines(self, d: Decision, previous_best: float | None, verbose: int = 1) -> list[str]:
        name, ties = self.objective.name, ""
        if d.ties:  # a list monitor: show the tie-break values too
            ties = " (" + ", ".join(f"{n}={v:.5f}" for n, v in zip(self.objective.names[1:], d.ties)) + ")"
        before = fmt(previous_best, self.baseline)  # as ModelCheckpoint prints it
        if d.saved_path and not self.save_best_only:  # as ModelCheckpoint prints it
            msg = f"saving model to {d.saved_path}"
        elif d.improved and d.saved_path:
            msg = f"{name} improved from {before} to {d.value:.5f}{ties}, saving model to {d.saved_path}"
        elif d.saved_path:
            msg = (f"{name}={d.value:.5f}{ties} is among the best {self.keep_top_k}, "
                   f"saving model to {d.saved_path}")
        elif d.improved:
            msg = f"{name} improved from {before} to {d.value:.5f}{ties}"
        else:
            msg = f"{name} did not improve from {fmt(d.best, self.baseline)}"
        if not d.feasible:
            msg += f" (this epoch breaks require: {self.objective.describe_require()})"
        prefix = f"Epoch {d.epoch + 1}: "
        lines = [prefix + msg]
        if verbose > 1:
            lines += [prefix + f"deleted {p} (no longer among the best {self.keep_top_k})" for p in d.evicted]
        if d.should_stop:
            lines.append(prefix + f"early stopping ({d.stop_reason.value}); best {name} "
                         f"{fmt(d.best, None)} at epoch {None if d.best_epoch is None else d.best_epoch + 1}")
        return lines


def fmt(x: float | None, fallback: float | None) -> str:
    x = x if x is not None else fallback
    return "None" if x is None else f"{x:.5f}"
