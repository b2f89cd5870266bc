"""A run at a glance: what `keras-best inspect` shows, as plain data.

`summarize(directory)` reads `keras_best.json` (never writes, never imports
TensorFlow for a local directory) and returns a JSON-able dict; `format_table`
turns it into aligned plain text. Epochs are 0-based in the dict, as in
`keras_best.json` and `load_best().epoch`, and 1-based in the table, as Keras
prints them and as `{epoch}` in file names counts.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

from keras_best import files, manifest


class RunNotFound(FileNotFoundError):
    """The path holds no keras-best run (the message says what to pass instead)."""


def summarize(
    directory: str | os.PathLike, history: bool = False, by: Any = None, by_mode: Any = None
) -> dict[str, Any]:
    """Read the run in `directory` into a plain dict (see the module docstring).

    With `history=True` the dict also holds the per-update `history` as
    recorded (`epoch`, `step`, `value`, `improved`, `saved`, `metrics`).
    With `by` (and `by_mode`, as `keras_best.loading.rank_kept` takes them)
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
        if by is not None:
            _rerank(result, directory, by, by_mode)
        if history:
            result["history"] = [
                {**h, "epoch": int(h["epoch"]), "value": _num(h["value"]),
                 "metrics": {k: _num(v) for k, v in (h.get("metrics") or {}).items()}}
                for h in entries
            ]
        return result
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise manifest.ManifestError(
            f"{manifest.manifest_path(directory)} does not have the fields keras-best writes "
            f"({type(e).__name__}: {e}). Was it edited by hand, or written by another tool?"
        ) from e


def resolve_run_directory(path: str | os.PathLike) -> str:
    """The run directory `path` names (a path to `keras_best.json` is accepted).

    Raises `RunNotFound` with a hint when there is no run there.
    """
    path = os.fspath(path)
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
        runs = sorted(
            name for name in files.listdir(path)
            if files.exists(manifest.manifest_path(files.join(path, name.rstrip("/"))))
        )
        hint = (
            f" It holds runs in: {', '.join(r.rstrip('/') for r in runs[:5])}"
            f"{' ...' if len(runs) > 5 else ''}; pass one of them, e.g. {files.join(path, runs[0].rstrip('/'))!r}."
            if runs
            else " Pass the folder of the saved files (the directory part of the tracker's filepath)."
        )
        raise RunNotFound(f"No keras-best run in {path!r}: {manifest.MANIFEST_NAME} not found.{hint}")
    return path


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
        "export": data.state.export,
        "pending": bool(data.pending),
        "updated_at": data.updated_at,
    }


def _rerank(result: dict[str, Any], directory: str, by: Any, by_mode: Any) -> None:
    from keras_best.loading import rank_kept

    order = rank_kept(directory, by, by_mode)
    entries = {(r["epoch"], r["step"]): r for r in result["kept"]}
    kept = []
    for rank, rec in enumerate(order, start=1):
        entry = entries[(rec.epoch, rec.step)]
        kept.append({**entry, "rank": rank, "by_value": _num(rec.value)})
    result["kept"] = kept
    result["ranked_by"] = list(by) if isinstance(by, (list, tuple)) else order[0].monitor


def _resumable(directory: str, data: manifest.RunRecord) -> dict[str, Any]:
    last = data.state.last
    if not last:
        return {"resumable": False, "reason": "no training state saved (the run used neither "
                                              "save_last=True nor resume=True)"}
    if not files.exists(data.effective_path(directory, last["path"])):
        return {"resumable": False, "reason": f"{last['path']} is recorded but missing"}
    epoch = int(last["epoch"])
    saved = f"state of epoch {epoch + 1} in {last['path']}"
    if data.state.stopped:
        return {"resumable": True, "next_epoch": None, "path": last["path"],
                "reason": f"{saved}; the run stopped early, so resume=True restores it and trains no more epochs"}
    return {"resumable": True, "next_epoch": epoch + 1, "path": last["path"],
            "reason": f"{saved}; resume=True continues at epoch {epoch + 2}"}


def _num(v: Any) -> float:
    return float(v)  # also "nan", "inf", "-inf" as the manifest writes them


def _size(path: str) -> int | None:
    """Bytes in a file or a directory tree; None when it is missing."""
    try:
        if files.is_remote(path):
            import tensorflow as tf

            if not tf.io.gfile.isdir(path):
                return int(tf.io.gfile.stat(path).length)
            return sum(
                int(tf.io.gfile.stat(tf.io.gfile.join(root, f)).length)
                for root, _, names in tf.io.gfile.walk(path) for f in names
            )
        if os.path.isdir(path) and not os.path.islink(path):  # links are never followed out of the run
            return sum(
                os.lstat(os.path.join(root, f)).st_size for root, _, names in os.walk(path) for f in names
            )
        return os.lstat(path).st_size
    except OSError:
        return None
    except Exception as e:  # noqa: BLE001 - tf.errors.NotFoundError is not an OSError
        if type(e).__name__ == "NotFoundError":
            return None
        raise


# ------------------------------------------------------------------ text
def format_value(v: float | None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4f}"
    return f"{v:.4g}"


def format_size(n: int | None) -> str:
    if n is None:
        return "missing"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _monitor_name(monitor: Any) -> str:
    return ", ".join(monitor) if isinstance(monitor, list) else str(monitor)


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
    reason = stopped["reason"]
    if reason == "patience_exhausted":
        why = f"patience exhausted: {options.get('patience')} epochs without improvement"
    elif reason == "non_finite_metric":
        why = f"{_monitor_name(summary['monitor'])} was NaN or infinite (stop_on_non_finite=True)"
    elif reason == "stopping_threshold":
        why = f"{_monitor_name(summary['monitor'])} reached stopping_threshold={options.get('stopping_threshold')}"
    elif reason == "divergence_threshold":
        why = (f"{_monitor_name(summary['monitor'])} was worse than "
               f"divergence_threshold={options.get('divergence_threshold')}")
    else:
        why = reason
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
    monitor = _monitor_name(summary["monitor"])
    best = summary["best"]
    if best:
        best_text = f"{format_value(best['value'])} at epoch {_when(best['epoch'], best['step'])}  ({best['path']})"
    else:
        best_text = "none yet (no epoch improved on the baseline)"
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
        ("Resumable", ("yes: " if res["resumable"] else "no: ") + res["reason"]),
        ("Save format", f"{summary['save_format']}  (filepath {summary['filepath']!r})"),
        ("Keep top k", "all" if keep is None else str(keep)),
    ]
    if summary.get("require"):
        fields.append(("Require", str(summary["require"])))
    if summary.get("export"):
        fields.append(("Exported", str(summary["export"])))
    if summary.get("pending"):
        fields.append(("Pending", "a save was interrupted; the next start or load_best completes it"))
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {printable(str(v))}" for k, v in fields]

    kept = summary["kept"]
    lines.append("")
    if not kept:
        lines.append("Kept files: none")
        return "\n".join(lines)
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
    header = [printable(h) for h in ["rank", "epoch", primary, *others, "size", "file"]]
    rows = [header]
    for r in kept:
        rows.append([
            str(r["rank"]),
            _when(r["epoch"], r["step"]),
            format_value(r[key]) + ("" if r.get("feasible", True) else " (breaks require)"),
            *(format_value(r["metrics"].get(k)) for k in others),
            format_size(r["size_bytes"]),
            printable(r["path"]),
        ])
    right = set(range(0, 3 + len(others) + 1))
    lines.extend("  " + line for line in _table(rows, right))
    return "\n".join(lines)


def printable(text: str) -> str:
    r"""`text` with what a terminal would interpret (escapes, control characters)
    shown escaped, as `repr` does: names read from disk are untrusted.

    >>> printable("best\x1b[2J.h5")
    'best\\x1b[2J.h5'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = ["RunNotFound", "format_table", "printable", "resolve_run_directory", "summarize"]
