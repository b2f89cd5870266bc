"""The run's record, `keras_best.json`: `RunRecord`, its JSON form and its validation.

`RunRecord` is the one type that owns keras_best.json: its fields, its JSON
form, its validation on read (see `keras_best.storage.checks`: anything
wrong is a `ManifestError` naming the file and the field). How it changes on
disk is `keras_best.storage.journal`; the history beside it is
`keras_best.storage.history`.

Schema version 3 stores each fact once:

- `best` is `{"epoch", "value", "path"}` (the documented contract) and names
  one of the `kept` records, which holds its metrics, step and tie-breaks;
- `engine` holds only the early-stopping state that `best` does not give
  (`wait`, `patience_best`, `patience_ties`); the engine's best, best epoch and
  tie-breaks are read from the best's kept record.

Versions 2 (keras-best 0.2: `best` and `engine` in full) and 1 (the history
inside the record) are still read.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Mapping

from keras_best.core.policy import RunState
from keras_best.core.retention import Record
from keras_best.storage import files
from keras_best.storage import history as _history
from keras_best.storage.checks import BOOKKEEPING, Checker, ManifestError, is_number, jsonable

MANIFEST_NAME = files.MANIFEST_NAME
SCHEMA_VERSION = 3
_DERIVED = ("best", "best_epoch", "best_ties")  # the engine's, given by `best` from version 3 on


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
        history_parts: on an object store, the sizes of the history's parts
            after the file (`keras_best.storage.history`; their bytes are part
            of `history_bytes`).
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
    history_parts: tuple[int, ...] = ()
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
        """The record as version-3 JSON data, e.g. (abridged)
        `{"format": "keras_best", "version": 3, "best": {"epoch": 1, "value": 0.5,
        "path": "002.weights.h5"}, "engine": {"wait": 2, "patience_best": 0.5,
        "patience_ties": []}, "kept": [{"epoch": 1, "value": 0.5, "path": ..., "step": null,
        "metrics": {...}}], ...}`."""
        s, best = self.state, self.best
        engine = None if s.engine is None else {k: v for k, v in s.engine.items() if k not in _DERIVED}
        body = {
            "format": "keras_best",
            "version": SCHEMA_VERSION,
            "monitor": self.monitor,
            "mode": self.mode,
            "require": self.require,
            "save_format": self.save_format,
            "filepath": self.filepath,
            "architecture": self.architecture,
            "best": None if best is None else {"epoch": best.epoch, "value": best.value, "path": best.path},
            "engine": engine,
            "options": dict(self.options),
            "kept": [r.to_json() for r in s.kept],
            "archived": [r.to_json() for r in s.archived],
            "last": None if s.last is None else dict(s.last),
            "states": [dict(x) for x in s.states],
            "stopped": None if s.stopped is None else dict(s.stopped),
            "export": s.export,
            **({} if s.archive_time is None else {"archive_time": s.archive_time}),
            "history_count": self.history_count,
            "history_bytes": self.history_bytes,
            **({"history_parts": list(self.history_parts)} if self.history_parts else {}),
            "updated_at": self.updated_at if self.updated_at is not None else time.time(),
        }
        if self.pending:
            body["pending"] = {"renames": [list(r) for r in self.pending.get("renames", [])],
                               "deletes": list(self.pending.get("deletes", []))}
        return body

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST_NAME) -> RunRecord:
        """Validate `data` (parsed JSON of any version); raise `ManifestError`
        naming `where` and the field."""
        check = Checker(where)
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
        best = _best(check, data.get("best"), kept)
        engine = _engine(check, data.get("engine"), best)
        archived = tuple(check.record(r, f"archived[{i}]") for i, r in enumerate(check.items(data, "archived")))
        by_name = {r.path: (r.epoch, r.step) for r in archived}
        check.not_shards(names + list(by_name), "kept")
        if len(by_name) != len(archived):
            raise check.error("archived", f"names a file twice: {[r.path for r in archived]}")
        for r in kept:
            if by_name.get(r.path, (r.epoch, r.step)) != (r.epoch, r.step):
                raise check.error("archived", f"names {r.path!r} for another epoch than `kept` does")
        last = check.entry(data, "last", {"path": str, "epoch": int})
        if last is not None:
            check.name(last["path"], "last.path", reserved=BOOKKEEPING, state=True)
        states = tuple(check.entry({f"states[{i}]": x}, f"states[{i}]", {"path": str, "epoch": int})
                       for i, x in enumerate(check.items(data, "states")))
        for i, x in enumerate(states):
            if x is None:
                raise check.error(f"states[{i}]", "is null")
            check.name(x["path"], f"states[{i}].path", reserved=BOOKKEEPING, state=True)
        state_names = [x["path"] for x in ((last,) if last else ()) + states]
        if len(set(state_names)) != len(state_names) or set(state_names) & (set(names) | set(by_name)):
            raise check.error("states", f"names a file twice, or a saved model: {state_names}")
        stopped = check.entry(data, "stopped", {"epoch": int, "reason": str})
        export = check.optional(data, "export", str)
        if export is not None:
            check.name(export, "export")
        legacy = None
        if version == 1:
            legacy = tuple(check.history_entry(h, f"history[{i}]") for i, h in enumerate(check.items(data, "history")))
            count, nbytes = len(legacy), 0
        else:
            count = check.integer(data, "history_count")
            nbytes = check.integer(data, "history_bytes")
        parts = tuple(check.integer({"n": n}, "n", f"history_parts[{i}]")
                      for i, n in enumerate(check.items(data, "history_parts")))
        if sum(parts) > nbytes:
            raise check.error("history_parts", f"lists {sum(parts)} bytes, more than history_bytes ({nbytes})")
        best_at = None if best is None else (best.epoch, best.step)
        archive_time = check.optional(data, "archive_time", (int, float))
        state = RunState(engine=engine, kept=kept, best_at=best_at, last=last, stopped=stopped, export=export,
                         archived=archived, states=states,
                         archive_time=None if archive_time is None else float(archive_time))
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
            history_parts=parts,
            legacy_history=legacy,
            pending=check.pending(data.get("pending")),
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
        text = json.dumps(jsonable(self.to_json()), indent=1, allow_nan=False)
        files.write_bytes_atomic(manifest_path(directory), text.encode("utf-8"), sync_dir)

    def history(self, directory: str) -> list[dict[str, Any]]:
        """The history entries this record covers, oldest first."""
        if self.legacy_history is not None:
            return [dict(h) for h in self.legacy_history]
        path = manifest_path(directory)
        try:
            return _history.read(directory, self.history_count, self.history_bytes, path, self.history_parts)
        except _history.MissingPart:
            if not self.history_parts:
                raise
        # A writer folded the parts into the file since this record was read (every
        # `PARTS_PER_FILE` commits) and deleted them: a newer record's history starts
        # with the same bytes. Read once more, with its layout.
        newer = RunRecord.read(directory)
        if newer.legacy_history is not None or newer.history_bytes < self.history_bytes:
            raise ManifestError(f"{path} changed while its history was read: a new run replaced it. Read it again.")
        return _history.read(directory, self.history_count, self.history_bytes, path, newer.history_parts,
                             newer.history_bytes)

    def history_files(self) -> list[str]:
        """The files of the history: keras_best_history.jsonl and its parts (on object stores)."""
        return [files.HISTORY_NAME] + [files.history_part_name(i + 1) for i in range(len(self.history_parts))]


def read(directory: str) -> RunRecord:
    """`RunRecord.read(directory)`."""
    return RunRecord.read(directory)


def _best(check: Checker, value: Any, kept: tuple[Record, ...]) -> Record | None:
    """The kept record `best` names (by path); its epoch, value (and step, when
    given: versions 1 and 2 write the whole record) must be the record's."""
    best = check.entry({"best": value}, "best", {"epoch": int, "path": str})
    if best is None:
        return None
    check.name(best["path"], "best.path")
    if not is_number(best.get("value")):
        raise check.error("best.value", f"must be a number, not {best.get('value')!r}")
    record = next((r for r in kept if r.path == best["path"]), None)
    if record is None or record.epoch != best["epoch"] or best.get("step", record.step) != record.step:
        raise check.error("best", f"names {best['path']!r} (epoch {best['epoch'] + 1}), which is not among the "
                                  "kept files")
    if float(best["value"]) != record.value:
        raise check.error("best.value", f"is {best['value']!r}, but the kept file {record.path!r} records "
                                        f"{record.value!r}")
    return record


def _engine(check: Checker, value: Any, best: Record | None) -> dict[str, Any] | None:
    """The engine's state. Its best, best epoch and tie-breaks are the best
    record's: written from version 3 on only there, read from there when absent."""
    engine = check.engine(value)
    if engine is None or "best" in engine:  # versions 1 and 2: in full
        return engine
    check.integer(engine, "wait", "engine.wait")
    return {**engine,
            "best": None if best is None else best.value,
            "best_epoch": None if best is None else best.epoch,
            "best_ties": [] if best is None else list(best.ties)}
