"""Public import path: `keras_best.summary` is `keras_best.cli.summary` (which holds the code)."""

from keras_best.cli.summary import (
    RunNotFound,
    compare,
    format_compare,
    format_table,
    printable,
    resolve_run_directory,
    search_label,
    study_runs,
    summarize,
    why_no_best,
)

__all__ = ['RunNotFound', 'compare', 'format_compare', 'format_table', 'printable', 'resolve_run_directory', 'search_label', 'study_runs', 'summarize', 'why_no_best']
