"""Keep the top k trials' run directories of a search, safely across processes.

The engine behind `keras_best.integrations.optuna.StudyBest` and
`keras_best.integrations.keras_tuner.SearchBest`. A search directory holds one run
directory per trial and a shared record (`keras_best_study.json`, which ties
the directory to one search and lets `keras-best inspect` show its kept
trials). The search framework (the Optuna storage, the KerasTuner oracle) is
the source of truth: a finished trial's value never changes and the set of
finished trials only grows, so a trial that has fallen out of the best
`keep_top_k` can never come back and deleting it is always safe. Trials still
running are never touched. Sweeps hold a lock file in the directory, are
idempotent, and move files away before deleting them, so a crash half-way
leaves no half-deleted trial that looks complete.

```python
search = SearchDirectory("runs/study", keep_top_k=3, owner="StudyBest")
with search.lock():
    search.claim("my-study", framework="optuna")
    keep = top_k([(0, 0.3), (1, 0.2)], "min", 1)          # {1}
    search.sweep(lambda name: name == "trial-00000")
```
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from typing import Any, Callable, Hashable, Iterable, Mapping

from filelock import FileLock, Timeout

from keras_best.core import names, options
from keras_best.core.objective import check_mode, infer_mode
from keras_best.frontends import loading
from keras_best.storage import files, manifest

STUDY_FILE = names.STUDY_FILE
LOCK_NAME = ".keras_best_study.lock"
TRASH_PREFIX = ".kb-trash-"


def check_keep_top_k(keep_top_k: Any) -> int:
    """A search's `keep_top_k`: an int >= 1, or a `ValueError`."""
    if not isinstance(keep_top_k, int) or isinstance(keep_top_k, bool) or keep_top_k < 1:
        raise ValueError(f"`keep_top_k` must be an int >= 1. Received: keep_top_k={keep_top_k!r}")
    return keep_top_k


def first_saved(trials: Iterable[Any], directory_of: Callable[[Any], str]) -> tuple[Any, loading.BestRecord] | None:
    """The first of `trials` whose directory holds a recorded best, with that
    record (`None` when none does): of trials tied on the best score, the
    one whose files the search kept."""
    for trial in trials:
        try:
            return trial, loading.read_best(directory_of(trial))
        except FileNotFoundError:
            continue
    return None


class SearchDirectory:
    """A local directory of trial run directories, of which `keep_top_k` remain.

    Args:
        directory: a local (or network-mounted) directory shared by every
            process of the search.
        keep_top_k: how many of the search's best trials keep their files.
        lock_timeout: seconds to wait for another process's sweep.
        owner: the front end's name, for error messages.
        storage_options: fsspec's arguments of a remote directory's file system.
    """

    def __init__(self, directory: str | os.PathLike, keep_top_k: int = 1, lock_timeout: float = 300.0,
                 owner: str = "SearchDirectory", storage_options: Mapping[str, Any] | None = None) -> None:
        directory = files.fspath(directory)
        if not isinstance(directory, str) or not directory:
            raise ValueError(f"`directory` must be a non-empty path. Received: directory={directory!r}")
        files.configure(directory, options.storage_options(storage_options))  # its trials' directories too
        if files.is_remote(directory):
            raise ValueError(
                f"{owner} needs a local or network-mounted directory (it locks it while "
                f"cleaning up); remote URLs are not supported. Received: directory={directory!r}"
            )
        check_keep_top_k(keep_top_k)
        self.directory = directory
        self.keep_top_k = keep_top_k
        self.lock_timeout = lock_timeout
        self.owner = owner
        os.makedirs(directory, exist_ok=True)

    def lock(self) -> SearchLock:
        """The directory's lock (a context manager; not re-entrant)."""
        return SearchLock(os.path.join(self.directory, LOCK_NAME), self.lock_timeout, self.owner)

    def claim(self, name: str, framework: str) -> None:
        """Tie the directory to the search `name` (call with the lock held).

        Raises `ValueError` when it already holds another search's models.
        """
        path = os.path.join(self.directory, STUDY_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f).get("study_name")
            if recorded != name:
                raise ValueError(
                    f"{self.directory!r} holds the models of study {recorded!r}, not "
                    f"{name!r}. Use one {self.owner} directory per study."
                )
            return
        body = {"format": "keras_best_study", "version": 1, "study_name": name, "framework": framework}
        tmp = os.path.join(self.directory, files.tmp_path(STUDY_FILE))
        files.write_durably(tmp, lambda p: _write_json(p, body))
        files.replace(tmp, path)

    def sweep(self, doomed: Callable[[str], bool], keep_files: Iterable[str] = ()) -> list[str]:
        """Remove the trial directories whose name `doomed(name)` says (call with the lock held).

        Leftovers of an interrupted removal go first. `keep_files` names
        files a removed trial keeps (the framework's own small records, e.g.
        KerasTuner's `trial.json`); without any, the whole directory goes.
        Returns the directories removed.
        """
        keep_files = set(keep_files)
        removed = []
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.startswith(TRASH_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if name.startswith(".") or not os.path.isdir(path) or not doomed(name):
                continue
            if self.remove(path, keep_files):
                removed.append(path)
        return removed

    def remove(self, path: str, keep_files: Iterable[str] = ()) -> bool:
        """Move `path` (or its files but `keep_files`) away at once, then delete them.

        The record (`keras_best.json`) moves first, so an interrupted removal
        never leaves a trial that looks complete. Returns whether anything went.
        """
        trash = os.path.join(self.directory, f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
        keep_files = set(keep_files)
        if not keep_files:
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return False
            shutil.rmtree(trash, ignore_errors=True)
            return True
        try:
            names = sorted(os.listdir(path), key=lambda n: n != manifest.MANIFEST_NAME)
        except FileNotFoundError:
            return False
        names = [n for n in names if n not in keep_files]
        if not names:
            return False
        os.makedirs(trash)
        for n in names:
            try:
                os.rename(os.path.join(path, n), os.path.join(trash, n))
            except FileNotFoundError:
                continue
        shutil.rmtree(trash, ignore_errors=True)
        return True


def top_k(finished: Iterable[tuple[Hashable, float]], mode: str, k: int) -> set[Hashable]:
    """The keys of the `k` best `(key, value)` pairs in `mode` ("min"/"max").

    Given in the order the trials were created: with equal values the earlier
    one ranks first, so every process agrees and a trial that has fallen out
    never comes back. NaN (and None) values rank last.

    >>> sorted(top_k([("a", 0.3), ("b", 0.1), ("c", float("nan")), ("d", 0.1)], "min", 2))
    ['b', 'd']
    """
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(
        ((i, key, value) for i, (key, value) in enumerate(finished)),
        key=lambda t: (t[2] is None or math.isnan(t[2]), 0.0 if t[2] is None or math.isnan(t[2])
                       else sign * float(t[2]), t[0]),
    )
    return {key for _, key, _ in ranked[:k]}


def trial_mode(direction: str, monitor: Any, mode: Any, search: str, fix: str, noun: str = "search") -> Any:
    """The trial checkpoint's `mode` in a search that keeps the `direction` ("min"/"max") end.

    An error (before anything trains) when the monitor contradicts the
    search's direction. `search` names it in the message ("The study 's'"),
    `fix` is how to change the search's direction ("Create the study with
    direction='maximize'"; `{}` is replaced by min/max). With several
    monitored metrics (a list), only the primary one is checked and `mode` is
    passed on as given; a score function gets the search's direction unless
    `mode` says otherwise.
    """
    several = not isinstance(monitor, str) and not callable(monitor)
    primary = (list(monitor) or ["val_loss"])[0] if several else monitor
    given = mode if isinstance(mode, str) else (list(mode) or ["auto"])[0]
    check_mode(given)
    if given == "auto":
        try:
            given = infer_mode(primary) if isinstance(primary, str) else direction
        except ValueError:
            return mode if several else direction
        hint = f"pass mode={direction!r} if the {noun} is right"
    else:
        hint = f"pass mode={direction!r}"
    if given != direction:
        verb = "minimizes" if direction == "min" else "maximizes"
        raise ValueError(
            f"{search} {verb} its objective, but the trial's checkpoint would keep the "
            f"{'lowest' if given == 'min' else 'highest'} {primary!r}: the saved model would not be "
            f"the one the {noun} ranks. {fix.format(given)}, or {hint}."
        )
    return mode if several or not isinstance(mode, str) else given


class SearchLock:
    """The lock file of a search directory (across processes and threads)."""

    def __init__(self, path: str, timeout: float, owner: str = "SearchDirectory") -> None:
        self._lock = FileLock(path, timeout=timeout, thread_local=False)
        self.path = path
        self.owner = owner

    def __enter__(self) -> SearchLock:
        try:
            self._lock.acquire()
        except Timeout as e:
            raise TimeoutError(
                f"Could not lock {self.path} within {self._lock.timeout} s: another process "
                f"is cleaning up the search directory (or hangs holding the lock). Raise "
                f"`{self.owner}(lock_timeout=...)` or stop the other process."
            ) from e
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def _write_json(path: str, body: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f)


__all__ = ["LOCK_NAME", "STUDY_FILE", "SearchDirectory", "SearchLock", "top_k", "trial_mode"]
