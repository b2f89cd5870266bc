"""Public import path: `keras_best.loading` is `keras_best.frontends.loading` (which holds the code)."""

from keras_best.frontends.loading import (
    BestRecord,
    load_best,
    rank_kept,
    read_best,
)

__all__ = ['BestRecord', 'load_best', 'rank_kept', 'read_best']
