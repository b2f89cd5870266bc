"""Public import path: `keras_best.plot` is `keras_best.cli.plot` (which holds the code)."""

from keras_best.cli.plot import (
    MissingDependency,
    plot_compare,
    plot_run,
)

__all__ = ['MissingDependency', 'plot_compare', 'plot_run']
