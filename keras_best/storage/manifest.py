"""The run's record on disk: `keras_best.json` (a `RunRecord`) and its
append-only history, `keras_best_history.jsonl`.

`RunRecord` is the one type that owns keras_best.json: its fields, its JSON
form, its validation on read. Everything read from disk is untrusted: a field
of the wrong type, or a recorded path that is not a plain file name inside the
run directory (`../x`, an absolute path, `""`, `.`, the record itself...), is
a `ManifestError` naming the file and the field, and nothing in it is acted
upon.

Every change to the run directory is a small transaction:

1. new files are written under temp names and fsynced, and new history lines
   are written at the record's `history_bytes` offset and fsynced;
2. the record is written with the new state *and* a journal
   (`"pending": {"renames": [[tmp, final], ...], "deletes": [...]}`);
3. the renames and deletes are applied;
4. the record is written again without the journal.

A crash before (2) leaves the old record, stray temp files and history bytes
past the recorded offset (ignored, and overwritten by the next append). A
crash after (2) is rolled forward: a temp file that still exists is the
content of its final name. So the record and the files never disagree, and
`load_best` can read a directory at any instant, even while a run is writing.

The record stays small (the history is not in it), so a write costs the same
at update 20,000 as at update 10. Schema version 1 (history inside the record)
is still read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping

from keras_best.core.policy import RunState
from keras_best.core.retention import Record
from keras_best.storage import files

MANIFEST_NAME = files.MANIFEST_NAME
HISTORY_NAME = files.HISTORY_NAME
SCHEMA_VERSION = 2
_BOOKKEEPING = (files.MANIFEST_NAME, files.HISTORY_NAME, files.LOCK_NAME)  # never a recorded file


class ManifestError(ValueError):
    """The record exists but cannot be used (corrupt, unsafe, newer schema...)."""


def manifest_path(directory: str) -> str:
    return files.join(directory, MANIFEST_NAME)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """keras_best.json, typed.

    Attributes:
        monitor, mode, require: the objective's JSON form.
        save_format: "weights", "keras" or "savedmodel".
        filepath: the file-name template.
        architecture: fingerprint of the model's weight shapes (or `None`).
        state: the decisions so far (`keras_best.core.policy.RunState`).
        options: the recorded options (shown by `inspect`).
        history_count, history_bytes: how many history entries, and how many
            bytes of keras_best_history.jsonl, belong to this record.
        legacy_history: the history held inside a version-1 record.
        pending: the journal of an unfinished transaction, if any.
    """

    monitor: Any
    mode: Any
    state: RunState
    require: Any = None
    save_format: str = "weights"
    filepath: str | None = None
    architecture: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    history_count: int = 0
    history_bytes: int = 0
    legacy_history: tuple[Mapping[str, Any], ...] | None = None
    pending: Mapping[str, Any] | None = None
    updated_at: float | None = None

    @property
    def best(self) -> Record | None:
        return self.state.best_record()

    @property
    def kept(self) -> tuple[Record, ...]:
        return self.state.kept

    def named_files(self) -> set[str]:
        """The files the record names (kept, training state, export)."""
        named = {r.path for r in self.state.kept + self.state.archived}
        named.update(s["path"] for s in self.state.states)
        if self.state.last:
            named.add(self.state.last["path"])
        if self.state.export:
            named.add(self.state.export)
        return named

    def effective_path(self, directory: str, relpath: str) -> str:
        """Where the content recorded for `relpath` is right now: while a
        transaction is pending, a renamed-to file may still sit under its temp name."""
        for tmp, final in (self.pending or {}).get("renames", []):
            if final == relpath and files.exists(files.join(directory, tmp)):
                return files.join(directory, tmp)
        return files.join(directory, relpath)

    # -------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        s, best = self.state, self.best
        body = {
            "format": "keras_best",
            "version": SCHEMA_VERSION,
            "monitor": self.monitor,
            "mode": self.mode,
            "require": self.require,
            "save_format": self.save_format,
            "filepath": self.filepath,
            "architecture": self.architecture,
            "best": None if best is None else best.to_json(),
            "engine": dict(s.engine) if s.engine is not None else None,
            "options": dict(self.options),
            "kept": [r.to_json() for r in s.kept],
            "archived": [r.to_json() for r in s.archived],
            "last": None if s.last is None else dict(s.last),
            "states": [dict(x) for x in s.states],
            "stopped": None if s.stopped is None else dict(s.stopped),
            "export": s.export,
            "history_count": self.history_count,
            "history_bytes": self.history_bytes,
            "updated_at": self.updated_at if self.updated_at is not None else time.time(),
        }
        if self.pending:
            body["pending"] = {"renames": [list(r) for r in self.pending.get("renames", [])],
                               "deletes": list(self.pending.get("deletes", []))}
        return body

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST_NAME) -> RunRecord:
        """Validate `data` (parsed JSON); raise `ManifestError` naming `where` and the field."""
        check = _Checker(where)
        if not isinstance(data, dict) or data.get("format") != "keras_best":
            raise ManifestError(f"{where} is not a keras-best manifest.")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1 or version > SCHEMA_VERSION:
            raise ManifestError(
                f"{where} has schema version {version!r}; this keras-best reads 1 to "
                f"{SCHEMA_VERSION}. Upgrade keras-best."
            )
        kept = tuple(check.record(r, f"kept[{i}]") for i, r in enumerate(check.items(data, "kept")))
        names = [r.path for r in kept]
        if len(set(names)) != len(names):
            raise check.error("kept", f"names a file twice: {names}")
        best = data.get("best")
        best_at = None
        if best is not None:
            best_rec = check.record(best, "best")
            best_at = (best_rec.epoch, best_rec.step)
            if not any((r.path, r.epoch, r.step) == (best_rec.path, *best_at) for r in kept):
                raise check.error("best", f"names {best_rec.path!r} (epoch {best_rec.epoch + 1}), which is not "
                                          "among the kept files")
        engine = check.engine(data.get("engine"))
        archived = tuple(check.record(r, f"archived[{i}]") for i, r in enumerate(check.items(data, "archived")))
        by_name = {r.path: (r.epoch, r.step) for r in archived}
        if len(by_name) != len(archived):
            raise check.error("archived", f"names a file twice: {[r.path for r in archived]}")
        for r in kept:
            if by_name.get(r.path, (r.epoch, r.step)) != (r.epoch, r.step):
                raise check.error("archived", f"names {r.path!r} for another epoch than `kept` does")
        last = check.entry(data, "last", {"path": str, "epoch": int})
        if last is not None:
            check.name(last["path"], "last.path", reserved=_BOOKKEEPING, state=True)
        states = tuple(check.entry({f"states[{i}]": x}, f"states[{i}]", {"path": str, "epoch": int})
                       for i, x in enumerate(check.items(data, "states")))
        for i, x in enumerate(states):
            if x is None:
                raise check.error(f"states[{i}]", "is null")
            check.name(x["path"], f"states[{i}].path", reserved=_BOOKKEEPING, state=True)
        state_names = [x["path"] for x in ((last,) if last else ()) + states]
        if len(set(state_names)) != len(state_names) or set(state_names) & (set(names) | set(by_name)):
            raise check.error("states", f"names a file twice, or a saved model: {state_names}")
        stopped = check.entry(data, "stopped", {"epoch": int, "reason": str})
        export = check.optional(data, "export", str)
        if export is not None:
            check.name(export, "export")
        pending = check.pending(data.get("pending"))
        legacy = None
        if version == 1:
            legacy = tuple(check.history_entry(h, f"history[{i}]") for i, h in enumerate(check.items(data, "history")))
            count, nbytes = len(legacy), 0
        else:
            count = check.integer(data, "history_count")
            nbytes = check.integer(data, "history_bytes")
        state = RunState(engine=engine, kept=kept, best_at=best_at, last=last, stopped=stopped, export=export,
                         archived=archived, states=states)
        return cls(
            monitor=data.get("monitor"),
            mode=data.get("mode"),
            require=data.get("require"),
            save_format=check.optional(data, "save_format", str) or "weights",
            filepath=check.optional(data, "filepath", str),
            architecture=check.optional(data, "architecture", str),
            state=state,
            options=check.optional(data, "options", dict) or {},
            history_count=count,
            history_bytes=nbytes,
            legacy_history=legacy,
            pending=pending,
            updated_at=check.optional(data, "updated_at", (int, float)),
        )

    # -------------------------------------------------------------- disk
    @classmethod
    def read(cls, directory: str) -> RunRecord:
        """Read and validate the record of the run in `directory`.

        Raises `FileNotFoundError` naming `keras_best.json` when there is none.
        """
        path = manifest_path(directory)
        if not files.exists(path):
            raise FileNotFoundError(
                f"No keras-best run in {directory!r}: {MANIFEST_NAME} not found. "
                "Pass the run directory (the folder that holds the saved files)."
            )
        raw = files.read_bytes(path)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also ints of 5,000 digits
            raise ManifestError(f"{path} is not valid JSON ({str(e)[:200]}). It may have been edited by "
                                "hand.") from e
        return cls.from_json(data, path)

    def write(self, directory: str, sync_dir: bool = True) -> None:
        """Atomically write this record as keras_best.json of `directory`
        (`sync_dir=False`: see `files.replace`)."""
        text = json.dumps(_jsonable(self.to_json()), indent=1, allow_nan=False)
        files.write_bytes_atomic(manifest_path(directory), text.encode("utf-8"), sync_dir)

    def history(self, directory: str) -> list[dict[str, Any]]:
        """The history entries this record covers, oldest first."""
        if self.legacy_history is not None:
            return [dict(h) for h in self.legacy_history]
        if not self.history_bytes:
            return []
        path = files.join(directory, HISTORY_NAME)
        if not files.exists(path):
            raise ManifestError(f"{manifest_path(directory)} records {self.history_count} history entries, "
                                f"but {HISTORY_NAME} is missing.")
        raw = files.read_bytes(path)[: self.history_bytes]
        entries = []
        for i, line in enumerate(raw.splitlines()):
            try:
                entry = json.loads(line)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise ManifestError(f"{path}: line {i + 1} is not valid JSON ({str(e)[:200]}).") from e
            entries.append(_Checker(path).history_entry(entry, f"line {i + 1}"))
        return entries


def read(directory: str) -> RunRecord:
    """`RunRecord.read(directory)`."""
    return RunRecord.read(directory)


def encode_history(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """History entries as JSON lines."""
    return b"".join(json.dumps(_jsonable(e), allow_nan=False).encode("utf-8") + b"\n" for e in entries)


def append_history(directory: str, offset: int, data: bytes, head: Callable[[], bytes]) -> None:
    """Write `data` at `offset` of the history file and cut what follows
    (bytes a failed or crashed commit left), then fsync. When the file holds
    fewer than `offset` bytes (it was removed), it is written anew from
    `head()`, the encoded entries before `data`."""
    path = files.join(directory, HISTORY_NAME)
    if files.is_remote(directory):  # no positional writes there: rewrite the file
        old = files.read_bytes(path)[:offset] if offset and files.exists(path) else b""
        files.write_bytes_atomic(path, (old if len(old) == offset else head()) + data)
        return
    fd = files.open_own_file(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        if size < offset:
            data, offset = head() + data, 0
        if size != offset:
            os.ftruncate(fd, offset)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
        os.fsync(fd)
    finally:
        os.close(fd)


def roll_forward(directory: str, record: RunRecord) -> RunRecord:
    """Finish a pending transaction left by a crash; remove stray temp files.

    Returns the record without its journal (and writes it when it changed).
    """
    if record.pending:
        apply(directory, record.pending)
        record = dataclasses.replace(record, pending=None)
        record.write(directory)
    remove_tmp_files(directory)
    return record


def remove_tmp_files(directory: str) -> None:
    """Delete temp files a crash left (names made by `files.tmp_path`)."""
    for name in files.listdir(directory):
        if files.is_tmp_name(name):
            files.remove(files.join(directory, name), missing_ok=True)


def apply(directory: str, pending: Mapping[str, Any]) -> None:
    """Apply a journal: renames whose temp file exists, then deletes."""
    for tmp, final in pending.get("renames", []):
        src = files.join(directory, tmp)
        if files.exists(src):
            files.replace(src, files.join(directory, final))
    for rel in pending.get("deletes", []):
        files.remove(files.join(directory, rel), missing_ok=True)


class _Checker:
    """Field checks with messages that name the file and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, field: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: field {field!r} {problem}. Was it edited by hand, or "
                             "written by another tool? Nothing in it was acted upon.")

    def name(self, value: Any, field: str, reserved: tuple[str, ...] = files.RESERVED_NAMES, tmp: bool = False,
             state: bool = False) -> str:
        if tmp and isinstance(value, str) and files.is_tmp_name(value):
            return value
        problem = files.name_problem(value, reserved, state=state)
        if problem is not None:
            raise self.error(field, f"is {value!r}, not a plain file name in the run directory ({problem})")
        return value

    def optional(self, data: Mapping[str, Any], key: str, types: Any) -> Any:
        value = data.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise self.error(key, f"has the wrong type ({type(value).__name__})")
        return value

    def integer(self, data: Mapping[str, Any], key: str) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(key, f"must be an int >= 0, not {value!r}")
        return value

    def items(self, data: Mapping[str, Any], key: str) -> list[Any]:
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, not {type(value).__name__}")
        return value

    def entry(self, data: Mapping[str, Any], key: str, required: Mapping[str, type]) -> dict[str, Any] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"must be an object, not {type(value).__name__}")
        for k, t in required.items():
            if not isinstance(value.get(k), t) or isinstance(value.get(k), bool):
                raise self.error(f"{key}.{k}", f"must be a {t.__name__}, not {value.get(k)!r}")
        step = value.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            raise self.error(f"{key}.step", f"must be an int or null, not {step!r}")
        return dict(value)

    def engine(self, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error("engine", f"must be an object, not {type(value).__name__}")
        for key in ("best", "patience_best"):
            v = value.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, str))
                                  or (isinstance(v, str) and v not in ("nan", "inf", "-inf"))):
                raise self.error(f"engine.{key}", f"must be a number or null, not {v!r}")
        for key in ("best_epoch", "wait"):
            v = value.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise self.error(f"engine.{key}", f"must be an int, not {v!r}")
        return dict(value)

    def history_entry(self, value: Any, field: str) -> dict[str, Any]:
        entry = self.entry({field: value}, field, {"epoch": int})
        if entry is None:
            raise self.error(field, "is null")
        if not isinstance(entry.get("metrics", {}), dict):
            raise self.error(f"{field}.metrics", "must be an object")
        v = entry.get("value")
        if isinstance(v, bool) or not (isinstance(v, (int, float)) or v in ("nan", "inf", "-inf")):
            raise self.error(f"{field}.value", f"must be a number, not {v!r}")
        return entry

    def record(self, value: Any, field: str) -> Record:
        entry = self.entry({field: value}, field, {"epoch": int, "path": str})
        if entry is None:
            raise self.error(field, "is null")
        self.name(entry["path"], f"{field}.path")
        try:
            return Record.from_json(entry)
        except (TypeError, ValueError, AttributeError) as e:
            raise self.error(field, f"is not a saved-file record ({e})") from e

    def pending(self, value: Any) -> dict[str, Any] | None:
        if not value:
            return None
        if not isinstance(value, dict):
            raise self.error("pending", "must be an object")
        renames = value.get("renames") or []
        deletes = value.get("deletes") or []
        if not isinstance(renames, list) or not isinstance(deletes, list):
            raise self.error("pending", "must hold lists `renames` and `deletes`")
        for i, pair in enumerate(renames):
            if not isinstance(pair, list) or len(pair) != 2 or not files.is_tmp_name(str(pair[0])):
                raise self.error(f"pending.renames[{i}]", f"is {pair!r}, not a [temp name, final name] pair")
            self.name(pair[1], f"pending.renames[{i}]", reserved=_BOOKKEEPING, state=True)
        for i, rel in enumerate(deletes):
            self.name(rel, f"pending.deletes[{i}]", reserved=_BOOKKEEPING, tmp=True, state=True)
        return {"renames": [list(p) for p in renames], "deletes": list(deletes)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
