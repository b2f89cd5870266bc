"""Preemption: a signal asks the run to save its training state and exit.

Slurm, Kubernetes and spot/preemptible cloud machines send SIGTERM (some
setups SIGUSR1) some seconds before they kill a job. While a tracker that
keeps a training state (`resume=True` or `save_last=True`) is open, it
watches those signals: the handler only notes the signal (nothing is written
inside a signal handler), and the loop acts at its next safe point: the end
of the current batch in `fit()` and in `tracker.batches()` /
`tracker.run()`, or where a hand-written loop checks `tracker.preempted`.
There the training state is written and made durable, and `Preempted` is
raised: a `SystemExit` whose status is 128 + the signal number (143 for
SIGTERM), what a scheduler sees from a process ended by that signal. Running
the same script again with `resume=True` continues from that state.

Which signals are watched: `keras_best.core.signals.signals_of`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from typing import Any

from keras_best.core import cadence
from keras_best.core.signals import signals_of


class Preempted(SystemExit):
    """Raised at the safe point after a preemption signal, once the training
    state is on disk. Uncaught, the process exits with status 128 + signal
    number (143 for SIGTERM), without a traceback.

    Attributes:
        signum: the signal received.
        epoch, step: where the saved training state stands.
    """

    def __init__(self, signum: int, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(128 + signum)
        self.signum, self.epoch, self.step = signum, epoch, step

    def __str__(self) -> str:
        where = "" if self.epoch is None else f" at epoch {self.epoch + 1}" + (
            "" if self.step is None else f", batch {self.step + 1}")
        return (f"Preempted by {signal.Signals(self.signum).name}: the training state{where} is saved; "
                "run the same script again with resume=True to continue.")


class SignalWatch:
    """Notes the first of `signals` received until `close()`, which puts the
    previous handlers back. A previous Python handler is still called.

    Handlers can only be installed from the main thread; elsewhere the watch
    warns once and watches nothing (the default handlers stay).
    """

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        if not signals:
            return
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "keras-best watches preemption signals only when the tracker is created in the main "
                "thread; this one is not, so a SIGTERM ends the process at once (the last saved "
                "training state stays). Pass preempt_signals=None to silence this.",
                stacklevel=4,
            )
            return
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum)
        if self.received is not None:  # a second signal: what it would have done without us, now
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        if callable(previous):
            previous(signum, frame)

    def close(self) -> None:
        """Restore the handlers that were there before (from the main thread)."""
        if not self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}



class SafePoints:
    """The safe points between a front end's updates: after each training
    batch the training state is written when the cadence says so (every N
    batches or seconds: `keras_best.core.cadence`), and after a preemption
    signal the run ends with `Preempted`.

    `run` is the front end's `keras_best.runner.run.Run`.
    """

    def __init__(self, run: Any, options: Any) -> None:
        self.run, self.options = run, options
        self.cadence = cadence.every(options.save_state_every_batches, options.save_state_every, preemption=True)
        self.progress = cadence.Progress(started=time.monotonic())
        self.watch: SignalWatch | None = None

    def start(self, epoch: int, step: int) -> None:
        """Training goes on at batch `step` of `epoch`; watch the signals from now on."""
        self.progress = cadence.Progress(started=time.monotonic(), last=(epoch, step - 1))
        if self.watch is None:
            self.watch = SignalWatch(signals_of(self.options.preempt_signals, self.options.keeps_state))

    @property
    def preempted(self) -> bool:
        return self.watch is not None and self.watch.received is not None

    def due(self, epoch: int, step: int) -> bool:
        """Count batch `step` of `epoch` as trained; whether the state is to be written now."""
        self.progress = self.progress.after_batch(epoch, step)
        return self.cadence.due(self.progress.moment(cadence.BATCH, time.monotonic(), self.preempted))

    def written(self) -> None:
        """A training state was written: the cadence counts from here."""
        self.progress = self.progress.saved(time.monotonic())

    def end_if_preempted(self) -> None:
        """After a preemption signal: wait for the run's writes and release its
        lock, put the signal handlers back, and raise `Preempted` saying where
        the training state written last stands."""
        if not self.preempted:
            return
        last = self.run.state.last or {}
        try:
            self.run.close()
        finally:
            self.close()
        preempted = Preempted(self.watch.received, last.get("epoch"), last.get("step"))
        if self.run.chief:  # whatever `verbose`: a job that ends must say why, where its logs go
            sys.stderr.write(f"keras-best: {preempted}\n")
            sys.stderr.flush()
        raise preempted

    def close(self) -> None:
        """Put the signal handlers back."""
        if self.watch is not None:
            self.watch.close()
