"""The `keras-best` command (also `python -m keras_best`).

```
keras-best demo [--output DIR]          train on scikit-learn's digits, twice, and show what was kept
keras-best inspect RUN_DIR [--json]     the run at a glance
keras-best plot RUN_DIR [-o curve.png]  the learning curve with the saved and kept epochs
```

Errors are one line on stderr and exit status 1 (2 for bad arguments), never a
traceback; set `KERAS_BEST_TRACEBACK=1` to see one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Sequence

_EPILOG = """\
examples:
  keras-best demo --output /tmp/kb-demo
  keras-best inspect /tmp/kb-demo/custom_loop
  keras-best inspect runs/exp1 --json | python -m json.tool
  keras-best inspect runs/exp1 --by val_acc
  keras-best plot runs/exp1 -o curve.png
"""


def _parser() -> argparse.ArgumentParser:
    from keras_best import __version__

    parser = argparse.ArgumentParser(
        prog="keras-best",
        description="Keep the best Keras model while it trains: look at runs, or try the demo.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keras-best {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a small model on scikit-learn's digits with a custom loop and with fit()",
        description="Train a small classifier on scikit-learn's bundled digits (no download) "
        "twice: a custom GradientTape loop with BestWeightsTracker and model.fit() with "
        "BestCheckpoint, both with early stopping and the 3 best files kept; then reload "
        "the best with load_best, report its test accuracy and plot the learning curves. "
        'Needs scikit-learn (python -m pip install "keras-best[demo]").',
    )
    demo.add_argument("--output", "-o", default="keras-best-demo", metavar="DIR",
                      help="where the two runs go (default: ./keras-best-demo)")
    demo.add_argument("--epochs", type=int, default=60, metavar="N",
                      help="at most N epochs per run; early stopping ends sooner (default: 60)")

    inspect = sub.add_parser(
        "inspect",
        help="show a run: monitor, best epoch and value, kept files, early stop, resumable",
        description="Show the run recorded in RUN_DIR/keras_best.json. The table counts epochs "
        "from 1, as Keras prints them; --json gives them 0-based, as keras_best.json and "
        "load_best() do.",
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the folder holding keras_best.json)")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    inspect.add_argument("--history", action="store_true", help="with --json: include the per-epoch history")
    inspect.add_argument("--by", metavar="METRIC",
                         help="rank the kept files by another recorded metric; a comma-separated "
                         "list breaks ties in order (e.g. val_acc,val_loss)")
    inspect.add_argument("--by-mode", metavar="MODE",
                         help="min or max (one per --by name, comma-separated); inferred from "
                         "the names when left out")

    plot = sub.add_parser(
        "plot",
        help="plot the learning curve: monitored metric, saved and kept epochs, early stop",
        description='Plot the run in RUN_DIR. Needs matplotlib (python -m pip install "keras-best[plot]").',
    )
    plot.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the folder holding keras_best.json)")
    plot.add_argument("-o", "--output", metavar="FILE",
                      help="image to write, .png/.svg/.pdf (default: <run dir name>-curve.png here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            from keras_best import demo

            return demo.main(args.output, epochs=args.epochs)
        if args.command == "inspect":
            return _inspect(args.run_dir, as_json=args.json, history=args.history,
                            by=args.by, by_mode=args.by_mode)
        return _plot(args.run_dir, args.output)
    except KeyboardInterrupt:
        print("keras-best: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a command line shows one line, not a traceback
        if os.environ.get("KERAS_BEST_TRACEBACK"):
            raise
        print(f"keras-best {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    known = (FileNotFoundError, ImportError, ValueError, OSError)
    return text if isinstance(e, known) else f"{type(e).__name__}: {text} (set KERAS_BEST_TRACEBACK=1 for details)"


def _inspect(run_dir: str, as_json: bool, history: bool, by: str | None = None,
             by_mode: str | None = None) -> int:
    from keras_best import summary

    if by_mode is not None and by is None:
        raise ValueError("--by-mode needs --by (the metric to rank the kept files by).")
    by_names = None if by is None else [n.strip() for n in by.split(",") if n.strip()]
    if by is not None and not by_names:
        raise ValueError(f"--by needs a metric name. Received: --by {by!r}")
    modes = None if by_mode is None else [m.strip() for m in by_mode.split(",")]
    s = summary.summarize(
        run_dir, history=history,
        by=None if by_names is None else (by_names[0] if len(by_names) == 1 else by_names),
        by_mode=None if modes is None else (modes[0] if len(modes) == 1 else modes),
    )
    if as_json:
        print(json.dumps(_jsonable(s), indent=1, allow_nan=False))
    else:
        print(summary.format_table(s))
    return 0


def _jsonable(x: object) -> object:
    """Strict JSON: NaN and infinities as the strings "nan", "inf", "-inf" (as keras_best.json)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _plot(run_dir: str, output: str | None) -> int:
    from keras_best import plot, summary

    plot._figure_class()  # fail early, before reading anything, when matplotlib is missing
    directory = summary.resolve_run_directory(run_dir)
    if output is None:
        output = f"{os.path.basename(os.path.normpath(directory)) or 'run'}-curve.png"
    plot.plot_run(directory, output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
