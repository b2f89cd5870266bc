"""The Keras-style lines a tracker prints for its decisions (`verbose`).

```
Epoch 3: val_loss improved from 0.31200 to 0.29810, saving model to runs/best.weights.h5
```
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from typing import Any, Mapping, Sequence

from keras_best.core.monitor import Decision, describe_stop


@dataclasses.dataclass(frozen=True)
class Reporter:
    """Formats and prints decisions; `previous_best` is the best before one."""

    objective: Any  # keras_best.core.objective.Objective: the names, and `require` to describe
    baseline: float | None
    save_best_only: bool
    keep_top_k: int | None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # `Options.recorded()`
    queued: list = dataclasses.field(default_factory=list)  # [(writer.submitted, epoch + 1)]: saves announced

    def report(self, d: Decision, previous_best: float | None, verbose: int, writer: Any = None) -> None:
        lines = self.lines(d, previous_best, verbose)
        if writer is not None:
            lines[0] += self.still_writing(writer, d)
        if verbose:
            say("".join("\n" + line for line in lines))

    def still_writing(self, writer: Any, d: Decision) -> str:
        """With `async_save`, a save announced is queued, not yet on disk: each line names the
        earlier saves still being written ("(the save of epoch 3 is still being written)"); a line
        without that note means every earlier save is durable. `writer`: the run's `Writer`."""
        self.queued[:] = [(n, label) for n, label in self.queued if n > writer.durable]
        pending = list(dict.fromkeys(str(e) for n, e in self.queued if n < writer.submitted))  # not its own
        if d.saved_path:
            self.queued.append((writer.submitted, d.epoch + 1))
        if not pending:
            return ""
        s = "s" if len(pending) > 1 else ""
        return f" (the save{s} of epoch{s} {', '.join(pending)} {'are' if s else 'is'} still being written)"

    def lines(self, d: Decision, previous_best: float | None, verbose: int = 1) -> list[str]:
        name, ties = self.objective.name, ""
        if d.ties:  # a list monitor: show the tie-break values too
            ties = " (" + ", ".join(f"{n}={v:.5f}" for n, v in zip(self.objective.names[1:], d.ties)) + ")"
        if self.options.get("smooth"):  # decided on the smoothed value: say so, and show the value as read
            name, ties = f"smoothed {name}", f"{ties} (raw {d.raw:.5f})"
        before = fmt(previous_best, self.baseline, self.objective.engine_modes[0])  # as ModelCheckpoint
        breaks = "" if d.feasible else self.objective.describe_require()
        if d.saved_path and not self.save_best_only:  # as ModelCheckpoint prints it
            msg = f"saving model to {d.saved_path}"
        elif d.improved and d.saved_path:
            msg = f"{name} improved from {before} to {d.value:.5f}{ties}, saving model to {d.saved_path}"
        elif d.saved_path:
            msg = (f"{name}={d.value:.5f}{ties} is among the best {self.keep_top_k}, "
                   f"saving model to {d.saved_path}")
        elif d.improved:
            msg = f"{name} improved from {before} to {d.value:.5f}{ties}"
        elif not math.isfinite(d.value):
            msg, breaks = f"{name} is {d.value}: not a candidate; {self.so_far(d.best, d.best_epoch)}", ""
        elif breaks and d.best is None:
            msg, breaks = f"{name}={d.value:.5f} breaks require ({breaks}): not a candidate; no best yet", ""
        else:
            msg = f"{name} did not improve from {fmt(d.best, self.baseline, self.objective.engine_modes[0])}"
        if breaks:
            msg += f" (this epoch breaks require: {breaks})"
        prefix = f"Epoch {d.epoch + 1}: "
        lines = [prefix + msg]
        if verbose > 1:
            lines += [prefix + f"deleting {p} (no longer among the best {self.keep_top_k})" for p in d.evicted]
        if d.should_stop:
            lines.append(prefix + f"early stopping: {describe_stop(d.stop_reason, self.options, name)}; "
                         f"{self.so_far(d.best, d.best_epoch)}")
        return lines

    def so_far(self, best: float | None, best_epoch: int | None) -> str:
        """The best so far in words: "best val_loss 0.29810 at epoch 2", or "no best yet"."""
        if best is None:
            return "no best yet" + ("" if self.baseline is None else f" (baseline {self.baseline:.5f})")
        return f"best {self.objective.name} {best:.5f} at epoch {best_epoch + 1}"

    def resumed_line(self, directory: str, run: Any, epochs: int | None = None) -> str:
        """What `resume=True` continues from (`run`: a `keras_best.runner.run.Run`; `epochs`:
        where training ends, when known), e.g. "Resuming runs/x at epoch 4 (initial_epoch=3;
        best val_loss 0.12340 at epoch 2)". Epochs in words count from 1, as Keras's progress
        bar; an API value is written `initial_epoch=3`, from 0 as in Keras callbacks."""
        engine, stopped = run.state.engine or {}, run.state.stopped
        so_far = self.so_far(engine.get("best"), engine.get("best_epoch"))
        if stopped:
            why = describe_stop(stopped.get("reason"), self.options, self.objective.name)
            return (f"Resuming {directory}: it stopped early at epoch {int(stopped['epoch']) + 1} ({why}), "
                    f"so there is nothing left to train ({so_far})")
        if epochs is not None and run.initial_epoch >= epochs:
            return self.complete_line(directory, epochs, so_far)
        step = f", batch {run.initial_step + 1}" if run.initial_step else ""
        return f"Resuming {directory} at epoch {run.initial_epoch + 1}{step} (initial_epoch={run.initial_epoch}; {so_far})"

    def complete_line(self, directory: str, epochs: int, so_far: str) -> str:
        return f"Resuming {directory}: the run is complete (all {epochs} epochs trained), nothing left to train ({so_far})"


def say_resumed(reporter: Reporter, run: Any, verbose: int, epochs: int | None = None, complete: bool = False) -> None:
    """Print `resumed_line` (when `run` resumed, on the chief, with `verbose`); with
    `complete`, only when `epochs` are all trained (a custom loop's `epochs(n)`)."""
    if run.resumed and run.chief and verbose and (not complete or (
            epochs is not None and run.initial_epoch >= epochs and run.state.stopped is None)):
        say(reporter.resumed_line(run.directory, run, epochs))


def announce(reporter: Reporter, d: Decision, previous_best: float | None, verbose: int, writer: Any = None) -> None:
    """`reporter.report(...)`, where a failure only warns: the save is committed, never undo it for a print."""
    try:
        reporter.report(d, previous_best, verbose, writer)
    except Exception as e:  # noqa: BLE001 - see above
        warnings.warn(f"keras-best could not print epoch {d.epoch + 1}'s line: {e!r}", stacklevel=4)


def warn_if_never_validated(history: Sequence[Mapping[str, Any]], name: str) -> None:
    """Warn at the end of a run when no update held validation values."""
    if history and not any(h.get("validated", True) for h in history):
        warnings.warn(
            f"The monitored {name!r} was never among the metrics: no update held "
            "validation values, so no best was chosen. Give validation data (in fit(): "
            "validation_data= or validation_split=, and check validation_freq), or monitor a "
            "training metric.", stacklevel=3)


def restored_line(epoch: int, step: int | None = None) -> str:
    """The line `keras.callbacks.EarlyStopping` prints when it restores the best weights."""
    batch = "" if step is None else f" (batch {step + 1})"
    return f"Restoring model weights from the end of the best epoch: {epoch + 1}{batch}."


def say_restored(epoch: int, step: int | None = None) -> None:
    say(restored_line(epoch, step))


def say(text: str) -> None:
    """Print `text` at once and flush (as Keras's `io_utils.print_msg`)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fmt(x: float | None, fallback: float | None, mode: str = "min") -> str:
    """`x` (else `fallback`) as ModelCheckpoint prints it: no value yet is "inf" ("-inf" with mode "max")."""
    x = x if x is not None else fallback
    return f"{(math.inf if mode == 'min' else -math.inf) if x is None else x:.5f}"
