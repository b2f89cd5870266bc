"""Files uploaded straight to their final names on an object store.

On an object store a rename is a copy then a delete: a save under a temp name
costs its upload, a server-side copy of every byte and a delete. A file
whose final name the record before the commit does not name (a new name: an
`{epoch}` template, a top-k file, a sharded set, a `keep_last` state) is
uploaded under its final name instead: nobody reads that name until the new
record names it, so the record and the files still agree at every instant.

A crash between the upload and the record leaves a file under a name the
record does not name. So the commit first announces the names in a small
marker object (`.kb-tmp-<token>-keras_best_uploads.json`, a temp name), then
uploads, writes the record and deletes the marker. At the next start
(`journal.remove_tmp_files`) every name a marker lists that the record does
not name is deleted (and its unfinished multipart uploads aborted), then the
marker. Names the record before names (a fixed `best.weights.h5`,
`keras_best_last.h5`) keep the temp name and the copy: overwriting them
before the record changes would break "the record and the file agree".

>>> is_marker(marker_name()), is_marker(".kb-tmp-0123456789ab-best.weights.h5")
(True, False)
"""

from __future__ import annotations

import json
from typing import Iterable

from keras_best.core import names
from keras_best.storage import files
from keras_best.storage.checks import BOOKKEEPING

MARKER_SUFFIX = "-keras_best_uploads.json"


def marker_name() -> str:
    """A fresh marker's name (a temp name: `names.is_leftover` knows it)."""
    return names.tmp_path(MARKER_SUFFIX[1:])


def is_marker(name: str) -> bool:
    return names.is_tmp_name(name) and name.endswith(MARKER_SUFFIX)


def is_named(name: str, named: set[str]) -> bool:
    """Whether `name` is one of `named` or a shard of a set among them."""
    return name in named or any(files.is_set_name(s) and files.is_shard_of(name, s) for s in named)


def straight(directory: str, renames: Iterable[tuple[str, str]], jobs: Iterable[str],
             named_before: set[str] | None, named_after: set[str], deletes: Iterable[str]) -> dict[str, str]:
    """`{tmp: final}` for the renames whose file may be uploaded under its final
    name: on an object store, written by a job of this commit, a name the record
    before does not name (`named_before`; `None`: not known, then none) and the
    new one does."""
    if named_before is None or not files.filesystem(directory).object_store:
        return {}
    jobs, deletes = set(jobs), set(deletes)
    finals = [f for _, f in renames]
    return {tmp: final for tmp, final in renames
            if tmp in jobs and finals.count(final) == 1 and final not in deletes
            and not is_named(final, named_before) and is_named(final, named_after)}


def announce(directory: str, finals: Iterable[str]) -> str:
    """Write a marker listing `finals` (before they are uploaded); return its name."""
    marker = marker_name()
    files.write_bytes_atomic(files.join(directory, marker),
                             json.dumps({"uploads": sorted(finals)}).encode("utf-8"))
    return marker


def listed(directory: str, marker: str) -> list[str]:
    """The names the marker `marker` lists (plain names only: anything else in it is ignored)."""
    try:
        data = json.loads(files.read_bytes(files.join(directory, marker)).decode("utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    found = data.get("uploads") if isinstance(data, dict) else None
    return [n for n in found if names.name_problem(n, BOOKKEEPING, state=True) is None
                and not n.startswith(names.HISTORY_PART_PREFIX)] if isinstance(found, list) else []


def orphans(directory: str, markers: Iterable[str], named: set[str] | None) -> list[str]:
    """The names the `markers` list that the record does not name (`named`;
    `None`: a record is there but cannot be read, then none: nothing it may
    name is touched)."""
    if named is None:
        return []
    found = {n for m in markers for n in listed(directory, m)}
    return sorted(n for n in found if not is_named(n, named))
