"""How the run directory changes: one small journaled transaction at a time.

Every change to the run directory is a `Transaction`, committed by `commit`:

1. new files are written under temp names and fsynced, and new history lines
   are written at the record's `history_bytes` offset and fsynced;
2. the record is written with the new state *and* a journal
   (`"pending": {"renames": [[tmp, final], ...], "deletes": [...]}`);
3. the renames and deletes are applied (`apply`);
4. the record is written again without the journal.

A crash before (2) leaves the old record, stray temp files and history bytes
past the recorded offset (ignored, and overwritten by the next append). A
crash after (2) is rolled forward (`roll_forward`): a temp file that still
exists is the content of its final name. So the record and the files never
disagree, and `load_best` can read a directory at any instant, even while a
run is writing.

On an object store, a job's file whose final name the record before does not
name is uploaded straight to that name, announced first in a marker
(`keras_best.storage.uploads`), which also lists the commit's deletes: the
record is then written once, and a crash leaves names the next start removes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from keras_best.core import names
from keras_best.storage import files, history, uploads
from keras_best.storage.record import RunRecord


@dataclasses.dataclass
class Transaction:
    """One change to the run directory.

    Attributes:
        record: the `RunRecord` after the commit.
        jobs: `(write_fn, tmp_rel)` pairs: `write_fn(local_path)` writes a
            complete file whose temp name is `tmp_rel`.
        renames: `(tmp_rel, final_rel)` pairs moved into place on commit
            (jobs' temp files and files already written under temp names).
        deletes: files (relative) removed on commit.
        history: JSON lines appended to the history file at `record.history_bytes
            - len(history)` before the record is written.
        rollback: anything; `Writer.take_error` returns it with the error of
            a background commit (for a merged transaction: the oldest's).
        done: `(tmp_rel, fn)` pairs, each `fn(committed)` called once. For a
            job's `tmp_rel`: when the job is over (written, failed, dropped
            by a `merge`): its host copies may then be reused (see
            `keras_best.storage.buffers`). For `None`: when the state before the
            transaction is no longer needed, with `True` once it is
            committed or merged after an older one (the merged transaction
            rolls back past it), `False` when it failed or was dropped.
        sizes: with `max_disk`, the run's measured sizes by name: the commit
            adds the bytes of the files it renames in (a sharded set: their
            sum, under the set's name) and records them.
        started: jobs' temp names whose writing began before the commit (an
            Orbax save that every process started): a `merge` never drops
            them, as their files would be left behind half-made.
    """

    record: RunRecord
    jobs: list[tuple[Callable[[str], None], str]] = dataclasses.field(default_factory=list)
    renames: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    deletes: list[str] = dataclasses.field(default_factory=list)
    rollback: Any = None  # given back with a background error (the caller's state before)
    history: bytes = b""
    history_head: Callable[[], bytes] | None = None  # the encoded entries before `history`
    done: list[tuple[str | None, Callable[[bool], None]]] = dataclasses.field(default_factory=list)
    sizes: dict[str, int] | None = None
    started: list[str] = dataclasses.field(default_factory=list)

    def over(self, committed: bool) -> None:
        """Run the `done` callbacks, once."""
        done, self.done = self.done, []
        for _, fn in done:
            fn(committed)


def commit(directory: str, txn: Transaction, before: RunRecord | None = None) -> None:
    """Write `txn` so that a crash at any instant leaves a consistent run.

    `before`: on an object store, the record before the commit (`None`: read
    from the store); it tells the history's parts (`txn.record` gets the new
    ones) and which names may be uploaded straight (`uploads`)."""
    store = files.filesystem(directory).object_store
    known, before = (True, before) if before is not None or not store else _record_on_disk(directory)
    straight = uploads.straight(directory, txn.renames, [tmp for _, tmp in txn.jobs],
                                before.named_files() if before is not None else set() if known else None,
                                txn.record.named_files(), txn.deletes)
    # The marker lists the deletes too: then a crash after the record leaves nothing the next start keeps.
    marker = uploads.announce(directory, [*straight.values(), *txn.deletes]) if straight else None
    written, landed = [], {}
    try:
        for write_fn, tmp_rel in txn.jobs:
            written.append(tmp_rel)
            final = straight.get(tmp_rel)
            where = files.write_durably(files.join(directory, tmp_rel), write_fn,
                                        files.join(directory, final) if final else None)
            if final and where != files.join(directory, tmp_rel):
                landed[tmp_rel] = final
    except BaseException:
        for tmp_rel in [t for t, _ in txn.renames] + written + list(straight.values()) + [marker]:
            if tmp_rel:
                files.remove(files.join(directory, tmp_rel), missing_ok=True)
        raise
    if txn.sizes is not None:
        measure(directory, txn, [(landed.get(tmp, tmp), final) for tmp, final in txn.renames])
    renames = [(tmp, final) for tmp, final in txn.renames if tmp not in landed]
    offset, stale = txn.record.history_bytes - len(txn.history), []
    if store:
        parts = before.history_parts if (before is not None and before.history_bytes == offset
                                         and before.legacy_history is None) else None
        if txn.history:
            parts, stale = history.append(directory, offset, txn.history, txn.history_head or (lambda: b""), parts)
        txn.record = dataclasses.replace(txn.record, history_parts=parts or ())
    elif txn.history:
        history.append(directory, offset, txn.history, txn.history_head or (lambda: b""))
    if not renames and (not txn.deletes or marker):
        txn.record.write(directory)
        if txn.deletes:  # names the record no longer names (the marker lists them)
            apply(directory, {"renames": [], "deletes": list(txn.deletes)})
    else:
        pending = {"renames": [list(r) for r in renames], "deletes": list(txn.deletes)}
        dataclasses.replace(txn.record, pending=pending).write(directory)
        apply(directory, pending)
        # The journal above is durable: if a crash loses this rename, the journal
        # is found and applied again (idempotent); the next commit's fsync of the
        # directory makes it durable. One journal commit of the file system less.
        txn.record.write(directory, sync_dir=False)
    for name in stale + ([marker] if marker else []):  # a crash leaves them: see `roll_forward`
        files.remove_file(files.join(directory, name))


def _record_on_disk(directory: str) -> tuple[bool, RunRecord | None]:
    """The record in `directory` (`None` when there is none) and whether it is
    known (`False`: one is there but cannot be read)."""
    try:
        return True, RunRecord.read(directory)
    except FileNotFoundError:
        return True, None
    except ValueError:
        return False, None


def measure(directory: str, txn: Transaction, written: list[tuple[str, str]]) -> None:
    """Add the sizes of the files `txn` brings in (`written`: where each is,
    its final name) to `txn.sizes`, by final name, and put the sizes into its record."""
    finals = [final for _, final in written]
    found: dict[str, int] = {}
    for tmp, final in written:
        name = next((f for f in finals if files.is_set_name(f) and files.is_shard_of(final, f)), final)
        found[name] = found.get(name, 0) + files.size(files.join(directory, tmp))
    txn.sizes.update(found)
    txn.record = dataclasses.replace(txn.record, state=txn.record.state.with_sizes(dict(txn.sizes)))


def roll_forward(directory: str, record: RunRecord) -> RunRecord:
    """Finish a pending transaction left by a crash; remove stray temp files.

    Returns the record without its journal (and writes it when it changed).
    """
    if record.pending:
        apply(directory, record.pending)
        record = dataclasses.replace(record, pending=None)
        record.write(directory)
    remove_tmp_files(directory, record)
    return record


def remove_tmp_files(directory: str, record: RunRecord | None = None) -> None:
    """Delete temp files a crash left (names made by `files.tmp_path`, Orbax's
    temp directories), the files a marker of `uploads` lists that the `record`
    does not name (without a `record`: when there is none), what it left
    outside them (`files.remove_leftovers`) and, with the `record`, history
    parts it does not list."""
    try:
        found = files.listdir(directory)
    except FileNotFoundError:  # nothing there yet (an object store holds no empty directory)
        found = []
    markers = [name for name in found if uploads.is_marker(name)]
    doomed: list[str] = []
    if markers:
        named = record.named_files() if record is not None else (
            None if files.exists(files.join(directory, files.MANIFEST_NAME)) else set())
        doomed = uploads.orphans(directory, markers, named)
    for name in doomed:
        for member in files.members(directory, name):
            files.remove(files.join(directory, member), missing_ok=True)
    files.remove_leftovers(directory, frozenset(doomed))
    parts = set(record.history_files()) if record is not None else None
    for name in sorted(found, key=uploads.is_marker):  # the markers last: a crash before repeats this
        if names.is_leftover(name) or (parts is not None and name.startswith(names.HISTORY_PART_PREFIX)
                                       and name not in parts):
            files.remove(files.join(directory, name), missing_ok=True)


def apply(directory: str, pending: Mapping[str, Any]) -> None:
    """Apply a journal: renames whose temp file exists, then deletes.

    A sharded set (`files.members`) is one unit: a renamed-in set's shards that
    the journal did not rename are an older set's under the same name (with
    more shards) and go; a deleted set goes whole, its index last. Applying
    again after a crash finishes the same change (idempotent).
    """
    finals = set()
    for tmp, final in pending.get("renames", []):
        finals.add(final)
        try:  # a missing temp file was renamed already (no existence check: one request less)
            files.replace(files.join(directory, tmp), files.join(directory, final))
        except FileNotFoundError:
            pass
    stale = [m for f in finals if files.is_set_name(f) for m in files.members(directory, f) if m not in finals]
    for rel in stale + [m for d in pending.get("deletes", []) for m in files.members(directory, d)]:
        files.remove(files.join(directory, rel), missing_ok=True)
