"""A run at a glance: what `keras-best inspect` shows, as plain data.

`summarize(directory)` reads `keras_best.json` (never writes, never imports
TensorFlow but for a path only `tf.io.gfile` reaches, such as `ram://`) and
returns a JSON-able dict; `compare(directories)` puts several side by side.
`keras_best.cli.tables` turns them into aligned plain text (`format_table`,
`format_compare`, re-exported here). Epochs are 0-based in the dict, as in
`keras_best.json` and `load_best().epoch`, and 1-based in the table, as Keras
prints them and as `{epoch}` in file names counts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from keras_best.cli.tables import epoch_label, format_compare, format_table, monitor_names, printable
from keras_best.core.names import STUDY_FILE
from keras_best.frontends.loading import format_value, monitor_name, why_no_best
from keras_best.storage import files, manifest


class RunNotFound(FileNotFoundError):
    """The path holds no keras-best run (the message says what to pass instead)."""


def summarize(
    directory: str | os.PathLike, history: bool = False, by: Any = None, by_mode: Any = None
) -> dict[str, Any]:
    """Read the run in `directory` into a plain dict (see the module docstring).

    With `history=True` the dict also holds the per-update `history` as
    recorded (`epoch`, `step`, `value`, `improved`, `saved`, `metrics`).
    A run with `smooth=` (`options["smooth"]`, e.g. `["mean", 3]`) decided on
    smoothed values: each `value` is the smoothed one, and the best, the kept
    files and the history entries hold the value as read in `raw`.
    With `by` (and `by_mode`, as `keras_best.frontends.loading.rank_kept` takes them)
    the kept files are ranked by that instead of the run's monitor; each
    then has a `by_value`, and `ranked_by` names the ranking.

    Raises `RunNotFound` when the directory is missing or holds no run, and
    `manifest.ManifestError` when `keras_best.json` is unreadable or lacks the
    fields it should have.
    """
    directory = resolve_run_directory(directory)
    data = manifest.read(directory)
    entries = data.history(directory)
    try:
        result = _summarize(directory, data, entries)
        if history or result["best"] is None:
            entries = [
                {**h, "epoch": int(h["epoch"]), "value": _num(h["value"]), **_raw(h.get("raw")),
                 "metrics": {k: _num(v) for k, v in (h.get("metrics") or {}).items()}}
                for h in entries
            ]
        if result["best"] is None:
            result["no_best"] = why_no_best(data, entries)
        if history:
            result["history"] = entries
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise manifest.ManifestError(
            f"{manifest.manifest_path(directory)} does not have the fields keras-best writes "
            f"({type(e).__name__}: {e}). Was it edited by hand, or written by another tool?"
        ) from e
    if by is not None:  # its errors are about `by` (an unknown metric...), not about the file
        _rerank(result, directory, by, by_mode)
    return result


def resolve_run_directory(path: str | os.PathLike) -> str:
    """The run directory `path` names (a path to `keras_best.json` is accepted).

    Raises `RunNotFound` with a hint when there is no run there.
    """
    path = files.fspath(path)
    if files.basename(path) == manifest.MANIFEST_NAME and files.exists(path) and not files.isdir(path):
        path = path[: -len(manifest.MANIFEST_NAME)].rstrip("/" + os.sep) or "."
    if not files.exists(path):
        raise RunNotFound(f"Run directory {path!r} does not exist.")
    if not files.isdir(path):
        raise RunNotFound(
            f"{path!r} is a file; pass the run directory (the folder that holds "
            f"{manifest.MANIFEST_NAME} and the saved files)."
        )
    if not files.exists(manifest.manifest_path(path)):
        study = study_runs(path)
        runs = study[1] if study else _runs_in(path)
        ranking = compare(runs) if study and runs else None
        if ranking and ranking["ranked_by"] is not None:
            best = ranking["runs"][0]
            hint = (f" It is the directory of the {search_label(path)} {study[0]!r} ({STUDY_FILE}); its best kept "
                    f"trial is {best['directory']!r}")
            if best["best"]:
                hint += (f" ({monitor_name(best['monitor'])} {format_value(best['best']['value'])} at epoch "
                         f"{epoch_label(best['best']['epoch'], best['best']['step'])})")
            hint += f": pass that, or see all {len(runs)} kept trials with: keras-best inspect {path}"
        elif runs:
            names = ", ".join(files.basename(r) for r in runs[:5])
            hint = (f" It holds runs in: {names}{' ...' if len(runs) > 5 else ''}; pass one of them, "
                    f"e.g. {runs[0]!r}.")
        else:
            hint = " Pass the folder of the saved files (the directory part of the tracker's filepath)."
        raise RunNotFound(f"No keras-best run in {path!r}: {manifest.MANIFEST_NAME} not found.{hint}")
    return path


def study_runs(path: str | os.PathLike) -> tuple[str, list[str]] | None:
    """`(study name, trial run directories)` when `path` is a
    `keras_best.integrations.optuna.StudyBest` directory (it holds `keras_best_study.json`
    and no run of its own); `None` otherwise."""
    path = os.fspath(path)
    if not files.isdir(path) or files.exists(manifest.manifest_path(path)):
        return None
    study_file = files.join(path, STUDY_FILE)
    if not files.exists(study_file):
        return None
    return _study_record(study_file)[0], _runs_in(path)


def search_label(path: str | os.PathLike) -> str:
    """What kind of search directory `path` is, for messages: "Optuna study" or "KerasTuner search"."""
    framework = _study_record(files.join(os.fspath(path), STUDY_FILE))[1]
    return "KerasTuner search" if framework == "keras_tuner" else "Optuna study"


def _study_record(study_file: str) -> tuple[str, str | None]:
    """`(search name, framework)` from a search's `keras_best_study.json` (untrusted)."""
    try:
        body = json.loads(files.read_bytes(study_file)[:100_000].decode("utf-8"))
        name, framework = body.get("study_name"), body.get("framework")
    except (OSError, ValueError, AttributeError, RecursionError):  # untrusted: the trials are what matters
        name = framework = None
    return (name if isinstance(name, str) else "?"), (framework if isinstance(framework, str) else None)


def _runs_in(path: str) -> list[str]:
    """The run directories directly inside `path`, by name."""
    names = sorted(n.rstrip("/") for n in files.listdir(path))
    return [files.join(path, n) for n in names
            if not n.startswith(".") and files.exists(manifest.manifest_path(files.join(path, n)))]


def compare(directories: list[str | os.PathLike]) -> dict[str, Any]:
    """The runs side by side: best value and epoch, epochs trained, early stop.

    When every run has the same monitor, mode and `smooth=`, `runs` is ranked best
    first (runs without a best last) and `ranked_by` names the monitor;
    otherwise they stay in the order given and `ranked_by` is `None`. Epochs
    are 0-based, as in `summarize`.

    ```python
    for run in compare(["runs/a", "runs/b"])["runs"]:
        print(run["rank"], run["directory"], run["best"])
    ```
    """
    runs = []
    for d in directories:
        s = summarize(d)
        runs.append({k: s[k] for k in ("directory", "monitor", "mode", "epochs_run", "updates", "stopped")}
                    | {"best": s["best"] and {k: s["best"][k] for k in ("epoch", "step", "value", "raw", "path")
                                            if k in s["best"]},
                       "options": s["options"], "no_best": s.get("no_best")})
    specs = {json.dumps([r["monitor"], r["mode"], r["options"].get("smooth")]) for r in runs}
    mode = monitor_names(runs[0]["mode"])[0] if runs else None
    ranked = len(specs) == 1 and mode in ("min", "max")
    if ranked:
        sign = 1 if mode == "min" else -1
        runs.sort(key=lambda r: (r["best"] is None, sign * r["best"]["value"] if r["best"] else 0.0))
    for rank, r in enumerate(runs, start=1):
        r["rank"] = rank if ranked else None
    return {"ranked_by": runs[0]["monitor"] if ranked else None, "runs": runs}


def _summarize(directory: str, data: manifest.RunRecord, history: list[dict[str, Any]]) -> dict[str, Any]:
    best = data.best
    kept = []
    for rank, r in enumerate(data.kept, start=1):
        kept.append({
            "rank": rank,
            "epoch": r.epoch,
            "step": r.step,
            "value": r.value,
            "path": r.path,
            "metrics": dict(r.metrics),
            "size_bytes": _size(directory, data, r.path),
            **({} if r.feasible else {"feasible": False}),
            **_raw(r.raw),
        })
    kept_at = {(r.epoch, r.step) for r in data.kept}
    archived = [{"epoch": r.epoch, "step": r.step, "value": r.value, **_raw(r.raw), "path": r.path,
                 "metrics": dict(r.metrics),
                 "size_bytes": _size(directory, data, r.path), "also_best_k": (r.epoch, r.step) in kept_at}
                for r in data.state.archived]
    states = [{"path": x["path"], "epoch": int(x["epoch"]), "step": x.get("step"),
               "size_bytes": _size(directory, data, x["path"])}
              for x in ((data.state.last,) if data.state.last else ()) + tuple(data.state.states)]
    epochs = sorted({int(h["epoch"]) for h in history})
    sizes = {x["path"]: x["size_bytes"] for x in kept + archived + states}
    disk = {"used_bytes": None if None in sizes.values() else sum(sizes.values()),
            "max_disk": data.options.get("max_disk")}
    stopped = data.state.stopped
    if stopped:
        stopped = {"epoch": int(stopped["epoch"]), "step": stopped.get("step"), "reason": str(stopped["reason"])}
    return {
        "directory": directory,
        "monitor": data.monitor,
        "mode": data.mode,
        "require": data.require,
        "save_format": data.save_format,
        "filepath": data.filepath,
        "best": None if best is None else {
            "epoch": best.epoch,
            "step": best.step,
            "value": best.value,
            **_raw(best.raw),
            "path": best.path,
            "metrics": dict(best.metrics),
        },
        "options": dict(data.options),
        "epochs_run": len(epochs),
        "updates": len(history),
        "first_epoch": epochs[0] if epochs else None,
        "last_epoch": epochs[-1] if epochs else None,
        "wait": (data.state.engine or {}).get("wait"),
        "stopped": stopped or None,
        "resumable": _resumable(directory, data),
        "kept": kept,
        "archived": archived,
        "states": states,
        "disk": disk,
        "export": data.state.export,
        "pending": bool(data.pending),
        "updated_at": data.updated_at,
    }


def _rerank(result: dict[str, Any], directory: str, by: Any, by_mode: Any) -> None:
    from keras_best.frontends.loading import rank_kept

    order = rank_kept(directory, by, by_mode)
    entries = {(r["epoch"], r["step"]): r for r in result["kept"]}
    kept = []
    for rank, rec in enumerate(order, start=1):
        entry = entries[(rec.epoch, rec.step)]
        kept.append({**entry, "rank": rank, "by_value": _num(rec.value)})
    result["kept"] = kept
    result["ranked_by"] = list(by) if isinstance(by, (list, tuple)) else order[0].monitor


def _resumable(directory: str, data: manifest.RunRecord) -> dict[str, Any]:
    """Whether `resume=True` can continue; epochs 0-based, and `reason` names none."""
    last = data.state.last
    if not last:
        return {"resumable": False, "reason": "no training state saved (the run used neither "
                                              "save_last=True nor resume=True)"}
    if not files.exists(data.effective_path(directory, last["path"])):
        return {"resumable": False, "reason": f"{last['path']} is recorded but missing"}
    epoch = int(last["epoch"])
    if data.state.stopped:
        return {"resumable": True, "epoch": epoch, "next_epoch": None, "path": last["path"],
                "reason": "the run stopped early, so resume=True restores it and trains no more epochs"}
    if last.get("step") is not None:  # saved mid-epoch: that epoch goes on at the next batch
        return {"resumable": True, "epoch": epoch, "step": last["step"], "next_epoch": epoch,
                "next_step": last["step"] + 1, "path": last["path"],
                "reason": "resume=True continues in the saved epoch, at the batch after the saved one"}
    return {"resumable": True, "epoch": epoch, "next_epoch": epoch + 1, "path": last["path"],
            "reason": "resume=True continues after the saved state"}


def _raw(v: Any) -> dict[str, float]:
    """`{"raw": v}` for a run with `smooth=` (the value as read), else `{}`."""
    return {} if v is None else {"raw": _num(v)}


def _num(v: Any) -> float:
    return float(v)  # also "nan", "inf", "-inf" as the manifest writes them


def _size(directory: str, data: manifest.RunRecord, name: str) -> int | None:
    """Bytes in the files of a saved name (a file, a directory tree, a sharded
    set: `files.members`); None when one is missing."""
    try:
        return sum(files.size(data.effective_path(directory, m)) for m in files.members(directory, name))
    except OSError:
        return None


__all__ = ["RunNotFound", "compare", "format_compare", "format_table", "printable", "resolve_run_directory",
           "search_label", "study_runs", "summarize", "why_no_best"]
