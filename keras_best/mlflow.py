"""Public import path: `keras_best.mlflow` is `keras_best.integrations.mlflow` (which holds the code)."""

from keras_best.integrations.mlflow import (
    MlflowLogger,
)

__all__ = ['MlflowLogger']
