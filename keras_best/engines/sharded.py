"""Sharded `.weights.json` sets: an index plus `*_NNNNN.weights.h5` shards, as
Keras 3.10+ writes them with `model.save_weights(path, max_shard_size=GB)`.

The training thread takes the same host copies as the `.weights.h5` engine
(`weights_h5.WeightsWriter`) and splits them into shards by bytes exactly as
Keras's `ShardedH5IOStore` does (a new shard when the running size would pass
`max_shard_size` GB; a variable larger than that is refused with Keras's
message). Each shard and the index is then one file of the save
(`Snapshot.files`), written in the background under a temp name and renamed
with the others in one journaled transaction (`storage.journal`): a crash
leaves the old set or the new one, never a mix. Stock `model.load_weights(index)`
reads the set.

Example:
    >>> engine = ShardedWeightsEngine(max_shard_size=0.5)  # doctest: +SKIP
    >>> engine.snapshot(model).files("best.weights.json")  # doctest: +SKIP
    [('best_00000.weights.h5', <write>), ..., ('best.weights.json', <write>)]
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import numpy as np

from keras_best.engines.base import LiveSnapshot, Snapshot
from keras_best.engines.weights_h5 import OnWeights, WeightsEngine, WeightsSnapshot, fill_groups
from keras_best.storage import files, staging

# Bits per value by dtype name, as Keras's `dtype_utils.DTYPE_TO_SIZE` counts them.
_BITS = {**{f"{k}{i}": i for k in ("float", "int", "uint") for i in (8, 16, 32, 64)}, "bfloat16": 16, "bool": 1}
_BITS.pop("float8")

Groups = list[tuple[str, Any, list[tuple[str, np.ndarray]]]]


def split(groups: Groups, max_shard_size: float) -> tuple[list[Groups], dict[str, Any]]:
    """`groups` (as `WeightsSnapshot.groups`) cut into shards the way
    `ShardedH5IOStore` cuts them, and the index's JSON data."""
    limit = float(max_shard_size) * 1024**3
    shards: list[Groups] = [[]]
    current, total = 0.0, 0
    weight_map: dict[str, Any] = {}
    for path, attrs, entries in groups:
        group = None
        if attrs:  # Keras creates a group with attributes at once, in the current shard
            group = (path, attrs, [])
            shards[-1].append(group)
        for key, value in entries:
            bits = _BITS.get(value.dtype.name)
            if bits is None:
                raise ValueError(f"Invalid dtype: {value.dtype.name}")
            size = int(np.prod(value.shape)) * bits / 8
            total += size
            if size > limit:
                raise ValueError(
                    f"The size of {key} is {_readable(size)} which exceeds the maximum shard size "
                    f"{_readable(limit)}. You can increase the `max_shard_size` parameter to accommodate the size."
                )
            current += size
            if current > limit:
                shards.append([])
                current, group = size, None
            if group is None:  # ...and one without at its first variable in each shard
                group = (path, None, [])
                shards[-1].append(group)
            group[2].append((key, value))
            _add(weight_map, f"/{path}/vars" if path else "/vars", len(shards) - 1)
    return shards, {"metadata": {"total_size": total}, "weight_map": weight_map}


def _add(weight_map: dict[str, Any], group: str, shard: int) -> None:
    """As `ShardedH5IOStore.__setitem__`: a group's first variable names its
    shard; from its second on, the entry is the list of its shards."""
    if group not in weight_map:
        weight_map[group] = shard
        return
    if not isinstance(weight_map[group], list):
        weight_map[group] = [weight_map[group]]
    if shard not in weight_map[group]:
        weight_map[group].append(shard)


def _readable(size: float) -> str:
    """Keras's `readable_memory_size`."""
    units = ["B", "KB", "MB", "GB", "TB", "PB"]
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:.2f} {units[i]}"


class ShardedSnapshot(OnWeights):
    """A `WeightsSnapshot` written as a sharded set: one file per shard, the index last."""

    def __init__(self, weights: WeightsSnapshot, max_shard_size: float) -> None:
        super().__init__(weights)
        self.shards, self.index = split(weights.groups, max_shard_size)

    def files(self, name: str) -> list[tuple[str, Callable[[str], None]]]:
        named = {i: files.shard_name(name, i) for i in range(len(self.shards))}
        index = dict(self.index, weight_map={
            k: [named[i] for i in v] if isinstance(v, list) else named[v] for k, v in self.index["weight_map"].items()
        })
        text = json.dumps(index, indent=4).encode("utf-8")
        out: list[tuple[str, Callable[[str], None]]] = [
            (named[i], lambda path, g=groups: files.write_h5(path, lambda f: fill_groups(f, g)))
            for i, groups in enumerate(self.shards)
        ]
        return out + [(name, lambda path: files.write_new_file(path, text))]

    def write(self, path: str) -> None:
        raise TypeError("A sharded set is several files: write each of `files(name)`.")


class LiveShardedSnapshot(Snapshot):
    """A model saved with its own `save_weights(..., max_shard_size=)` in the
    training thread (when its layout cannot be captured), into a scratch
    directory; its files are copied from there."""

    def __init__(self, model: Any, max_shard_size: float) -> None:
        self.model, self.max_shard_size = model, max_shard_size
        self.scratch: str | None = None

    def files(self, name: str) -> list[tuple[str, Callable[[str], None]]]:
        self.release()
        self.scratch = staging.mkdtemp()  # a kill leaves it to the next start (`staging`)
        self.model.save_weights(os.path.join(self.scratch, name), max_shard_size=self.max_shard_size)
        made = files.members(self.scratch, name)
        return [(m, lambda path, m=m: shutil.copyfile(os.path.join(self.scratch, m), path)) for m in made]

    def release(self) -> None:
        scratch, self.scratch = self.scratch, None
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class ShardedWeightsEngine(WeightsEngine):
    """`.weights.json` sets of shards of at most `max_shard_size` GB each."""

    def __init__(self, max_shard_size: float, buffers: Any = None) -> None:
        super().__init__(buffers)
        self.max_shard_size = max_shard_size

    def snapshot(self, model: Any, stream: bool = False) -> Snapshot:
        snap = super().snapshot(model, stream)
        if isinstance(snap, LiveSnapshot):
            return LiveShardedSnapshot(model, self.max_shard_size)
        assert isinstance(snap, WeightsSnapshot)
        try:
            return ShardedSnapshot(snap, self.max_shard_size)
        except BaseException:
            snap.release()
            raise
