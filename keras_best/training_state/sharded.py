"""A training state saved through Orbax: each process writes its own shards (a model-parallel run).

The state is a directory (`keras_best_last.orbax`, `keras_best_state-0003.orbax`):

- `0/`: one Orbax step whose "pytree" holds the variables of every
  `Variables` part (the model's weights, its optimizers', `state=` models and
  seeds) as the device arrays they are, sharded or not: every process calls
  `start` and writes the shards it holds, nothing is gathered on one host;
- `host.h5`: what the host holds, written by the chief once every process's
  shards are committed: the state file of `keras_best.training_state.state`
  with the other parts (random state, `fit()`'s position and metrics, the other
  callbacks, `state=` objects) whole, and for each `Variables` part its group
  without datasets (its attrs: the count, and "orbax": its key in the pytree).

Loading reads `host.h5` with every part's own `read` (the same checks: counts,
shapes from Orbax's metadata, optimizers built first), then one Orbax restore
(every process) reads each variable onto the sharding of the live variable it
goes to: the current layout, whatever mesh saved it.

Example:
    >>> taken = snapshot(parts, buffers, 3, None, "runs/x")  # doctest: +SKIP
    >>> taken.add_to(txn, "keras_best_last.orbax")  # every process: Orbax starts now  # doctest: +SKIP
    >>> epoch, step = read("runs/x/keras_best_last.orbax", parts).assign()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from keras_best.core.names import shared_tmp_path
from keras_best.storage import files, orbax
from keras_best.storage.buffers import HostBuffers
from keras_best.storage.writer import Transaction
from keras_best.training_state import state
from keras_best.training_state.parts import Variables
from keras_best.training_state.state import StatePart, StateSnapshot

HOST_NAME = "host.h5"
ORBAX_KEY = "orbax"  # the attr of a Variables part's group: its key in the Orbax pytree


class DeviceValues:
    """Lends the variables' own values (device arrays) where `HostBuffers` lends host copies."""

    def copies(self, variables: list[Any], reuse: Mapping[int, np.ndarray] | None = None) -> list[Any]:
        return [v.value for v in variables]


class _HostSide:
    """A `Variables` part as `host.h5` holds it: its group's attrs, its arrays in Orbax."""

    def __init__(self, part: Variables, key: str, arrays: set[str]) -> None:
        self.part, self.name, self.key, self.arrays = part, part.name, key, arrays

    def write(self, group: Any, copies: Mapping[str, Any]) -> None:
        group.attrs[ORBAX_KEY] = self.key
        self.part.write(_Group(group, self.arrays), copies)


class _Group:
    """An h5 group whose datasets named in `arrays` are in the Orbax step: not
    written; read as `_Deferred` (their shape from Orbax's metadata)."""

    def __init__(self, group: Any, arrays: Mapping[str, Any] | set[str], key: str = "") -> None:
        self.group, self.arrays, self.key, self.attrs = group, arrays, key, group.attrs

    def create_dataset(self, name: str, data: Any) -> None:
        if name not in self.arrays:
            self.group.create_dataset(name, data=data)

    def __getitem__(self, name: str) -> Any:
        if name in self.arrays:
            return _Deferred(self.key, name, self.arrays[name])
        return self.group[name]


@dataclasses.dataclass(frozen=True)
class _Deferred:
    """A variable's saved value, read by the one Orbax restore after every part is checked."""

    key: str
    name: str
    meta: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta.shape)

    def __getitem__(self, index: Any) -> _Deferred:
        return self


@dataclasses.dataclass
class ShardedStateSnapshot:
    """A training state for one epoch (and step): the device arrays Orbax saves, the host part's copies."""

    save: orbax.AsyncSave
    host: StateSnapshot
    directory: str

    @property
    def arrays(self) -> list[np.ndarray]:
        """The host arrays it holds (Orbax holds the device arrays' host copies itself)."""
        return [a for a in self.host.arrays if isinstance(a, np.ndarray)]

    def add_to(self, txn: Transaction, rel: str, write_now: Any = None) -> None:
        """Start Orbax's save now (every process, at the same temp name); have the chief's `txn`
        wait for it, write `host.h5` and rename the directory to `rel`."""
        tmp_rel = shared_tmp_path(rel, f"{rel}|{self.host.epoch}|{self.host.step}")
        self.save.start(files.join(self.directory, tmp_rel))
        txn.started.append(tmp_rel)
        txn.done.append((tmp_rel, lambda committed: self.host.buffers.release(self.arrays)))
        txn.jobs.append((self.write, tmp_rel))  # dropped on non-chief workers
        txn.renames.append((tmp_rel, rel))

    def write(self, path: str) -> None:
        """Wait for every process's shards, then write `host.h5` into the state directory `path`."""
        self.save.wait()
        self.host.write(os.path.join(path, HOST_NAME))


def snapshot(parts: Sequence[StatePart], buffers: HostBuffers, epoch: int, step: int | None,
             directory: str) -> ShardedStateSnapshot:
    """The variables' device arrays and the other parts' host copies (in the training thread)."""
    tree: dict[str, Any] = {}
    taken: list[tuple[Any, Mapping[str, Any]]] = []
    device = DeviceValues()
    for i, part in enumerate(parts):
        if not isinstance(part, Variables):
            taken.append((part, part.copies(buffers, None)))
            continue
        key, copies = f"part{i}", dict(part.copies(device, None))
        arrays = {n: a for n, a in copies.items() if not isinstance(a, np.ndarray)}
        if arrays:
            tree[key] = {f"v{n}": a for n, a in arrays.items()}
        taken.append((_HostSide(part, key, set(arrays)), {**copies, **{n: None for n in arrays}}))
    state.check_names(parts)
    host = StateSnapshot(tuple(taken), epoch, step, buffers)
    return ShardedStateSnapshot(orbax.AsyncSave({"pytree": tree}), host, directory)


def read(path: str, parts: Sequence[StatePart]) -> state.Loaded:
    """Read and check every part of the state directory `path`, then restore its
    variables onto the live variables' shardings (every process); assign nothing."""
    import jax

    hint = " Pass resume=False to start a new run in that directory, or restore it from a copy."
    step, saved = orbax.metadata(path, hint)
    leaves = {k: {n[1:]: m for n, m in tree.items()} for k, tree in saved.items()}

    def wrap(group: Any, part: StatePart) -> Any:  # a Variables part's arrays are in the Orbax step
        if group is None or not isinstance(part, Variables):
            return group
        key = str(group.attrs.get(ORBAX_KEY, ""))
        return _Group(group, leaves.get(key, {}), key)

    loaded = state.read(os.path.join(path, HOST_NAME), parts, wrap)
    abstract = {k: {f"v{n}": orbax.placeholder() for n in tree} for k, tree in leaves.items()}
    for part, values in loaded.parts:
        for i, value in enumerate(values if isinstance(values, list) else ()):
            if isinstance(value, _Deferred):
                live = part.variables[i]
                abstract[value.key][f"v{value.name}"] = jax.ShapeDtypeStruct(
                    value.shape, value.meta.dtype, sharding=live.value.sharding)
    restored = orbax.restore(step, abstract) if abstract else {}
    for _, values in loaded.parts:
        for i, value in enumerate(values if isinstance(values, list) else ()):
            if isinstance(value, _Deferred):
                values[i] = restored[value.key][f"v{value.name}"]
    return loaded
