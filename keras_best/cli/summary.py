"""A run at a glance: what `keras-best inspect` shows, as plain data.

`summarize(directory)` reads `keras_best.json` (never writes, never imports
TensorFlow but for a path only `tf.io.gfile` reaches, such as `ram://`) and
returns a JSON-able dict; `format_table` turns it into aligned plain text. Epochs are 0-based in the dict, as in
`keras_best.json` and `load_best().epoch`, and 1-based in the table, as Keras
prints them and as `{epoch}` in file names counts.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from keras_best.core.monitor import describe_stop
from keras_best.core.names import STUDY_FILE  # noqa: E402
from keras_best.core.objective import describe_require
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
                {**h, "epoch": int(h["epoch"]), "value": _num(h["value"]),
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
                         f"{_when(best['best']['epoch'], best['best']['step'])})")
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

    When every run has the same monitor and mode, `runs` is ranked best
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
                    | {"best": s["best"] and {k: s["best"][k] for k in ("epoch", "step", "value", "path")},
                       "options": s["options"], "no_best": s.get("no_best")})
    specs = {json.dumps([r["monitor"], r["mode"]]) for r in runs}
    mode = _names(runs[0]["mode"])[0] if runs else None
    ranked = len(specs) == 1 and mode in ("min", "max")
    if ranked:
        sign = 1 if mode == "min" else -1
        runs.sort(key=lambda r: (r["best"] is None, sign * r["best"]["value"] if r["best"] else 0.0))
    for rank, r in enumerate(runs, start=1):
        r["rank"] = rank if ranked else None
    return {"ranked_by": runs[0]["monitor"] if ranked else None, "runs": runs}


def format_compare(result: Mapping[str, Any], names: list[str] | None = None) -> str:
    """`compare()`'s result as aligned text (1-based epochs); `names` label
    the runs (default: their directories)."""
    runs, ranked = result["runs"], result["ranked_by"] is not None
    names = [printable(n) for n in (names or [r["directory"] for r in runs])]
    if ranked:
        mode = _names(runs[0]["mode"])[0]
        better = {"min": "lower", "max": "higher"}[mode]
        lines = [f"{len(runs)} run{'s' if len(runs) != 1 else ''}, best first by "
                 f"{printable(monitor_name(result['ranked_by']))} ({better} is better):"]
    else:
        lines = [f"{len(runs)} runs, in the order given (their monitors or modes differ, so they are not ranked):"]
    rows = [["rank"] * ranked + ["run"] + ["monitor"] * (not ranked) + ["best", "at epoch", "epochs", "early stopped"]]
    notes = []
    for name, r in zip(names, runs):
        best, stopped = r["best"], r["stopped"]
        stop = "no"
        if stopped:
            why = describe_stop(stopped["reason"], r["options"], monitor_name(r["monitor"]))
            stop = f"at epoch {_when(stopped['epoch'], stopped['step'])}: {why}"
        if not best:
            notes.append(f"  {name}: no best: {r['no_best']}")
        rows.append([str(r["rank"])] * ranked + [name] + [printable(monitor_name(r["monitor"]))] * (not ranked) + [
            format_value(best["value"]) if best else "none", _when(best["epoch"], best["step"]) if best else "-",
            str(r["epochs_run"]), stop])
    lines.extend("  " + line for line in _table(rows, {0, 2, 3, 4} if ranked else {2, 3, 4}))
    return "\n".join(lines + (["", *notes] if notes else []))


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
            "size_bytes": _size(data.effective_path(directory, r.path)),
            **({} if r.feasible else {"feasible": False}),
        })
    kept_at = {(r.epoch, r.step) for r in data.kept}
    archived = [{"epoch": r.epoch, "step": r.step, "value": r.value, "path": r.path, "metrics": dict(r.metrics),
                 "size_bytes": _size(data.effective_path(directory, r.path)), "also_best_k": (r.epoch, r.step) in kept_at}
                for r in data.state.archived]
    states = [{"path": x["path"], "epoch": int(x["epoch"]), "step": x.get("step"),
               "size_bytes": _size(data.effective_path(directory, x["path"]))}
              for x in ((data.state.last,) if data.state.last else ()) + tuple(data.state.states)]
    epochs = sorted({int(h["epoch"]) for h in history})
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


def _resumable_text(res: Mapping[str, Any]) -> str:
    if not res["resumable"]:
        return f"no: {res['reason']}"
    saved = f"yes: state of epoch {_when(res['epoch'], res.get('step'))} in {res['path']}"
    if res["next_epoch"] is None:
        return f"{saved}; {res['reason']}"
    return f"{saved}; resume=True continues at epoch {_when(res['next_epoch'], res.get('next_step'))}"


def _num(v: Any) -> float:
    return float(v)  # also "nan", "inf", "-inf" as the manifest writes them


def _size(path: str) -> int | None:
    """Bytes in a file or a directory tree; None when it is missing."""
    try:
        return files.size(path)
    except OSError:
        return None


# ------------------------------------------------------------------ text
def format_size(n: int | None) -> str:
    if n is None:
        return "missing"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _mode_text(mode: Any) -> str:
    if isinstance(mode, list):
        return ", ".join(str(m or "auto") for m in mode)
    return {"min": "min (lower is better)", "max": "max (higher is better)"}.get(mode, str(mode or "auto"))


def _when(epoch: int, step: Any) -> str:
    return f"{epoch + 1}" if step is None else f"{epoch + 1} (batch {int(step) + 1})"


def _stop_text(summary: Mapping[str, Any]) -> str:
    stopped, options = summary["stopped"], summary["options"]
    if not stopped:
        patience = options.get("patience")
        if patience is None:
            return "no (early stopping off: patience=None)"
        return f"no (waited {summary.get('wait') or 0} of patience={patience})"
    why = describe_stop(stopped["reason"], options, monitor_name(summary["monitor"]))
    return f"yes, at epoch {_when(stopped['epoch'], stopped['step'])}: {why}"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def format_table(summary: Mapping[str, Any]) -> str:
    """The summary as aligned plain text (1-based epochs, as Keras prints them)."""
    monitor = monitor_name(summary["monitor"])
    best = summary["best"]
    if best:
        best_text = f"{format_value(best['value'])} at epoch {_when(best['epoch'], best['step'])}  ({best['path']})"
    else:
        best_text = f"none yet ({summary.get('no_best') or 'no epoch improved'})"
    if summary["epochs_run"]:
        span = f"epochs {summary['first_epoch'] + 1}-{summary['last_epoch'] + 1}"
        ran = f"{summary['epochs_run']} ({span})"
        if summary["updates"] != summary["epochs_run"]:
            ran += f", {summary['updates']} updates"
    else:
        ran = "0"
    res = summary["resumable"]
    options = summary["options"]
    keep = options.get("keep_top_k", 1)
    fields = [
        ("Run directory", summary["directory"]),
        ("Monitor", monitor),
        ("Mode", _mode_text(summary["mode"])),
        ("Best", best_text),
        ("Epochs run", ran),
        ("Early stopped", _stop_text(summary)),
        ("Resumable", _resumable_text(res)),
        ("Save format", f"{summary['save_format']}  (filepath {summary['filepath']!r})"),
        ("Keep top k", "all" if keep is None else str(keep)),
    ]
    if summary.get("require"):
        fields.append(("Require", describe_require(summary["require"])))
    if summary.get("export"):
        fields.append(("Exported", str(summary["export"])))
    if summary.get("pending"):
        fields.append(("Pending", "a save was interrupted; the next start or load_best completes it"))
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {printable(str(v))}" for k, v in fields]

    lines += ["", *_kept_lines(summary), *_archived_lines(summary), *_state_lines(summary)]
    if summary.get("history") is not None:
        lines += ["", *_history_lines(summary)]
    return "\n".join(lines)


def _kept_lines(summary: Mapping[str, Any]) -> list[str]:
    kept = summary["kept"]
    if not kept:
        return ["Kept files: none"]
    lines = []
    ranked_by = summary.get("ranked_by")
    if ranked_by:
        names = ranked_by if isinstance(ranked_by, list) else [ranked_by]
        lines.append(f"Kept files (best first by {', '.join(names)}, not by the monitor; {len(kept)}):")
        primary, key = names[0], "by_value"
    else:
        lines.append(f"Kept files (best first, {len(kept)}):")
        primary = summary["monitor"][0] if isinstance(summary["monitor"], list) else str(summary["monitor"])
        key = "value"
    others = sorted({k for r in kept for k in r["metrics"]} - {primary})
    header = [printable(h) for h in ["rank", "epoch", primary, *others, "size", "file", "kept by"]]
    rows = [header]
    keep = summary["options"].get("keep_top_k", 1)
    archived = {r["path"] for r in summary.get("archived", ())}
    every = summary["options"].get("archive_every")
    for r in kept:
        rule = "best " + ("(all kept)" if keep is None else f"{keep}")
        if r["path"] in archived:
            rule += f", every {every} epochs"
        rows.append([
            str(r["rank"]),
            _when(r["epoch"], r["step"]),
            format_value(r[key]) + ("" if r.get("feasible", True) else " (breaks require)"),
            *(format_value(r["metrics"].get(k)) for k in others),
            format_size(r["size_bytes"]),
            printable(r["path"]),
            rule,
        ])
    right = set(range(0, 3 + len(others) + 1))
    lines.extend("  " + line for line in _table(rows, right))
    return lines


def _archived_lines(summary: Mapping[str, Any]) -> list[str]:
    """The files `archive_every` keeps that are not among the best k."""
    only = [r for r in summary.get("archived", ()) if not r["also_best_k"]]
    if not only:
        return []
    every = summary["options"].get("archive_every")
    rows = [["epoch", _names(summary["monitor"])[0], "size", "file", "kept by"]]
    rows += [[_when(r["epoch"], r["step"]), format_value(r["value"]), format_size(r["size_bytes"]),
              printable(r["path"]), f"every {every} epochs"] for r in only]
    return ["", f"Archived files ({len(only)} more, never deleted):", *("  " + x for x in _table(rows, {0, 1, 2}))]


def _state_lines(summary: Mapping[str, Any]) -> list[str]:
    """The training states kept (`keep_last`), newest first."""
    states = summary.get("states") or []
    if len(states) < 2:
        return []  # the one state is the "Resumable" line
    rows = [["epoch", "size", "file", "kept by"]]
    rows += [[_when(x["epoch"], x["step"]), format_size(x["size_bytes"]), printable(x["path"]),
              "newest: resume=True continues from it" if i == 0 else f"last {len(states)} states"]
             for i, x in enumerate(states)]
    return ["", f"Training states (newest first, {len(states)}):", *("  " + x for x in _table(rows, {0, 1}))]


def _history_lines(summary: Mapping[str, Any]) -> list[str]:
    """The per-update history as a table (`inspect --history`)."""
    history = summary["history"]
    if not history:
        return ["History: none"]
    primary = _names(summary["monitor"])[0]
    others = sorted({k for h in history for k in h["metrics"]} - {primary})
    best = summary["best"] and (summary["best"]["epoch"], summary["best"]["step"])
    stopped = summary["stopped"] and (summary["stopped"]["epoch"], summary["stopped"]["step"])
    kept = {(r["epoch"], r["step"]) for r in summary["kept"]}
    rows = [[printable(h) for h in ["epoch", primary, *others, "wait", "saved", "note"]]]
    for h in history:
        at = (h["epoch"], h.get("step"))
        notes = []
        if at == best:
            notes.append("best")
        elif h.get("improved"):
            notes.append("improved")
        if not h.get("validated", True):
            notes.append("no validation values")
        elif not math.isfinite(h["value"]):
            notes.append("not finite: not a candidate")
        if not h.get("feasible", True):
            notes.append("breaks require")
        if at == stopped:
            notes.append("early stop")
        saved = printable(str(h["saved"])) if h.get("saved") else ""
        if saved and at not in kept:
            saved += " (not kept)"
        value = format_value(h["value"]) if h.get("validated", True) else "-"
        rows.append([_when(*at), value, *(format_value(h["metrics"].get(k)) for k in others),
                     str(h.get("wait", "")), saved, ", ".join(notes)])
    title = f"History ({len(history)} update{'s' if len(history) != 1 else ''}):"
    return [title, *("  " + line for line in _table(rows, set(range(0, 3 + len(others)))))]


def _names(monitor: Any) -> list[str]:
    return [str(m) for m in monitor] if isinstance(monitor, list) else [str(monitor)]


def printable(text: str) -> str:
    r"""`text` with what a terminal would interpret (escapes, control characters)
    shown escaped, as `repr` does: names read from disk are untrusted.

    >>> printable("best\x1b[2J.h5")
    'best\\x1b[2J.h5'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = ["RunNotFound", "compare", "format_compare", "format_table", "printable", "resolve_run_directory",
           "search_label", "study_runs", "summarize", "why_no_best"]
