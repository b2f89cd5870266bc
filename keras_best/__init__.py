"""keras-best: keep the best Keras model while it trains.

```python
from keras_best import BestWeightsTracker, BestCheckpoint, load_best
```
"""

from keras_best.callback import BestCheckpoint
from keras_best.loading import BestRecord, load_best
from keras_best.lock import RunDirectoryLocked
from keras_best.monitor import Decision, StopReason
from keras_best.tracker import BestWeightsTracker, SaveError

__version__ = "0.1.0"

__all__ = [
    "BestCheckpoint",
    "BestRecord",
    "BestWeightsTracker",
    "Decision",
    "RunDirectoryLocked",
    "SaveError",
    "StopReason",
    "load_best",
    "__version__",
]
