"""Public import path: `keras_best.keras_tuner` is `keras_best.integrations.keras_tuner` (which holds the code)."""

from keras_best.integrations.keras_tuner import (
    CHECKPOINT_NAME,
    KEEP_FILES,
    SearchBest,
    TunerRecord,
)

__all__ = ['CHECKPOINT_NAME', 'KEEP_FILES', 'SearchBest', 'TunerRecord']
