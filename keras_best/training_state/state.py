"""The resumable training state: one h5 file made of named parts.

A state is a list of `StatePart`s (today's: `keras_best.training_state.parts`),
each one group of the file; the file's attrs hold the epoch and step. Saving
goes in two steps: `snapshot` takes every part's host copies in the training
thread, and `StateSnapshot.write` writes them (in the writer thread, from host
arrays only). `load` reads and checks every part before it assigns any, so a
file that is damaged or does not fit changes nothing.

Example (a part of your own beside today's):

    class Counter:
        name = "counter"

        def __init__(self, holder):
            self.holder = holder

        def copies(self, buffers, reuse):
            return {"value": np.array(self.holder.value)}

        def write(self, group, copies):
            group.create_dataset("value", data=copies["value"])

        def read(self, group, where):
            if group is None:
                raise ValueError(f"{where} holds no counter.")
            return int(group["value"][()])

        def assign(self, value):
            self.holder.value = value

    state.load(path, [*parts.for_model(model, optimizer), Counter(holder)])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

import h5py
import numpy as np

from keras_best.storage import files
from keras_best.storage.buffers import HostBuffers, Streamed
from keras_best.storage.writer import Transaction


class StatePart(Protocol):
    """A named part of the training state: the group `name` of the state file."""

    name: str

    def copies(self, buffers: HostBuffers, reuse: Mapping[int, np.ndarray] | None) -> Mapping[str, np.ndarray]:
        """Host copies of what the part holds, by dataset name (training thread).
        Variables are copied with `buffers.copies(variables, reuse)`, so a copy
        the best file's snapshot already took (`reuse`) is shared."""

    def write(self, group: h5py.Group, copies: Mapping[str, np.ndarray]) -> None:
        """Write `copies` into the part's (new, empty) group (writer thread)."""

    def read(self, group: h5py.Group | None, where: str) -> Any:
        """Read the part's group (`None` when the file has none) and check it
        against the live objects; raise a `ValueError` naming `where` when it
        does not fit. Assigns nothing: returns what `assign` takes."""

    def assign(self, values: Any) -> None:
        """Put back what `read` returned."""


@dataclasses.dataclass(frozen=True)
class StateSnapshot:
    """Host copies of every part of a state, for one epoch (and step)."""

    parts: tuple[tuple[StatePart, Mapping[str, np.ndarray]], ...]
    epoch: int
    step: int | None
    buffers: HostBuffers | Streamed

    @property
    def arrays(self) -> list[np.ndarray]:
        """Every host array of the snapshot."""
        return [a for _, copies in self.parts for a in copies.values()]

    def add_to(self, txn: Transaction, rel: str, write_now: Callable[[str, Callable[[str], None]], None] | None
               = None) -> None:
        """Have `txn` write the state file `rel` (the writer writes a temp file,
        renamed on commit); the host copies go back to the pool once it is written.
        With `write_now(tmp_rel, write)`, the temp file is written at once instead
        (a streamed state: its variables are read as they are written)."""
        tmp_rel = files.tmp_path(rel)
        if write_now is not None:
            write_now(tmp_rel, self.write)
        else:
            txn.done.append((tmp_rel, lambda committed: self.buffers.release(self.arrays)))
            txn.jobs.append((self.write, tmp_rel))  # dropped on non-chief workers (nothing to read)
        txn.renames.append((tmp_rel, rel))

    def write(self, path: str) -> None:
        """Write the state file at the local `path`."""
        files.write_h5(path, self._fill)

    def _fill(self, f: Any) -> None:
        f.attrs["epoch"] = self.epoch
        f.attrs["step"] = -1 if self.step is None else self.step
        for part, copies in self.parts:
            part.write(f.create_group(part.name), copies)


def snapshot(parts: Sequence[StatePart], buffers: HostBuffers | Streamed, reuse: Mapping[int, np.ndarray] | None,
             epoch: int, step: int | None) -> StateSnapshot:
    """Host copies of every part (in the training thread)."""
    check_names(parts)
    return StateSnapshot(tuple((part, part.copies(buffers, reuse)) for part in parts), epoch, step, buffers)


def resume(path: str, parts: Sequence[StatePart]) -> tuple[int, int]:
    """`load` the state file `path`; return where training goes on: (epoch,
    step) of the next batch (a state saved mid-epoch continues in that epoch)."""
    epoch, step = load(path, parts)
    return (epoch + 1, 0) if step is None else (epoch, step + 1)


def load(path: str, parts: Sequence[StatePart]) -> tuple[int, int | None]:
    """Read and check every part of the state file `path`, then assign them
    all; return (epoch, step).

    When the file is damaged or a part does not fit, nothing is assigned (the
    model keeps its weights)."""
    return read(path, parts).assign()


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What `read` took from a state file, checked and not assigned yet."""

    parts: tuple[tuple[StatePart, Any], ...]
    epoch: int
    step: int | None

    def assign(self) -> tuple[int, int | None]:
        """Assign every part; return (epoch, step)."""
        for part, value in self.parts:
            part.assign(value)
        return self.epoch, self.step


def read(path: str, parts: Sequence[StatePart], wrap: Callable[[Any, StatePart], Any] | None = None) -> Loaded:
    """Read and check every part of the state file `path`; assign nothing (a
    Keras optimizer that is not built yet is built, for its slots to be checked).
    `wrap(group, part)`: what the part reads instead of its h5 group (a sharded state's)."""
    check_names(parts)
    wrap = wrap or (lambda group, part: group)
    try:
        with files.local_copy(path) as local, h5py.File(local, "r") as f:
            values = [part.read(wrap(f.get(part.name), part), path) for part in parts]
            step = int(f.attrs["step"])
            epoch = int(f.attrs["epoch"])
    except (OSError, KeyError, TypeError) as e:
        raise files.DamagedFileError(
            f"Cannot resume from {path}: the training state there is damaged or incomplete ({e}). "
            "Pass resume=False to start a new run in that directory, or restore the file from a copy."
        ) from e
    return Loaded(tuple(zip(parts, values)), epoch, None if step < 0 else step)


def check_names(parts: Sequence[StatePart]) -> None:
    names = [part.name for part in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"The parts of a training state need distinct names. Received: {names}")
