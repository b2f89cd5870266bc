"""Optuna: prune trials, and keep the best models of the whole study.

Optuna records the best hyper-parameters, not the model. `StudyBest` gives each
trial a `BestWeightsTracker` (or a `BestCheckpoint` for `fit()`) that saves the
trial's best epoch into its own sub-directory, reports every update to the
trial (so Optuna's pruners work) and raises `optuna.TrialPruned` when the
pruner says so. After each trial only the directories of the study's
`keep_top_k` best trials remain, even when many processes share one study
storage (`sqlite:///...`, PostgreSQL):

```python
import optuna
from keras_best.integrations.optuna import StudyBest

best = StudyBest("runs/study", keep_top_k=3)

def objective(trial):
    model = build_model(trial.suggest_float("lr", 1e-4, 1e-1, log=True))
    tracker = best.tracker(trial, model, monitor="val_loss", patience=3)
    for epoch in tracker.epochs(20):   # ends at early stop (or when pruned: TrialPruned)
        train_one_epoch(model)
        tracker.update(epoch, {"val_loss": evaluate(model)})
    tracker.finish()
    return tracker.best          # the value whose weights were saved

study = optuna.create_study(storage="sqlite:///study.db", study_name="s",
                            load_if_exists=True, pruner=optuna.pruners.MedianPruner())
best.optimize(study, objective, n_trials=50)
record = best.load_best(study, model)   # the weights behind study.best_value
```

How the files stay right across processes: the study storage is the source of
truth. A finished trial's value never changes and the set of finished trials
only grows, so a trial that has fallen out of the best `keep_top_k` can never
come back: deleting it is always safe. A trial that is still running (its
value not yet in the storage) is never touched, so the cleanup of a trial
happens after it completes: when any process starts its next trial, in
`optuna_callback` after each trial, and in `cleanup(study)` (which
`optimize()` calls at the end). Cleanups hold a lock file in `directory`, are
idempotent, and rename a directory away before deleting it, so a crash
half-way leaves no half-deleted trial that looks complete.

This module holds the study-wide part (`StudyBest`: which trials keep their
files); `keras_best.integrations.optuna_trial` the per-trial part (the
tracker and callback that report, record and prune).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from typing import Any, Callable, Iterable, Mapping

from keras_best.core.extras import install_hint

try:
    import optuna  # the package (absolute import), not this module
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"keras_best.integrations.optuna needs Optuna: {install_hint('optuna', 'optuna')}"
    ) from e
from keras_best.core import names
from keras_best.frontends import loading
from keras_best.frontends.callback import BestCheckpoint
from keras_best.frontends.loading import BestRecord
from keras_best.frontends.tracker import BestWeightsTracker
from keras_best.integrations import search
from keras_best.integrations.optuna_trial import (
    USER_ATTR_EPOCH,
    USER_ATTR_PATH,
    USER_ATTR_VALUE,
    OpenTrials,
    TrialCheckpoint,
    TrialLink,
    TrialTracker,
)

STUDY_FILE = names.STUDY_FILE
LOCK_NAME = search.LOCK_NAME
_TRIAL_DIR = re.compile(r"^trial-(\d+)$")
_DISCARDED = (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclasses.dataclass(frozen=True)
class TrialRecord(BestRecord):
    """What `StudyBest.load_best` loaded: a `BestRecord` plus its trial.

    Attributes:
        trial_number: the trial's `number` in the study: `study.best_trial`, or
            when several trials have exactly the best value, the earliest one.
        params: the trial's hyper-parameters.
    """

    trial_number: int = -1
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class StudyBest:
    """Keeps the models of an Optuna study's `keep_top_k` best trials.

    Each trial saves into `directory/trial-<number>/` (a normal keras-best run
    directory, so `keras_best.load_best(model, that_dir)` works too). The
    trial's objective must return the tracker's best value (`tracker.best`,
    or `callback.best`): then `load_best(study, model)` loads exactly the
    weights that produced `study.best_value`.

    Args:
        directory: a local (or network-mounted) directory shared by every
            process of the study, or an s3:// URL. One directory per study.
        keep_top_k: how many of the study's best trials keep their files.
        lock_timeout: seconds to wait for another process's cleanup.
        storage_options: for a remote `directory`, fsspec's arguments of its file system
            (endpoint, credentials: docs/remote-storage.md), used by every trial's tracker.

    Multi-objective studies are refused (`ValueError`): Optuna cannot prune
    them nor name one best trial.
    """

    def __init__(self, directory: str | os.PathLike, keep_top_k: int = 1, lock_timeout: float = 300.0,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self._search = search.SearchDirectory(directory, keep_top_k, lock_timeout, owner="StudyBest",
                                              storage_options=storage_options)
        self.directory = self._search.directory
        self.keep_top_k = keep_top_k
        self.lock_timeout = lock_timeout
        self._open = OpenTrials()

    # ------------------------------------------------------------ front ends
    def trial_directory(self, trial: Any) -> str:
        """The run directory of `trial` (an `optuna.Trial`, a `FrozenTrial` or a number)."""
        number = trial if isinstance(trial, int) else trial.number
        return os.path.join(self.directory, f"trial-{number:05d}")

    def tracker(
        self, trial: optuna.Trial, model: Any, filename: str = "best.weights.h5", **tracker_options: Any
    ) -> BestWeightsTracker:
        """A `BestWeightsTracker` for `trial` that reports to it and prunes.

        Every `update()` also calls `trial.report(value, epoch)` (or, for updates
        given a `step`, at the update's index) and raises `optuna.TrialPruned`
        when `trial.should_prune()`; the pruned trial's directory is deleted
        first. `tracker_options` are `BestWeightsTracker`'s (`monitor`,
        `patience`, ...); `mode` defaults to the study's direction. Return
        `tracker.best` from the objective.
        """
        link = self._start(trial, {**tracker_options, "filename": filename})
        tracker_options.update(keep_top_k=1, mode=link.mode)
        tracker = TrialTracker(
            model, os.path.join(link.directory, filename), link=link, **tracker_options
        )
        link.tracker = tracker
        return tracker

    def callback(self, trial: optuna.Trial, filename: str = "best.weights.h5", **options: Any) -> BestCheckpoint:
        """A `BestCheckpoint` for `fit()` that reports to `trial` and prunes.

        `options` are `BestCheckpoint`'s; here `save_best_only` defaults to
        True and `mode` to the study's direction. Return `callback.best` from
        the objective.
        """
        options.setdefault("save_best_only", True)
        link = self._start(trial, {**options, "filename": filename})
        options.update(keep_top_k=1, mode=link.mode)
        callback = TrialCheckpoint(os.path.join(link.directory, filename), link=link, **options)
        link.tracker = callback.tracker
        return callback

    def optimize(
        self, study: optuna.Study, func: Callable[[optuna.Trial], float], **optimize_options: Any
    ) -> None:
        """`study.optimize(func, ...)` with `optuna_callback` added and `cleanup` at the end."""
        self._check_study(study)
        callbacks = list(optimize_options.pop("callbacks", None) or [])
        try:
            study.optimize(func, callbacks=[*callbacks, self.optuna_callback], **optimize_options)
        finally:
            self.cleanup(study)

    def optuna_callback(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """For `study.optimize(callbacks=[...])`: clean up once a trial has finished."""
        self._open.close_finished()
        if trial.state == optuna.trial.TrialState.COMPLETE:
            _check_returned_value(trial, self.trial_directory(trial))
        self.cleanup(study)

    # ----------------------------------------------------------------- reading
    def best_path(self, study: optuna.Study) -> str:
        """The file holding the best weights of `study.best_trial`."""
        self._check_study(study)
        return self._best(study)[1].path

    def load_best(self, study: optuna.Study, model: Any) -> TrialRecord:
        """Load the weights of `study.best_trial` (that produced `study.best_value`).

        Returns a `TrialRecord` (`epoch`, `value`, `path`, `trial_number`,
        `params`, ...). Warns when the value the objective returned is not the
        value of the saved epoch (return `tracker.best` from the objective).
        """
        self._check_study(study)
        with self._search.lock():
            trial, _ = self._best(study)
            record = loading.load_best(model, self.trial_directory(trial))
        _check_returned_value(trial, self.trial_directory(trial), record)
        return TrialRecord(
            **dataclasses.asdict(record), trial_number=trial.number, params=dict(trial.params)
        )

    # ----------------------------------------------------------------- cleanup
    def cleanup(self, study: optuna.Study) -> list[str]:
        """Delete the files of every finished trial outside the best `keep_top_k`.

        Removes the directories of pruned and failed trials and of completed
        trials that are not among the study's `keep_top_k` best. Directories of
        trials still running (or unknown to the storage yet) are never
        touched. Safe to call from any process at any time; returns the
        directories it removed.
        """
        self._check_study(study)
        self._open.close_finished()
        with self._search.lock():
            self._search.claim(study.study_name, framework="optuna")
            # The snapshot: only states that can never change again are acted on.
            trials = {t.number: t for t in study.get_trials(deepcopy=False)}
            keep = self._keep(study, trials.values())

            def doomed(name: str) -> bool:
                match = _TRIAL_DIR.match(name)
                trial = trials.get(int(match.group(1))) if match else None
                if trial is None:  # not a trial of the storage (yet): never touched
                    return False
                done = trial.state == optuna.trial.TrialState.COMPLETE and trial.number not in keep
                return trial.state in _DISCARDED or done

            return self._search.sweep(doomed)

    # ---------------------------------------------------------------- internal
    def _start(self, trial: Any, options: dict[str, Any]) -> TrialLink:
        if not isinstance(trial, optuna.Trial):
            raise TypeError(
                "StudyBest needs the `optuna.Trial` that `study.optimize` passes to the "
                f"objective (or `study.ask()` returns). Received: {type(trial).__name__}"
            )
        self._check_study(trial.study)
        filename = options.get("filename", "")
        if os.path.basename(filename) != filename:
            raise ValueError(
                "`filename` names the file inside the trial's directory, without folders "
                f"(e.g. 'best.weights.h5'). Received: filename={filename!r}"
            )
        for key in ("filepath", "resume"):
            if key in options:
                raise ValueError(
                    f"StudyBest chooses `{key}` itself (each trial writes a fresh directory "
                    f"{self.trial_directory(trial)!r}); remove `{key}=` (use `filename=` to "
                    "name the saved file)."
                )
        if options.get("keep_top_k", 1) != 1:
            raise ValueError(
                "A trial keeps only its single best file; `StudyBest(directory, keep_top_k=...)` "
                f"says how many trials keep theirs. Received: keep_top_k={options['keep_top_k']!r}"
            )
        study = trial.study
        mode = search.trial_mode(
            self._mode(study), options.get("monitor", "val_loss"), options.get("mode", "auto"),
            search=f"The study {study.study_name!r}", noun="study",
            fix="Create the study with direction='{}imize'",
        )
        self.cleanup(trial.study)
        link = TrialLink(trial, self.trial_directory(trial), self._search, mode)
        self._open.add(link)
        return link

    def _check_study(self, study: Any) -> None:
        if not isinstance(study, optuna.Study):
            raise TypeError(f"Expected an `optuna.Study`. Received: {type(study).__name__}")
        if len(study.directions) != 1:
            raise ValueError(
                f"StudyBest needs a single-objective study; study {study.study_name!r} has "
                f"{len(study.directions)} objectives ({[d.name for d in study.directions]}). "
                "Optuna cannot prune multi-objective trials nor name one best trial: optimise "
                "one objective, or save each trial yourself with BestWeightsTracker."
            )

    def _mode(self, study: optuna.Study) -> str:
        return "max" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "min"

    def _keep(self, study: optuna.Study, trials: Iterable[optuna.trial.FrozenTrial]) -> set[int]:
        """Numbers of the `keep_top_k` best completed trials; equal values: earlier first.

        Deliberately not "whichever trial the storage calls best": with equal
        values an RDB storage may name either, and two processes could then keep
        different ones and delete both. `_best` falls back to a kept trial with
        the same value.
        """
        complete = [(t.number, float(t.value)) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        return search.top_k(complete, self._mode(study), self.keep_top_k)

    def _best(self, study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, BestRecord]:
        try:
            trial = study.best_trial
        except ValueError as e:
            raise ValueError(
                f"Study {study.study_name!r} has no completed trial yet, so no best model. "
                "Run study.optimize first."
            ) from e
        candidates = [trial] + sorted(
            (t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
             if t.number != trial.number and t.value == trial.value),
            key=lambda t: t.number,
        )
        found = search.first_saved(candidates, self.trial_directory)  # a tie may have kept another trial
        if found is not None:
            return found
        raise FileNotFoundError(
            f"The best trial of study {study.study_name!r} (trial {trial.number}, value "
            f"{trial.value}) has no saved model in {self.trial_directory(trial)!r}. Did its "
            "objective save through StudyBest.tracker / StudyBest.callback into this directory, "
            "and return `tracker.best`?"
        )


def _check_returned_value(
    trial: optuna.trial.FrozenTrial, directory: str, record: BestRecord | None = None
) -> None:
    if record is None:
        try:
            record = loading.read_best(directory)
        except (FileNotFoundError, ValueError):
            return
    value = trial.value
    if value is None or math.isclose(value, record.value, rel_tol=1e-9, abs_tol=0.0) or (
        math.isinf(value) and value == record.value
    ):
        return
    warnings.warn(
        f"Trial {trial.number} returned {value}, but its saved best {record.monitor} is "
        f"{record.value} (epoch {record.epoch + 1}): the kept weights do not produce the "
        "trial's value. Return `tracker.best` (or `callback.best`) from the objective.",
        stacklevel=3,
    )


__all__ = ["StudyBest", "TrialRecord", "USER_ATTR_EPOCH", "USER_ATTR_PATH", "USER_ATTR_VALUE"]
