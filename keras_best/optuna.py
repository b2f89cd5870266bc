"""Public import path: `keras_best.optuna` is `keras_best.integrations.optuna` (which holds the code)."""

from keras_best.integrations.optuna import (
    USER_ATTR_EPOCH,
    USER_ATTR_PATH,
    USER_ATTR_VALUE,
    StudyBest,
    TrialRecord,
)

__all__ = ['StudyBest', 'TrialRecord', 'USER_ATTR_EPOCH', 'USER_ATTR_PATH', 'USER_ATTR_VALUE']
