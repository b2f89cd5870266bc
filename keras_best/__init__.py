"""keras-best: keep the best Keras model while it trains.

```python
from keras_best import BestWeightsTracker, BestCheckpoint, load_best
```

The public names are imported on first use, so `import keras_best` (and the
`keras-best inspect` command) does not pay for importing Keras/TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "AverageRecord": "keras_best.frontends.average",
    "BestCheckpoint": "keras_best.frontends.callback",
    "BestRecord": "keras_best.frontends.loading",
    "BestWeightsTracker": "keras_best.frontends.tracker",
    "Decision": "keras_best.core.monitor",
    "Preempted": "keras_best.runner.preemption",
    "RunDirectoryLocked": "keras_best.storage.lock",
    "SaveError": "keras_best.frontends.tracker",
    "StopReason": "keras_best.core.monitor",
    "average_best": "keras_best.frontends.average",
    "load_best": "keras_best.frontends.loading",
}

__all__ = [
    "AverageRecord",
    "BestCheckpoint",
    "BestRecord",
    "BestWeightsTracker",
    "Decision",
    "Preempted",
    "RunDirectoryLocked",
    "SaveError",
    "StopReason",
    "average_best",
    "load_best",
    "__version__",
]

if TYPE_CHECKING:
    from keras_best.core.monitor import Decision, StopReason
    from keras_best.frontends.average import AverageRecord, average_best
    from keras_best.frontends.callback import BestCheckpoint
    from keras_best.frontends.loading import BestRecord, load_best
    from keras_best.frontends.tracker import BestWeightsTracker, SaveError
    from keras_best.runner.preemption import Preempted
    from keras_best.storage.lock import RunDirectoryLocked


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_best' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
