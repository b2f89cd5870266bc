"""The run's append-only history, `keras_best_history.jsonl`: one JSON line per update.

The record (`keras_best.json`) says how many entries and bytes of the file
belong to the run (`history_count`, `history_bytes`); bytes past that offset
were left by a failed or crashed commit, are ignored, and are overwritten by
the next append. So a write costs the same at update 20,000 as at update 10.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping

from keras_best.storage import files
from keras_best.storage.checks import Checker, ManifestError, jsonable

HISTORY_NAME = files.HISTORY_NAME


def encode(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """History entries as JSON lines."""
    return b"".join(json.dumps(jsonable(e), allow_nan=False).encode("utf-8") + b"\n" for e in entries)


def append(directory: str, offset: int, data: bytes, head: Callable[[], bytes]) -> None:
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


def read(directory: str, count: int, nbytes: int, record_path: str) -> list[dict[str, Any]]:
    """The first `nbytes` of the history file of `directory` (`count` entries,
    as the record at `record_path` says), validated, oldest first."""
    if not nbytes:
        return []
    path = files.join(directory, HISTORY_NAME)
    if not files.exists(path):
        raise ManifestError(f"{record_path} records {count} history entries, but {HISTORY_NAME} is missing.")
    raw = files.read_bytes(path)[:nbytes]
    entries = []
    for i, line in enumerate(raw.splitlines()):
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ManifestError(f"{path}: line {i + 1} is not valid JSON ({str(e)[:200]}).") from e
        entries.append(Checker(path).history_entry(entry, f"line {i + 1}"))
    return entries
