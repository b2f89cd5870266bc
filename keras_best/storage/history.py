"""The run's append-only history, `keras_best_history.jsonl`: one JSON line per update.

The record (`keras_best.json`) says how many entries and bytes of the history
belong to the run (`history_count`, `history_bytes`); bytes past that offset
were left by a failed or crashed commit, are ignored, and are overwritten by
the next append. So a write costs the same at update 20,000 as at update 10.

On an object store (S3, GCS, Azure: no positional writes), each commit's
lines are one small object of their own, a *part* (`keras_best_history-00001.jsonl`,
...), and the record lists the parts' sizes (`history_parts`): the history is
the file's first `history_bytes - sum(history_parts)` bytes, then the parts in
order. Every `PARTS_PER_FILE` parts, the file is written anew with them (its
old bytes first, unchanged, so that the record before still reads it) and the
parts are deleted once the new record is written.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping

from keras_best.storage import files
from keras_best.storage.checks import Checker, ManifestError, jsonable

HISTORY_NAME = files.HISTORY_NAME
PARTS_PER_FILE = 50  # on object stores: parts appended before the file is written anew with them


def encode(entries: Iterable[Mapping[str, Any]]) -> bytes:
    """History entries as JSON lines."""
    return b"".join(json.dumps(jsonable(e), allow_nan=False).encode("utf-8") + b"\n" for e in entries)


def append(directory: str, offset: int, data: bytes, head: Callable[[], bytes],
           parts: tuple[int, ...] | None = ()) -> tuple[tuple[int, ...], list[str]]:
    """Write `data` at `offset` of the history and cut what follows (bytes a
    failed or crashed commit left), then fsync. When the file holds fewer than
    `offset` bytes (it was removed), it is written anew from `head()`, the
    encoded entries before `data`.

    On an object store `parts` are the sizes of the parts the record before
    lists (`None`: not known); returns the parts the new record lists and the
    names to delete once it is written (elsewhere: `((), [])`)."""
    path = files.join(directory, HISTORY_NAME)
    if files.filesystem(directory).object_store:
        return _append_part(directory, offset, data, head, parts)
    if files.is_remote(directory):  # no positional writes there: rewrite the file
        old = files.read_bytes(path)[:offset] if offset and files.exists(path) else b""
        files.write_bytes_atomic(path, (old if len(old) == offset else head()) + data)
        return (), []
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
    return (), []


def _append_part(directory: str, offset: int, data: bytes, head: Callable[[], bytes],
                 parts: tuple[int, ...] | None) -> tuple[tuple[int, ...], list[str]]:
    """`append` on an object store: one PUT of a new part (see the module's docstring)."""
    path = files.join(directory, HISTORY_NAME)
    if parts is not None and offset and sum(parts) <= offset and len(parts) < PARTS_PER_FILE:
        files.write_bytes_atomic(files.join(directory, files.history_part_name(len(parts) + 1)), data)
        return (*parts, len(data)), []
    if parts is None or not offset or sum(parts) > offset:  # a new history, or one whose layout is not known
        files.write_bytes_atomic(path, (head() if offset else b"") + data)
        return (), [files.history_part_name(i + 1) for i in range(len(parts or ()))]
    # PARTS_PER_FILE parts: the file anew, its old bytes first, as the record before reads them.
    kept = offset - sum(parts)
    old = files.read_bytes(path)[:kept] if kept else b""
    before = head()
    if len(old) < kept:  # the file was cut or removed: the record before cannot be read anyway
        old = before[:kept]
    if before[:kept] != old or len(before) != offset:  # head() encodes differently: the parts as written
        before = old + b"".join(_read_part(directory, i, n) for i, n in enumerate(parts))
    files.write_bytes_atomic(path, before + data)
    return (), [files.history_part_name(i + 1) for i in range(len(parts))]


def _read_part(directory: str, i: int, size: int) -> bytes:
    """The first `size` bytes of part `i` (0-based) of the history."""
    name = files.history_part_name(i + 1)
    raw = files.read_bytes(files.join(directory, name))[:size]
    if len(raw) != size:
        raise ManifestError(f"{files.join(directory, name)} holds {len(raw)} bytes; the record lists {size}.")
    return raw


class MissingPart(ManifestError):
    """A part of the history the record lists is not there (see `read`)."""


def read(directory: str, count: int, nbytes: int, record_path: str,
         parts: tuple[int, ...] = (), stored: int | None = None) -> list[dict[str, Any]]:
    """The first `nbytes` of the history of `directory` (`count` entries,
    as the record at `record_path` says; on an object store the file's first
    bytes, then `parts`), validated, oldest first.

    `stored`: the bytes of the history a newer record lists with `parts`
    (`nbytes` or more: the history only grows), read to take its first `nbytes`
    (a reader whose record's parts a writer folded into the file and deleted
    since: `MissingPart`, then read again with the newer record's layout)."""
    if not nbytes:
        return []
    path = files.join(directory, HISTORY_NAME)
    kept = (nbytes if stored is None else stored) - sum(parts)
    try:
        raw = files.read_bytes(path)[:kept] if kept else b""
    except FileNotFoundError:
        raise ManifestError(f"{record_path} records {count} history entries, but {HISTORY_NAME} is "
                            "missing.") from None
    try:
        raw += b"".join(_read_part(directory, i, n) for i, n in enumerate(parts))
    except FileNotFoundError as e:
        raise MissingPart(f"{record_path} lists {len(parts)} parts of the history, but one is missing "
                          f"({e}).") from None
    raw = raw[:nbytes]
    entries = []
    for i, line in enumerate(raw.splitlines()):
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ManifestError(f"{path}: line {i + 1} is not valid JSON ({str(e)[:200]}).") from e
        entries.append(Checker(path).history_entry(entry, f"line {i + 1}"))
    return entries
