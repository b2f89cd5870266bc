"""Field checks for what keras-best reads back from the run directory.

Everything read from disk is untrusted: a field of the wrong type, or a
recorded path that is not a plain file name inside the run directory (`../x`,
an absolute path, `""`, `.`, the record itself...), is a `ManifestError` naming
the file and the field, and nothing in it is acted upon.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from keras_best.core.retention import Record
from keras_best.core.smoothing import check_window
from keras_best.storage import files

BOOKKEEPING = (files.MANIFEST_NAME, files.HISTORY_NAME, files.LOCK_NAME)  # never a recorded file


class ManifestError(ValueError):
    """The record exists but cannot be used (corrupt, unsafe, newer schema...)."""


def is_number(v: Any) -> bool:
    """A JSON number, or a non-finite float as keras-best writes it ("nan", "inf", "-inf")."""
    return not isinstance(v, bool) and (isinstance(v, (int, float)) or v in ("nan", "inf", "-inf"))


class Checker:
    """Field checks with messages that name the file and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, field: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: field {field!r} {problem}. Was it edited by hand, or "
                             "written by another tool? Nothing in it was acted upon.")

    def not_shards(self, recorded: list[str], field: str) -> None:
        """A shard name is never recorded by itself: only as a member of its set (`files.members`)."""
        sets = [n for n in recorded if files.is_set_name(n)]
        for n in recorded:
            owner = next((s for s in sets if files.is_shard_of(n, s)), None)
            if owner is not None:
                raise self.error(field, f"names {n!r}, a shard of the recorded set {owner!r}, as a file of its own")

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

    def integer(self, data: Mapping[str, Any], key: str, field: str | None = None) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(field or key, f"must be an int >= 0, not {value!r}")
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
        size = value.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise self.error(f"{key}.size", f"must be an int >= 0 or null, not {size!r}")
        return dict(value)

    def engine(self, value: Any) -> dict[str, Any] | None:
        """The engine's state (`Monitor.state_dict()`, or the part of it version 3 stores)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error("engine", f"must be an object, not {type(value).__name__}")
        for key in ("best", "patience_best"):
            v = value.get(key)
            if v is not None and not is_number(v):
                raise self.error(f"engine.{key}", f"must be a number or null, not {v!r}")
        for key in ("best_epoch", "wait"):
            v = value.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise self.error(f"engine.{key}", f"must be an int, not {v!r}")
        for key in ("best_ties", "patience_ties"):
            v = value.get(key)
            if v is not None and (not isinstance(v, list) or not all(is_number(t) for t in v)):
                raise self.error(f"engine.{key}", f"must be a list of numbers, not {v!r}")
        if value.get("smooth") is not None:
            try:
                check_window(value["smooth"])
            except ValueError as e:
                raise self.error("engine.smooth", str(e)) from e
        return dict(value)

    def history_entry(self, value: Any, field: str) -> dict[str, Any]:
        entry = self.entry({field: value}, field, {"epoch": int})
        if entry is None:
            raise self.error(field, "is null")
        if not isinstance(entry.get("metrics", {}), dict):
            raise self.error(f"{field}.metrics", "must be an object")
        v = entry.get("value")
        if not is_number(v):
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
            self.name(pair[1], f"pending.renames[{i}]", reserved=BOOKKEEPING, state=True)
        finals = [pair[1] for pair in renames]
        sets = [f for f in finals if files.is_set_name(f)]
        for i, f in enumerate(finals):  # a sharded set is renamed as one unit, its shards with its index
            if sets and f.endswith(".weights.h5") and not any(files.is_shard_of(f, s) for s in sets):
                raise self.error(f"pending.renames[{i}]", f"renames {f!r} beside the sharded set(s) {sets}, "
                                                          "whose shards it is not")
        for i, rel in enumerate(deletes):
            self.name(rel, f"pending.deletes[{i}]", reserved=BOOKKEEPING, tmp=True, state=True)
        return {"renames": [list(p) for p in renames], "deletes": list(deletes)}


def jsonable(x: Any) -> Any:
    """`x` with non-finite floats as the strings "nan", "inf", "-inf" (strict JSON)."""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x
