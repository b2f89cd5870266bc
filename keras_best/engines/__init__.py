"""Storage engines, one per on-disk form: `.weights.h5`, sharded `.weights.json` sets, the `.keras`
archive, SavedModel exports, Orbax checkpoint directories (imported only when used).
Each takes a snapshot of a model, writes it under a name (in the background when it holds host
copies only) and loads a saved name back into a model (the protocol is in `base`).

Example:
    >>> engine_for("weights").format
    'weights'
"""

from __future__ import annotations

from keras_best.core.formats import KERAS, ORBAX, WEIGHTS
from keras_best.engines.base import Engine
from keras_best.engines.keras_archive import KerasEngine
from keras_best.engines.savedmodel import SavedModelEngine
from keras_best.engines.sharded import ShardedWeightsEngine
from keras_best.engines.weights_h5 import WeightsEngine
from keras_best.storage.buffers import HostBuffers


def engine_for(fmt: str, filepath: str = "", buffers: HostBuffers | None = None,
               max_shard_size: float | None = None) -> Engine:
    """The engine of format `fmt` (`keras_best.core.formats`) for files named
    like `filepath`; its snapshots copy into (and are held in) `buffers` when
    given. Weights with `max_shard_size` (GB) are saved as sharded sets."""
    if fmt == ORBAX:
        from keras_best.engines.orbax import OrbaxEngine  # orbax-checkpoint only when used

        return OrbaxEngine()
    if fmt == KERAS:
        return KerasEngine(legacy_h5=str(filepath).endswith(".h5"), buffers=buffers)
    if fmt == WEIGHTS and max_shard_size is not None:
        return ShardedWeightsEngine(max_shard_size, buffers)
    if fmt == WEIGHTS:
        return WeightsEngine(buffers)
    return SavedModelEngine(buffers)
