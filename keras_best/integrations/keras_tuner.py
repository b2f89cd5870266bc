"""KerasTuner: the best models of a whole search, with bounded disk.

KerasTuner saves every trial's best epoch in place
(`<project>/trial_<id>/checkpoint.weights.h5`, a plain `save_weights`) and
keeps them all. `SearchBest.wrap(tuner)` makes each trial save through a
`BestCheckpoint` instead (atomic, NaN never best, early stopping with
`patience`, recorded in the trial's `keras_best.json`), and keeps the files of
only the search's `keep_top_k` best trials; the others are deleted as soon as
they fall out, safely across the processes of a distributed search:

```python
import keras_tuner
from keras_best.integrations.keras_tuner import SearchBest

tuner = keras_tuner.RandomSearch(build_model, objective="val_accuracy", max_trials=20,
                                 directory="runs", project_name="digits")
best = SearchBest(keep_top_k=3, patience=3)
best.wrap(tuner)
tuner.search(x, y, validation_data=(vx, vy), epochs=20)
models = tuner.get_best_models(3)        # from the kept trials
record = best.load_best(models[0])       # the weights behind the best trial's score
```

Works with every tuner (`RandomSearch`, `BayesianOptimization`, `Hyperband`,
a subclass with its own `run_trial` that passes `callbacks` on to `fit`). The
oracle is the source of truth: a trial is deleted only once it has completed
(or failed) and is outside the best `keep_top_k` (a Hyperband trial also only
once no later round can continue from it). Removed trials keep KerasTuner's
own small records (`trial.json`, `build_config.json`), so the tuner reloads.
`keras-best inspect <project dir>` lists the kept trials, best first.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import warnings
from typing import Any, Mapping

from keras_best.core.extras import install_hint

try:
    import keras_tuner
    from keras_tuner.src.engine import tuner_utils
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"keras_best.integrations.keras_tuner needs KerasTuner: {install_hint('keras-tuner', 'keras-tuner')}"
    ) from e

from keras_best.frontends import loading
from keras_best.frontends.callback import BestCheckpoint
from keras_best.frontends.loading import BestRecord
from keras_best.integrations import search
from keras_best.storage import files, manifest

CHECKPOINT_NAME = "checkpoint.weights.h5"  # where KerasTuner's load_model looks
KEEP_FILES = ("trial.json", "build_config.json")  # KerasTuner's own records of a trial
_TRIAL_DIR = re.compile(r"^trial_(.+)$")
_ALL = 1 << 30
_COMPLETED = "COMPLETED"
_DISCARDED = ("INVALID", "FAILED")


@dataclasses.dataclass(frozen=True)
class TunerRecord(BestRecord):
    """What `SearchBest.load_best` loaded: a `BestRecord` plus its trial.

    Attributes:
        trial_id: the KerasTuner trial's id.
        hyperparameters: the trial's hyper-parameter values.
    """

    trial_id: str = ""
    hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class SearchBest:
    """Keeps the models of a KerasTuner search's `keep_top_k` best trials.

    Args:
        keep_top_k: how many of the search's best trials keep their files.
        lock_timeout: seconds to wait for another process's cleanup.
        **checkpoint_options: `BestCheckpoint`'s options for every trial
            (`patience`, `min_delta`, `monitor`, `mode`, ...). `monitor`
            defaults to the tuner's objective, `mode` to its direction; a
            monitor that contradicts the direction is an error. `storage_options` (fsspec's
            arguments of a remote project directory's file system) apply to every trial.

    Example:

    ```python
    best = SearchBest(keep_top_k=3, patience=2)
    tuner = best.wrap(keras_tuner.Hyperband(build_model, objective="val_loss", max_epochs=9))
    ```
    """

    def __init__(self, keep_top_k: int = 1, lock_timeout: float = 300.0, **checkpoint_options: Any) -> None:
        for key in ("filepath", "resume", "save_best_only"):
            if key in checkpoint_options:
                raise ValueError(
                    f"SearchBest chooses `{key}` itself (each trial saves its best epoch into its "
                    f"own directory, where KerasTuner loads it); remove `{key}=`."
                )
        self.keep_top_k = search.check_keep_top_k(keep_top_k)
        self.lock_timeout = lock_timeout
        self.checkpoint_options = checkpoint_options
        self.tuner: Any = None
        self._search: search.SearchDirectory | None = None

    # ------------------------------------------------------------ front end
    def wrap(self, tuner: Any) -> Any:
        """Make `tuner` save each trial through a `BestCheckpoint` and keep the best trials.

        Checks the options against the tuner's objective at once (before any
        trial runs) and returns `tuner`.
        """
        if not isinstance(tuner, keras_tuner.Tuner):
            raise TypeError(f"Expected a `keras_tuner.Tuner`. Received: {type(tuner).__name__}")
        if self.tuner is not None:
            raise ValueError("This SearchBest already wraps a tuner; use one SearchBest per tuner.")
        if getattr(tuner, "_keras_best", None) is not None:
            raise ValueError("This tuner is already wrapped by a SearchBest.")
        if tuner.executions_per_trial != 1:
            raise ValueError(
                "SearchBest keeps one best epoch per trial; with several executions per trial "
                "KerasTuner averages them, and no saved model produces that score. Use "
                f"executions_per_trial=1. Received: executions_per_trial={tuner.executions_per_trial}"
            )
        objective = tuner.oracle.objective
        if objective.name in (
            "multi_objective", "default_objective"
        ):
            raise ValueError(
                "SearchBest needs a tuner with one objective (e.g. objective='val_loss'), to know "
                f"which epoch of a trial is its best. Received: objective={objective!r}"
            )
        self._mode = objective.direction
        monitor = self.checkpoint_options.get("monitor", objective.name)
        mode = search.trial_mode(
            objective.direction, monitor, self.checkpoint_options.get("mode", "auto"),
            search=f"The tuner {tuner.project_name!r}", noun="tuner",
            fix="Give the tuner objective=keras_tuner.Objective(" + repr(objective.name) + ", '{}')",
        )
        self._options = {**self.checkpoint_options, "monitor": monitor, "mode": mode}
        self._search = search.SearchDirectory(
            tuner.project_dir, self.keep_top_k, self.lock_timeout, owner="SearchBest",
            storage_options=self.checkpoint_options.get("storage_options"),
        )
        self.tuner = tuner
        tuner._keras_best = self
        _hook(tuner, "run_trial", self._run_trial)
        _hook(tuner, "_build_and_fit_model", self._build_and_fit_model)
        _hook(tuner, "on_trial_begin", self._on_trial_begin)
        _hook(tuner, "on_trial_end", self._on_trial_end)
        _hook(tuner, "on_search_end", self._on_search_end)
        _hook(tuner, "load_model", self._load_model)
        _hook(tuner, "get_best_models", self._get_best_models)
        return tuner

    # ----------------------------------------------------------------- reading
    @property
    def directory(self) -> str:
        """The tuner's project directory (where the trials' directories are)."""
        return self._wrapped().directory

    def trial_directory(self, trial: Any) -> str:
        """The run directory of `trial` (a `keras_tuner` `Trial` or its id)."""
        trial_id = trial if isinstance(trial, str) else trial.trial_id
        return os.path.join(self.directory, f"trial_{trial_id}")

    def best_path(self) -> str:
        """The file holding the best weights of the tuner's best trial."""
        return self._best()[1].path

    def load_best(self, model: Any) -> TunerRecord:
        """Load the weights of the best trial (those behind its score) into `model`.

        `model` must be built from the best trial's hyper-parameters (e.g.
        `tuner.hypermodel.build(tuner.get_best_hyperparameters()[0])`).
        """
        with self._wrapped().lock():
            trial, _ = self._best()
            record = loading.load_best(model, self.trial_directory(trial))
        return TunerRecord(**dataclasses.asdict(record), trial_id=trial.trial_id,
                           hyperparameters=dict(trial.hyperparameters.values))

    # ----------------------------------------------------------------- cleanup
    def cleanup(self, protect: bool = True) -> list[str]:
        """Delete the files of every finished trial outside the best `keep_top_k`.

        Trials still running are never touched, nor (with `protect`) a
        Hyperband trial that a later round may continue from. Safe to call
        from any process at any time; returns the directories cleaned.
        """
        directory = self._wrapped()
        trials = {t.trial_id: t for t in self.tuner.oracle.get_best_trials(_ALL)}
        ordered = sorted(trials.values(), key=_creation_order)
        keep = search.top_k(
            [(t.trial_id, t.score) for t in ordered if t.status == _COMPLETED], self._mode, self.keep_top_k
        )
        keep |= _continued_from(self.tuner.oracle, ordered) if protect else set()

        def doomed(name: str) -> bool:
            match = _TRIAL_DIR.match(name)
            trial = trials.get(match.group(1)) if match else None
            if trial is None:  # not a trial of the oracle (yet): never touched
                return False
            return trial.status in _DISCARDED or (trial.status == _COMPLETED and trial.trial_id not in keep)

        with directory.lock():
            directory.claim(self.tuner.project_name, framework="keras_tuner")
            return directory.sweep(doomed, keep_files=KEEP_FILES)

    # ---------------------------------------------------------------- internal
    def _wrapped(self) -> search.SearchDirectory:
        if self._search is None:
            raise ValueError("Call `SearchBest.wrap(tuner)` first.")
        return self._search

    def _best(self) -> tuple[Any, BestRecord]:
        self._wrapped()
        completed = [t for t in self.tuner.oracle.get_best_trials(self.keep_top_k) if t.status == _COMPLETED]
        if not completed:
            raise ValueError(f"The tuner {self.tuner.project_name!r} has no completed trial yet, so no "
                             "best model. Run tuner.search first.")
        best = completed[0]
        # Equal scores: the tuner may name either; the kept one is the earlier.
        found = search.first_saved(itertools.takewhile(lambda t: t.score == best.score, completed),
                                   self.trial_directory)
        if found is not None:
            return found
        raise FileNotFoundError(
            f"The best trial of tuner {self.tuner.project_name!r} (trial {best.trial_id}, score "
            f"{best.score}) has no saved model in {self.trial_directory(best)!r}. Was the tuner "
            "wrapped by SearchBest before its search, and does its run_trial pass `callbacks` to fit?"
        )

    def _checkpoint(self, trial: Any) -> _TrialCheckpoint:
        path = os.path.join(self.tuner.get_trial_dir(trial.trial_id), CHECKPOINT_NAME)
        return _TrialCheckpoint(path, save_best_only=True, keep_top_k=1, **self._options)

    def _run_trial(self, original: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        checkpoint = self._checkpoint(trial)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), checkpoint]
        result = original(trial, *args, **kwargs)
        if checkpoint.best is None:
            warnings.warn(
                f"Trial {trial.trial_id} saved no model: its run_trial did not pass `callbacks` on "
                f"to fit(), or no epoch logged {self._options['monitor']!r} with a finite value.",
                stacklevel=2,
            )
        return result

    def _build_and_fit_model(self, original: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        # KerasTuner's own checkpoint writes the weights in place: ours replaces it.
        kwargs["callbacks"] = [c for c in kwargs.get("callbacks") or []
                               if not isinstance(c, tuner_utils.SaveBestEpoch)]
        return original(trial, *args, **kwargs)

    def _on_trial_begin(self, original: Any, trial: Any) -> Any:
        self.cleanup()  # other processes' trials finished meanwhile
        return original(trial)

    def _on_trial_end(self, original: Any, trial: Any) -> Any:
        result = original(trial)
        self.cleanup()
        return result

    def _on_search_end(self, original: Any) -> Any:
        result = original()
        # No trial is created after this, so none can continue a Hyperband trial any more.
        self.cleanup(protect=False)
        return result

    def _load_model(self, original: Any, trial: Any) -> Any:
        directory = self.trial_directory(trial)
        if not files.exists(manifest.manifest_path(directory)):
            raise FileNotFoundError(
                f"Trial {trial.trial_id} keeps no model in {directory!r}: SearchBest keeps the "
                f"files of the search's {self.keep_top_k} best trials only (keep_top_k)."
            )
        hp = trial.hyperparameters.copy()
        hp.values.pop("tuner/trial_id", None)  # Hyperband would load the trial it continued from
        model = self.tuner._try_build(hp)
        if not model.built:
            from keras_tuner.src import utils

            model.build_from_config(utils.load_json(self.tuner._get_build_config_fname(trial.trial_id)))
        loading.load_best(model, directory)
        return model

    def _get_best_models(self, original: Any, num_models: int = 1) -> list[Any]:
        if num_models > self.keep_top_k:
            raise ValueError(
                f"SearchBest keeps the models of the search's {self.keep_top_k} best trials only "
                f"(keep_top_k={self.keep_top_k}). Received: num_models={num_models}"
            )
        return original(num_models)


class _TrialCheckpoint(BestCheckpoint):
    def __deepcopy__(self, memo: dict[int, Any]) -> _TrialCheckpoint:
        return self  # KerasTuner deep-copies the search's callbacks per execution: one trial, one record


def _hook(tuner: Any, name: str, replacement: Any) -> None:
    original = getattr(tuner, name)
    setattr(tuner, name, lambda *args, **kwargs: replacement(original, *args, **kwargs))


def _creation_order(trial: Any) -> tuple[int, Any]:
    try:
        return int(trial.trial_id), ""
    except ValueError:
        return _ALL, trial.trial_id


def _continued_from(oracle: Any, trials: list[Any]) -> set[str]:
    """Hyperband: the trials a later round may still continue from (their weights are loaded).

    In the oracle's process, those in its unfinished brackets; in a worker of a
    distributed search (the brackets are the chief's), every trial not in the
    last round of its bracket.
    """
    brackets = getattr(oracle, "_brackets", None)
    if brackets is not None:
        return {entry["id"] for b in brackets for round_ in b["rounds"] for entry in round_}
    return {t.trial_id for t in trials
            if "tuner/round" in t.hyperparameters.values
            and t.hyperparameters.values["tuner/round"] < t.hyperparameters.values.get("tuner/bracket", 0)}


__all__ = ["CHECKPOINT_NAME", "KEEP_FILES", "SearchBest", "TunerRecord"]
