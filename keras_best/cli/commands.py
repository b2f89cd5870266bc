"""The `keras-best` command (also `python -m keras_best`).

```
keras-best demo [--output DIR]          train on scikit-learn's digits, twice, and show what was kept
keras-best inspect RUN_DIR [--json]     the run at a glance (a study directory: its trials, best first)
keras-best compare RUN_DIR RUN_DIR...   runs side by side, best first; --plot OUT.png draws their curves
keras-best plot RUN_DIR [-o curve.png]  the learning curve with the saved and kept epochs
keras-best average RUN_DIR -k 3 -o FILE  the average of the run's k best kept files, into FILE
```

Errors are one line on stderr and exit status 1 (2 for bad arguments), never a
traceback; set `KERAS_BEST_TRACEBACK=1` to see one. When the reader of the
output goes away (`keras-best inspect RUN | head`), the command stops quietly
with status 141, as a command killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Sequence

from keras_best.core.extras import install_hint
from keras_best.core.names import STUDY_FILE

_EPILOG = """\
examples:
  keras-best demo --output /tmp/kb-demo
  keras-best inspect /tmp/kb-demo/custom_loop
  keras-best inspect runs/exp1 --json | python -m json.tool
  keras-best inspect runs/exp1 --by val_acc
  keras-best inspect runs/exp1 --history
  keras-best compare runs/exp1 runs/exp2 --plot compare.png
  keras-best plot runs/exp1 -o curve.png
  keras-best average runs/exp1 -k 3 -o soup.weights.h5 --model arch.keras
  keras-best inspect s3://bucket/exp1 --storage-option endpoint_url=http://127.0.0.1:9000
"""
_SIGPIPE_STATUS = 128 + 13  # what a shell reports for a command killed by SIGPIPE (`yes | head`)


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
        f"Needs scikit-learn and matplotlib ({install_hint('demo', 'scikit-learn', 'matplotlib')}).",
    )
    demo.add_argument("--output", "-o", default="keras-best-demo", metavar="DIR",
                      help="where the two runs go (default: ./keras-best-demo)")
    demo.add_argument("--epochs", type=int, default=60, metavar="N",
                      help="at most N epochs per run; early stopping ends sooner (default: 60)")

    inspect = sub.add_parser(
        "inspect",
        help="show a run: monitor, best epoch and value, kept files, early stop, resumable",
        description="Show the run recorded in RUN_DIR/keras_best.json. Epochs count from 1 in "
        "the text, as Keras prints them, and from 0 in --json, as keras_best.json and load_best() "
        "do. A StudyBest directory (keras_best.integrations.optuna) or a KerasTuner project kept by SearchBest (keras_best.integrations.keras_tuner) shows its kept trials, best first.",
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the folder holding keras_best.json)")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    inspect.add_argument("--history", action="store_true", help="also show the per-epoch history")
    inspect.add_argument("--by", metavar="METRIC",
                         help="rank the kept files by another recorded metric; a comma-separated "
                         "list breaks ties in order (e.g. val_acc,val_loss)")
    inspect.add_argument("--by-mode", metavar="MODE",
                         help="min or max (one per --by name, comma-separated); inferred from "
                         "the names when left out")

    compare = sub.add_parser(
        "compare",
        help="runs side by side: best value and epoch, epochs trained, early stop; --plot their curves",
        description="Compare runs: one line each with the best value and its epoch, the epochs "
        "trained and why it stopped, best first when they share a monitor and mode. A StudyBest "
        "directory stands for its trials. --plot needs matplotlib "
        f"({install_hint('plot', 'matplotlib')}).",
    )
    compare.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories (or study directories)")
    compare.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    compare.add_argument("--plot", metavar="FILE", help="also draw the runs' monitored curves into FILE (.png/.svg/.pdf)")

    plot = sub.add_parser(
        "plot",
        help="plot the learning curve: monitored metric, saved and kept epochs, early stop",
        description=f"Plot the run in RUN_DIR. Needs matplotlib ({install_hint('plot', 'matplotlib')}).",
    )
    plot.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the folder holding keras_best.json)")
    plot.add_argument("-o", "--output", metavar="FILE",
                      help="image to write, .png/.svg/.pdf (default: <run dir name>-curve.png here)")
    average = sub.add_parser(
        "average",
        help="average the k best kept files of a run into one file (a checkpoint soup)",
        description="Average the weights of the K best kept files of the run in RUN_DIR (ranked as "
        "load_best ranks them; --by re-ranks) and write the averaged model to FILE with the stock "
        "Keras saver: FILE.weights.h5 (weights) or FILE.keras (the whole model). The architecture "
        "comes from the run's own .keras files, or from --model for a run of weights files. "
        "BatchNormalization statistics are averaged (average_best(data=...) in Python recomputes them).",
    )
    average.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the folder holding keras_best.json)")
    average.add_argument("-k", type=int, default=3, metavar="K", help="how many of the best kept files (default: 3)")
    average.add_argument("-o", "--output", required=True, metavar="FILE",
                         help="the file to write, .weights.h5 or .keras (replaced atomically)")
    average.add_argument("--model", metavar="FILE.keras",
                         help="a saved model of the run's architecture (needed unless the run saved .keras files)")
    average.add_argument("--by", metavar="METRIC", help="rank the kept files by another recorded metric")
    average.add_argument("--by-mode", metavar="MODE", help="min or max for --by (inferred when left out)")
    for command in (inspect, compare, plot, average):
        command.add_argument(
            "--storage-option", action="append", default=[], metavar="KEY=VALUE",
            help="an argument of the remote file system (fsspec's storage_options) of the run directories, e.g. "
            "endpoint_url=http://127.0.0.1:9000 or profile=ml; repeatable; a JSON value (true, 5, {...}) is "
            "taken as such, anything else as a string")
    return parser


def storage_options(pairs: Sequence[str]) -> dict[str, object] | None:
    """The `--storage-option KEY=VALUE` pairs as fsspec's `storage_options`.

    >>> storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=true", "key=AKIA1"])
    {'endpoint_url': 'http://127.0.0.1:9000', 'anon': True, 'key': 'AKIA1'}
    """
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError("--storage-option takes KEY=VALUE, e.g. --storage-option "
                             f"endpoint_url=http://127.0.0.1:9000. Received: {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options or None


def _use_storage_options(args: argparse.Namespace) -> None:
    """Give every run directory of the command its `--storage-option`s, and reach
    a remote one's store once (a missing bucket or credentials: the fix)."""
    if not hasattr(args, "storage_option"):
        return
    options = storage_options(args.storage_option)
    from keras_best.core.names import MANIFEST_NAME
    from keras_best.storage import files

    for directory in getattr(args, "run_dirs", None) or [args.run_dir]:
        directory = files.fspath(directory)
        if directory.rstrip("/").endswith("/" + MANIFEST_NAME):  # a path to keras_best.json
            directory = directory.rstrip("/")[: -len(MANIFEST_NAME) - 1]
        files.prepare_directory(directory, options, create=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        _use_storage_options(args)
        if args.command == "demo":
            from keras_best.cli import demo

            code = demo.main(args.output, epochs=args.epochs)
        elif args.command == "inspect":
            code = _inspect(args.run_dir, as_json=args.json, history=args.history,
                            by=args.by, by_mode=args.by_mode)
        elif args.command == "compare":
            code = _compare(args.run_dirs, as_json=args.json, plot_to=args.plot)
        elif args.command == "average":
            from keras_best.cli.average import average

            code = average(args.run_dir, args.k, args.output, model_file=args.model, by=args.by,
                           by_mode=args.by_mode)
        else:
            code = _plot(args.run_dir, args.output)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`| head`). As the Python docs advise (signal module, "Note on
        # SIGPIPE"): point stdout at devnull so the flush at exit fails no more, and stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _SIGPIPE_STATUS
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
    from keras_best.cli import summary

    if by_mode is not None and by is None:
        raise ValueError("--by-mode needs --by (the metric to rank the kept files by).")
    by_names = None if by is None else [n.strip() for n in by.split(",") if n.strip()]
    if by is not None and not by_names:
        raise ValueError(f"--by needs a metric name. Received: --by {by!r}")
    modes = None if by_mode is None else [m.strip() for m in by_mode.split(",")]
    study = summary.study_runs(run_dir)
    if study is not None:
        if by is not None:
            raise ValueError(f"--by ranks one run's kept files; {run_dir!r} is a study directory. "
                             "Pass one of its trials' directories.")
        return _show_study(run_dir, *study, as_json=as_json)
    s = summary.summarize(
        run_dir, history=history,
        by=None if by_names is None else (by_names[0] if len(by_names) == 1 else by_names),
        by_mode=None if modes is None else (modes[0] if len(modes) == 1 else modes),
    )
    if as_json:
        _print_json(s)
    else:
        print(summary.format_table(s))
    return 0


def _show_study(directory: str, name: str, runs: list[str], as_json: bool) -> int:
    from keras_best.cli import summary
    from keras_best.cli.tables import format_compare, printable

    result = summary.compare(runs) if runs else {"ranked_by": None, "runs": []}
    if as_json:
        _print_json({"study": name, "directory": directory, **result})
        return 0
    print(f"{summary.search_label(directory)} {printable(repr(name))} in {printable(directory)} "
          f"({STUDY_FILE}): {len(runs)} kept trial{'s' if len(runs) != 1 else ''}")
    if runs:
        names = [os.path.basename(r["directory"]) for r in result["runs"]]
        print(format_compare(result, names))
        print(f"\nOne trial in full: keras-best inspect {printable(result['runs'][0]['directory'])}")
    return 0


def _compare(run_dirs: list[str], as_json: bool, plot_to: str | None) -> int:
    from keras_best.cli import summary

    if plot_to is not None:
        from keras_best.cli import plot

        plot.figure_class()  # fail early, before reading anything, when matplotlib is missing
    directories = []
    for d in run_dirs:  # a study directory stands for its trials
        study = summary.study_runs(d)
        directories += study[1] if study is not None else [summary.resolve_run_directory(d)]
    if not directories:
        raise ValueError(f"No runs to compare in {', '.join(map(repr, run_dirs))} (a study directory without trials).")
    result = summary.compare(directories)
    if as_json:
        _print_json(result)
    else:
        print(summary.format_compare(result))
    if plot_to is not None:
        plot.plot_compare([r["directory"] for r in result["runs"]], plot_to)
        print(f"wrote {plot_to}", file=sys.stderr if as_json else sys.stdout)
    return 0


def _print_json(x: object) -> None:
    print(json.dumps(_jsonable(x), indent=1, allow_nan=False))


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
    from keras_best.cli import plot, summary

    plot.figure_class()  # fail early, before reading anything, when matplotlib is missing
    directory = summary.resolve_run_directory(run_dir)
    if output is None:
        output = f"{os.path.basename(os.path.normpath(directory)) or 'run'}-curve.png"
    plot.plot_run(directory, output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
