"""The `keras-best` command line: `inspect`, `compare`, `plot`, `demo` (see `commands`)."""

from keras_best.cli.commands import main

__all__ = ["main"]
