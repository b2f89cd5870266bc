"""A run as text: the tables `keras-best inspect` and `compare` print.

`format_table(summarize(directory))` and `format_compare(compare([...]))`
(see `keras_best.cli.summary` for the dicts) turn the data into aligned plain
text. Epochs are 1-based here, as Keras prints them; names read from disk go
through `printable`.

```python
print(format_table(summarize("runs/exp1")))
```
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from keras_best.core.monitor import describe_stop
from keras_best.core.objective import describe_require
from keras_best.core.smoothing import parse as parse_smooth
from keras_best.frontends.loading import format_value, monitor_name


def format_size(n: int | None) -> str:
    """Bytes as people read them ("1.5 KB"); "missing" for `None`."""
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


def smooth_label(options: Mapping[str, Any]) -> str | None:
    """How a run with `smooth=` averaged its monitor, e.g. "mean of the last 3"; `None` without.

    >>> smooth_label({"smooth": ["ema", 0.3]}), smooth_label({})
    ('EMA alpha=0.3', None)
    """
    spec = options.get("smooth")
    if spec is None:
        return None
    try:
        return parse_smooth(spec).describe()
    except (ValueError, TypeError):  # read from disk: shown as it is
        return printable(str(spec))


def _raw_cells(rows: list[Mapping[str, Any]], key: str = "raw") -> bool:
    """Whether a table of `rows` gets a "raw" column (the run used `smooth=`)."""
    return any(r and key in r for r in rows)


def epoch_label(epoch: int, step: Any) -> str:
    """A 0-based epoch (and batch) as Keras prints it, 1-based.

    >>> epoch_label(2, None), epoch_label(2, 9)
    ('3', '3 (batch 10)')
    """
    return f"{epoch + 1}" if step is None else f"{epoch + 1} (batch {int(step) + 1})"


def _stop_text(summary: Mapping[str, Any]) -> str:
    stopped, options = summary["stopped"], summary["options"]
    if not stopped:
        patience = options.get("patience")
        if patience is None:
            return "no (early stopping off: patience=None)"
        return f"no (waited {summary.get('wait') or 0} of patience={patience})"
    return "yes, " + _stopped_at(stopped, options, summary["monitor"])


def _stopped_at(stopped: Mapping[str, Any], options: Mapping[str, Any], monitor: Any) -> str:
    """"at epoch 7: patience of 3 epochs exhausted" (a recorded early stop)."""
    why = describe_stop(stopped["reason"], options, monitor_name(monitor))
    return f"at epoch {epoch_label(stopped['epoch'], stopped['step'])}: {why}"


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
    smooth = smooth_label(summary["options"])
    if smooth:
        monitor += f", smoothed: {smooth} (values are smoothed; raw: as read)"
    if best:
        raw = f" (raw {format_value(best['raw'])})" if "raw" in best else ""
        best_text = (f"{format_value(best['value'])}{raw} at epoch {epoch_label(best['epoch'], best['step'])}  "
                     f"({best['path']})")
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
    disk = summary.get("disk") or {}
    if disk.get("max_disk"):
        used, limit = disk["used_bytes"], disk["max_disk"]
        share = "" if used is None else f" ({100 * used / limit:.0f}%)"
        fields.append(("Disk", f"{format_size(used)} kept of max_disk {format_size(limit)}{share}"))
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
    raw = _raw_cells(kept)
    shown = f"{primary} (smoothed)" if raw and key == "value" else primary
    header = [printable(h) for h in ["rank", "epoch", shown, *["raw"] * raw, *others, "size", "file", "kept by"]]
    rows = [header]
    keep = summary["options"].get("keep_top_k", 1)
    archived = {r["path"] for r in summary.get("archived", ())}
    every = summary["options"].get("archive_every")
    for r in kept:
        rule = "best " + ("(all kept)" if keep is None else f"{keep}")
        if r["path"] in archived:
            rule += f", {_every_text(every)}"
        rows.append([
            str(r["rank"]),
            epoch_label(r["epoch"], r["step"]),
            format_value(None if _no_value(r, primary) else r[key]) + (
                "" if r.get("feasible", True) else " (breaks require)"),
            *[format_value(r.get("raw"))] * raw,
            *(format_value(r["metrics"].get(k)) for k in others),
            format_size(r["size_bytes"]),
            printable(r["path"]),
            rule,
        ])
    right = set(range(0, 3 + raw + len(others) + 1))
    lines.extend("  " + line for line in _table(rows, right))
    return lines


def _no_value(record: Mapping[str, Any], name: str) -> bool:
    """A file saved by an update without validation values (`save_best_only=False`): "-", not NaN."""
    return name.startswith("val_") and name not in record["metrics"] and math.isnan(float(record["value"]))


def _archived_lines(summary: Mapping[str, Any]) -> list[str]:
    """The files `archive_every` keeps that are not among the best k."""
    only = [r for r in summary.get("archived", ()) if not r["also_best_k"]]
    if not only:
        return []
    every = summary["options"].get("archive_every")
    rows = [["epoch", monitor_names(summary["monitor"])[0], "size", "file", "kept by"]]
    rows += [[epoch_label(r["epoch"], r["step"]), format_value(r["value"]), format_size(r["size_bytes"]),
              printable(r["path"]), _every_text(every)] for r in only]
    never = "the first evicted over max_disk" if summary["options"].get("max_disk") else "never deleted"
    return ["", f"Archived files ({len(only)} more, {never}):", *("  " + x for x in _table(rows, {0, 1, 2}))]


def _every_text(every: Any) -> str:
    """`archive_every` as the "kept by" column says it: epochs, or a duration of wall time."""
    return f"one per {every}" if isinstance(every, str) else f"every {every} epochs"


def _state_lines(summary: Mapping[str, Any]) -> list[str]:
    """The training states kept (`keep_last`), newest first."""
    states = summary.get("states") or []
    if len(states) < 2:
        return []  # the one state is the "Resumable" line
    rows = [["epoch", "size", "file", "kept by"]]
    rows += [[epoch_label(x["epoch"], x["step"]), format_size(x["size_bytes"]), printable(x["path"]),
              "newest: resume=True continues from it" if i == 0 else f"last {len(states)} states"]
             for i, x in enumerate(states)]
    return ["", f"Training states (newest first, {len(states)}):", *("  " + x for x in _table(rows, {0, 1}))]


def _history_lines(summary: Mapping[str, Any]) -> list[str]:
    """The per-update history as a table (`inspect --history`)."""
    history = summary["history"]
    if not history:
        return ["History: none"]
    primary = monitor_names(summary["monitor"])[0]
    others = sorted({k for h in history for k in h["metrics"]} - {primary})
    best = summary["best"] and (summary["best"]["epoch"], summary["best"]["step"])
    stopped = summary["stopped"] and (summary["stopped"]["epoch"], summary["stopped"]["step"])
    kept = {(r["epoch"], r["step"]) for r in summary["kept"]}
    raw = _raw_cells(history)
    shown = f"{primary} (smoothed)" if raw else primary
    rows = [[printable(h) for h in ["epoch", shown, *["raw"] * raw, *others, "wait", "saved", "note"]]]
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
        raw_cell = [format_value(h["raw"]) if "raw" in h else "-"] * raw
        rows.append([epoch_label(*at), value, *raw_cell, *(format_value(h["metrics"].get(k)) for k in others),
                     str(h.get("wait", "")), saved, ", ".join(notes)])
    title = f"History ({len(history)} update{'s' if len(history) != 1 else ''}):"
    return [title, *("  " + line for line in _table(rows, set(range(0, 3 + raw + len(others)))))]


def monitor_names(monitor: Any) -> list[str]:
    """The monitored names (or modes) as recorded: one, or a list of several."""
    return [str(m) for m in monitor] if isinstance(monitor, list) else [str(monitor)]


def printable(text: str) -> str:
    r"""`text` with what a terminal would interpret (escapes, control characters)
    shown escaped, as `repr` does: names read from disk are untrusted.

    >>> printable("best\x1b[2J.h5")
    'best\\x1b[2J.h5'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_compare(result: Mapping[str, Any], names: list[str] | None = None) -> str:
    """`compare()`'s result as aligned text (1-based epochs); `names` label
    the runs (default: their directories)."""
    runs, ranked = result["runs"], result["ranked_by"] is not None
    names = [printable(n) for n in (names or [r["directory"] for r in runs])]
    if ranked:
        mode = monitor_names(runs[0]["mode"])[0]
        better = {"min": "lower", "max": "higher"}[mode]
        lines = [f"{len(runs)} run{'s' if len(runs) != 1 else ''}, best first by "
                 f"{printable(monitor_name(result['ranked_by']))} ({better} is better):"]
    else:
        lines = [f"{len(runs)} runs, in the order given (their monitors or modes differ, so they are not ranked):"]
    raw = _raw_cells([r["best"] for r in runs])  # a run used smooth=: its best is smoothed, raw beside it
    rows = [["rank"] * ranked + ["run"] + ["monitor"] * (not ranked) + ["best"] + ["raw"] * raw + [
        "at epoch", "epochs", "early stopped"]]
    notes = []
    for name, r in zip(names, runs):
        best, stopped = r["best"], r["stopped"]
        stop = _stopped_at(stopped, r["options"], r["monitor"]) if stopped else "no"
        if not best:
            notes.append(f"  {name}: no best: {r['no_best']}")
        rows.append([str(r["rank"])] * ranked + [name] + [printable(monitor_name(r["monitor"]))] * (not ranked) + [
            format_value(best["value"]) if best else "none",
            *[format_value(best["raw"]) if best and "raw" in best else "-"] * raw,
            epoch_label(best["epoch"], best["step"]) if best else "-", str(r["epochs_run"]), stop])
        if smooth_label(r["options"]):
            notes.append(f"  {name}: smoothed ({smooth_label(r['options'])}): best is the smoothed value")
    lines.extend("  " + line for line in _table(rows, set(range(2, 5 + raw)) | ({0} if ranked else set())))
    return "\n".join(lines + (["", *notes] if notes else []))


def _resumable_text(res: Mapping[str, Any]) -> str:
    if not res["resumable"]:
        return f"no: {res['reason']}"
    saved = f"yes: state of epoch {epoch_label(res['epoch'], res.get('step'))} in {res['path']}"
    if res["next_epoch"] is None:
        return f"{saved}; {res['reason']}"
    return f"{saved}; resume=True continues at epoch {epoch_label(res['next_epoch'], res.get('next_step'))}"


__all__ = ["epoch_label", "format_compare", "format_size", "format_table", "monitor_names", "printable",
           "smooth_label"]
