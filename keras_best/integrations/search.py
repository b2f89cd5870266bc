"""Keep the top k trials' run directories of a search, safely across processes.

The engine behind `keras_best.integrations.optuna.StudyBest` and
`keras_best.integrations.keras_tuner.SearchBest`. A search directory holds one run
directory per trial and a shared record (`keras_best_study.json`, which ties
the directory to one search and lets `keras-best inspect` show its kept
trials). The search framework (the Optuna storage, the KerasTuner oracle) is
the source of truth: a finished trial's value never changes and the set of
finished trials only grows, so a trial that has fallen out of the best
`keep_top_k` can never come back and deleting it is always safe. Trials still
running are never touched. Sweeps hold a lock in the directory, are
idempotent, and never leave a half-deleted trial that looks complete: on a
local directory they move files away before deleting them; on an object store
(s3://, memory://) the trial's record goes first, and the lock is an object
created with a conditional write (`keras_best.storage.object_lock`).

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
from keras_best.storage import files, manifest, object_lock

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
    """A directory of trial run directories, of which `keep_top_k` remain.

    Args:
        directory: a local (or network-mounted) directory shared by every
            process of the search, or an s3:// (or memory://) URL.
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
        check_keep_top_k(keep_top_k)
        self.directory = directory
        self.keep_top_k = keep_top_k
        self.lock_timeout = lock_timeout
        self.owner = owner
        self.remote = files.is_remote(directory)
        if not self.remote:
            os.makedirs(directory, exist_ok=True)
            return
        if not object_lock.supported(directory):
            raise ValueError(
                f"{owner} locks its directory while cleaning up, and on a remote store that needs "
                "conditional writes, which keras-best does on s3:// (s3fs) and memory:// only. Use an "
                f"s3:// or a local (or network-mounted) directory. Received: directory={directory!r}"
            )
        files.reach(directory)  # the bucket and the credentials, before any trial trains

    def lock(self) -> SearchLock:
        """The directory's lock (a context manager; not re-entrant)."""
        return SearchLock(files.join(self.directory, LOCK_NAME), self.lock_timeout, self.owner)

    def claim(self, name: str, framework: str) -> None:
        """Tie the directory to the search `name` (call with the lock held).

        Raises `ValueError` when it already holds another search's models.
        """
        path = files.join(self.directory, STUDY_FILE)
        if files.exists(path):
            recorded = json.loads(files.read_bytes(path).decode("utf-8")).get("study_name")
            if recorded != name:
                raise ValueError(
                    f"{self.directory!r} holds the models of study {recorded!r}, not "
                    f"{name!r}. Use one {self.owner} directory per study."
                )
            return
        body = {"format": "keras_best_study", "version": 1, "study_name": name, "framework": framework}
        files.write_bytes_atomic(path, json.dumps(body).encode("utf-8"))  # on an object store: one PUT

    def sweep(self, doomed: Callable[[str], bool], keep_files: Iterable[str] = ()) -> list[str]:
        """Remove the trial directories whose name `doomed(name)` says (call with the lock held).

        Leftovers of an interrupted removal go first. `keep_files` names
        files a removed trial keeps (the framework's own small records, e.g.
        KerasTuner's `trial.json`); without any, the whole directory goes.
        Returns the directories removed.
        """
        keep_files = set(keep_files)
        removed = []
        if self.remote:  # no trash: a trial's record goes first (`remove`)
            try:
                listed = sorted(files.listdir(self.directory))
            except FileNotFoundError:  # an object store has no empty directory
                listed = []
            doomed_paths = [files.join(self.directory, n) for n in listed if not n.startswith(".") and doomed(n)]
            return [p for p in doomed_paths if self.remove(p, keep_files)]
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
        On a remote store nothing moves: the record is deleted first, then the rest.
        """
        if self.remote:
            return self._remove_remote(path, set(keep_files))
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

    def _remove_remote(self, path: str, keep_files: set[str]) -> bool:
        try:
            names = [n for n in files.listdir(path) if n not in keep_files]
        except FileNotFoundError:
            return False
        for n in sorted(names, key=lambda n: n != manifest.MANIFEST_NAME):  # the record first
            files.remove(files.join(path, n), missing_ok=True)
        return bool(names)


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
    """The lock of a search directory (across processes and threads): a lock file, or
    on a remote store a lock object (`object_lock.ObjectLock`)."""

    def __init__(self, path: str, timeout: float, owner: str = "SearchDirectory") -> None:
        self._lock: FileLock | object_lock.ObjectLock = (
            object_lock.ObjectLock(path, timeout) if files.is_remote(path)
            else FileLock(path, timeout=timeout, thread_local=False))
        self.path = path
        self.owner = owner

    def __enter__(self) -> SearchLock:
        try:
            self._lock.acquire()
        except (Timeout, TimeoutError) as e:
            raise TimeoutError(
                f"Could not lock {self.path} within {self._lock.timeout} s: another process "
                f"is cleaning up the search directory (or hangs holding the lock). Raise "
                f"`{self.owner}(lock_timeout=...)` or stop the other process."
            ) from e
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


__all__ = ["LOCK_NAME", "STUDY_FILE", "SearchDirectory", "SearchLock", "top_k", "trial_mode"]
