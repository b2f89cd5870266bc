"""`python -m keras_best ...`: the same as the `keras-best` command."""

import sys

from keras_best.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
