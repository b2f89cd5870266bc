"""The run's record on disk: `keras_best.json`, written atomically.

Every change to the run directory is a small transaction:

1. new files are written under temp names and fsynced;
2. the manifest is written with the new state *and* a journal
   (`"pending": {"renames": [[tmp, final], ...], "deletes": [...]}`);
3. the renames and deletes are applied;
4. the manifest is written again without the journal.

A crash before (2) leaves the old manifest and only stray temp files. A crash
after (2) is rolled forward: a temp file that still exists is the content of
its final name. So the record and the files never disagree, and `load_best`
can read a directory at any instant, even while a run is writing it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from keras_best import files

MANIFEST_NAME = "keras_best.json"
SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """The manifest exists but cannot be used (corrupt, newer schema...)."""


def manifest_path(directory: str) -> str:
    return files.join(directory, MANIFEST_NAME)


def read(directory: str) -> dict[str, Any]:
    """Read and validate the manifest of the run in `directory`.

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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON ({e}). It may have been edited by hand.") from e
    if not isinstance(data, dict) or data.get("format") != "keras_best":
        raise ManifestError(f"{path} is not a keras-best manifest.")
    version = data.get("version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema version {version!r}; this keras-best reads up to "
            f"{SCHEMA_VERSION}. Upgrade keras-best."
        )
    return data


def write(directory: str, data: Mapping[str, Any]) -> None:
    """Atomically write `data` as the manifest of `directory`."""
    body = dict(data)
    body["format"] = "keras_best"
    body["version"] = SCHEMA_VERSION
    text = json.dumps(_jsonable(body), indent=1, sort_keys=False, allow_nan=False)
    files.write_bytes_atomic(manifest_path(directory), text.encode("utf-8"))


def effective_path(directory: str, data: Mapping[str, Any], relpath: str) -> str:
    """Where the content recorded for `relpath` is right now.

    While a transaction is pending, a renamed-to file may still sit under its
    temp name: return that one.
    """
    for tmp, final in (data.get("pending") or {}).get("renames", []):
        if final == relpath and files.exists(files.join(directory, tmp)):
            return files.join(directory, tmp)
    return files.join(directory, relpath)


def roll_forward(directory: str, data: dict[str, Any]) -> dict[str, Any]:
    """Finish a pending transaction left by a crash; remove stray temp files.

    Returns the manifest without its journal (and writes it when it changed).
    """
    pending = data.pop("pending", None)
    if pending:
        apply(directory, pending)
        write(directory, data)
    remove_tmp_files(directory)
    return data


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
