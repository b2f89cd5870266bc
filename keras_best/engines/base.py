"""The storage-engine protocol: how one on-disk format writes and loads a model.

An engine is told what to write and where; it decides nothing (the policy
does). Saving is split in two so that training never waits for the disk:
`engine.snapshot(model)` runs in the training thread and returns a
`Snapshot` whose `write(path)` makes a complete file (or directory) at a
local path, which the writer then fsyncs and renames into place. A
`detached` snapshot holds host copies only (no live Keras state), so the
writer may call `write` in its background thread; any other snapshot is
written at once, in the training thread.

Today's engines (`engine_for` picks one):
- `weights_h5.WeightsEngine`: `.weights.h5` files;
- `keras_archive.KerasEngine`: `.keras` archives (and legacy `.h5` models);
- `savedmodel.SavedModelEngine`: SavedModel exports with the weights beside them.

Example:
    >>> engine = engine_for("weights")  # doctest: +SKIP
    >>> snapshot = engine.snapshot(model)  # in the training thread  # doctest: +SKIP
    >>> snapshot.write("best.weights.h5")  # in any thread when `snapshot.detached`  # doctest: +SKIP
    >>> engine.load(model, "best.weights.h5")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Mapping

import numpy as np

from keras_best.engines import partial
from keras_best.storage import files


class Snapshot:
    """What an engine captured of a model, to be written once (or dropped).

    Attributes:
        detached: whether `write` may run in a background thread, after
            training has moved on (the snapshot holds host copies only).
        collective: whether every process of a job writes a part of the save
            (Orbax: its own shards): each calls `start(path)` in the training
            thread at the same temp path, and the chief's `write` waits for all.
        nbytes: the host memory the snapshot holds until `release()`.
        by_variable: `id(variable) -> host array` of the copies it holds, for
            other files of the same update to share (empty when none).
    """

    detached: bool = False
    collective: bool = False  # every process calls `start(path)`, at the same path, before `write`

    @property
    def nbytes(self) -> int:
        return 0

    @property
    def by_variable(self) -> Mapping[int, np.ndarray]:
        return {}

    def write(self, path: str) -> None:
        """Write the file (or directory) at the local `path`."""
        raise NotImplementedError

    def start(self, path: str) -> None:
        """A `collective` snapshot: start this process's part of the save at `path`."""

    def files(self, name: str) -> list[tuple[str, Callable[[str], None]]]:
        """The files of this save under `name`, one unit: `(file name,
        write(local_path))` pairs (a sharded set: its shards, then its index)."""
        return [(name, self.write)]

    def release(self) -> None:
        """Done with this snapshot, written or not (its host copies may be
        reused). Idempotent."""


class LiveSnapshot(Snapshot):
    """Not detached: `write(path)` calls `save(model, path)` on the live model,
    so it must run at once, in the training thread."""

    def __init__(self, model: Any, save: Callable[[Any, str], None]) -> None:
        self.model, self.save = model, save

    def write(self, path: str) -> None:
        self.save(self.model, path)


class Engine:
    """Writes and loads a model in one on-disk format.

    Attributes:
        format: the format's name (`keras_best.core.formats`: "weights",
            "keras" or "savedmodel"), as recorded in the run directory.
    """

    format: str = ""

    def snapshot(self, model: Any, stream: bool = False) -> Snapshot:
        """Capture `model` in the calling (training) thread; see `Snapshot`.
        With `stream`, hold no host copy of the model: the snapshot is not
        detached, and its `write` reads one variable at a time."""
        raise NotImplementedError

    def wait(self) -> None:
        """Wait until this process's part of its last save is written (collective
        saves); raise its error."""

    def weights_file(self, path: str) -> str:
        """The file inside a saved `path` that `model.load_weights` reads."""
        return path

    def load(self, model: Any, path: str, hint: str = "", skip_mismatch: bool = False,
             only: Any = None) -> list[partial.Mismatch]:
        """Load the weights saved at `path` (local or remote) into `model`; a
        damaged file raises `files.DamagedFileError` naming it (and `hint`:
        what to do instead). With `skip_mismatch` or `only` (see `partial`):
        the objects chosen that fit; returns the differences skipped."""
        if not skip_mismatch and only is None:
            files.load_weights(model, self.weights_file(path), hint)
            return []
        with files.reading(self.weights_file(path), hint) as local, self.saved_groups(local) as saved:
            return partial.load_groups(model, saved, skip_mismatch, only, what=path)

    def mismatches(self, model: Any, path: str, hint: str = "") -> list[partial.Mismatch]:
        """How `model` differs from what is saved at `path` (`[]`: it fits)."""
        with files.reading(self.weights_file(path), hint) as local, self.saved_groups(local) as saved:
            return partial.mismatches(model, saved)

    def saved_groups(self, local: str) -> ContextManager[partial.Groups]:
        """The groups of the weights file at the local `path`, object by object
        (`partial.Groups`): a `.weights.h5` file or a sharded set's index."""
        return partial.h5_groups(local)
