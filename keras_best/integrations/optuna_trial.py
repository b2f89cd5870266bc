"""One Optuna trial's tracker: report each update to the trial, record the saved file, prune.

`StudyBest.tracker(trial, ...)` and `StudyBest.callback(trial, ...)` hand out a
`TrialTracker` or a `TrialCheckpoint`; both pass every update to their
`TrialLink`, which calls `trial.report`, stores where the best file is in the
trial's user attributes (`USER_ATTR_*`), and, when `trial.should_prune()`,
deletes the trial's directory and raises `optuna.TrialPruned`. `OpenTrials`
lists this process's trials, to close the trackers of finished ones.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

import optuna

from keras_best.core.monitor import Decision
from keras_best.frontends.callback import BestCheckpoint
from keras_best.frontends.tracker import BestWeightsTracker
from keras_best.integrations.search import SearchDirectory

USER_ATTR_PATH = "keras_best_path"
USER_ATTR_EPOCH = "keras_best_epoch"
USER_ATTR_VALUE = "keras_best_value"


class TrialLink:
    """What a trial's tracker shares with its `StudyBest`: report, record, prune.

    `directory` is the trial's run directory inside `search` (the study's
    directory, whose lock a pruned trial's removal holds); `mode` is the
    trial checkpoint's, checked against the study's direction.
    """

    def __init__(self, trial: optuna.Trial, directory: str, search: SearchDirectory, mode: Any = "auto") -> None:
        self.trial = trial
        self.directory = directory
        self.search = search
        self.tracker: BestWeightsTracker | None = None
        self.mode = mode
        self._updates = 0
        self.closed = False

    def after_update(self, epoch: int, step: int | None, decision: Decision) -> None:
        report_step = epoch if step is None else self._updates
        self._updates += 1
        if decision.improved and decision.saved_path:
            rel = os.path.relpath(decision.saved_path, self.search.directory)
            self.trial.set_user_attr(USER_ATTR_PATH, rel)
            self.trial.set_user_attr(USER_ATTR_EPOCH, decision.epoch)
            self.trial.set_user_attr(USER_ATTR_VALUE, decision.value)
        self.trial.report(decision.value, report_step)
        if self.trial.should_prune():
            self.close()
            with self.search.lock():
                self.search.remove(self.directory)
            self.trial.set_user_attr(USER_ATTR_PATH, None)
            raise optuna.TrialPruned(
                f"Trial {self.trial.number} pruned at epoch {epoch + 1} "
                f"({self.tracker.objective.name}={decision.value:.5f}); its files were deleted."
            )

    def close(self) -> None:
        """Wait for the tracker's writes and release its directory (not `finish()`:
        no weights restored, nothing exported)."""
        if self.closed or self.tracker is None:
            return
        self.closed = True
        try:
            self.tracker.close()
        except OSError:
            pass  # a pruned or failed trial: its directory is removed next anyway


class TrialTracker(BestWeightsTracker):
    """A `BestWeightsTracker` whose every update goes on to its trial's `TrialLink`."""

    def __init__(self, model: Any, filepath: str, *, link: TrialLink, **options: Any) -> None:
        self._link = link
        super().__init__(model, filepath, **options)

    @property
    def best(self) -> float | None:
        """The trial's best value, once its file is on disk (waits for background writes).

        Return it from the objective: the trial then completes only after the
        weights that produced its value are saved.
        """
        self.flush()
        return super().best

    def update(self, epoch: int, metrics: Mapping[str, Any], step: int | None = None) -> Decision:
        decision = super().update(epoch, metrics, step)
        self._link.after_update(epoch, step, decision)
        return decision

    def finish(self) -> None:
        super().finish()
        self._link.closed = True


class TrialCheckpoint(BestCheckpoint):
    """A `BestCheckpoint` whose every update goes on to its trial's `TrialLink` (with its batch, if any)."""

    def __init__(self, filepath: str, *, link: TrialLink, **options: Any) -> None:
        self._link = link
        self._step: int | None = None
        super().__init__(filepath, **options)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step = batch
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._step = None
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_end(logs)
        self._link.closed = True

    def _act(self, decision: Decision) -> None:
        super()._act(decision)
        self._link.after_update(decision.epoch, self._step, decision)


class OpenTrials:
    """This process's trial links, closed once their trial has finished (in case
    the objective did not call `finish()`). Thread-safe: `study.optimize(n_jobs=...)`."""

    def __init__(self) -> None:
        self._links: list[TrialLink] = []
        self._lock = threading.Lock()

    def add(self, link: TrialLink) -> None:
        with self._lock:
            self._links.append(link)

    def close_finished(self) -> None:
        """Flush the trackers of the trials no longer running in their study's storage."""
        with self._lock:
            links = [link for link in self._links if not link.closed]
            studies = {id(link.trial.study): link.trial.study for link in links}
            running = {
                (key, t.number)
                for key, study in studies.items()
                for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            }
            for link in links:
                if (id(link.trial.study), link.trial.number) not in running:
                    link.close()
            self._links = [link for link in links if not link.closed]


__all__ = ["OpenTrials", "TrialCheckpoint", "TrialLink", "TrialTracker", "USER_ATTR_EPOCH", "USER_ATTR_PATH",
           "USER_ATTR_VALUE"]
