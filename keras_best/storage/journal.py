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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from keras_best.core import names
from keras_best.storage import files, history
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


def commit(directory: str, txn: Transaction, parts: tuple[int, ...] | None = None) -> None:
    """Write `txn` so that a crash at any instant leaves a consistent run.

    `parts`: on an object store, the history's parts the record before lists
    (`None`: read from that record); `txn.record` gets the new ones."""
    written: list[str] = []
    try:
        for write_fn, tmp_rel in txn.jobs:
            written.append(tmp_rel)
            files.write_durably(files.join(directory, tmp_rel), write_fn)
    except BaseException:
        for tmp_rel, _ in txn.renames:
            files.remove(files.join(directory, tmp_rel), missing_ok=True)
        for tmp_rel in written:
            files.remove(files.join(directory, tmp_rel), missing_ok=True)
        raise
    if txn.sizes is not None:
        measure(directory, txn)
    offset, stale = txn.record.history_bytes - len(txn.history), []
    if files.filesystem(directory).object_store:
        parts = parts if parts is not None else _parts_on_disk(directory, offset)
        if txn.history:
            parts, stale = history.append(directory, offset, txn.history, txn.history_head or (lambda: b""), parts)
        txn.record = dataclasses.replace(txn.record, history_parts=parts or ())
    elif txn.history:
        history.append(directory, offset, txn.history, txn.history_head or (lambda: b""))
    if not txn.renames and not txn.deletes:
        txn.record.write(directory)
    else:
        pending = {"renames": [list(r) for r in txn.renames], "deletes": list(txn.deletes)}
        dataclasses.replace(txn.record, pending=pending).write(directory)
        apply(directory, pending)
        # The journal above is durable: if a crash loses this rename, the journal
        # is found and applied again (idempotent); the next commit's fsync of the
        # directory makes it durable. One journal commit of the file system less.
        txn.record.write(directory, sync_dir=False)
    for name in stale:  # history parts now in the history file (a crash leaves them: see `roll_forward`)
        files.remove_file(files.join(directory, name))


def _parts_on_disk(directory: str, nbytes: int) -> tuple[int, ...] | None:
    """The history parts the record in `directory` lists, when its history is `nbytes` long."""
    try:
        record = RunRecord.read(directory)
    except (FileNotFoundError, ValueError):
        return None
    return record.history_parts if record.history_bytes == nbytes and record.legacy_history is None else None


def measure(directory: str, txn: Transaction) -> None:
    """Add the sizes of the temp files `txn` renames in to `txn.sizes`, by
    final name, and put the sizes into its record."""
    finals = [final for _, final in txn.renames]
    found: dict[str, int] = {}
    for tmp, final in txn.renames:
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
    temp directories), what it left outside them (`files.remove_leftovers`) and,
    with the `record`, history parts it does not list."""
    files.remove_leftovers(directory)
    try:
        found = files.listdir(directory)
    except FileNotFoundError:  # nothing there yet (an object store holds no empty directory)
        return
    parts = set(record.history_files()) if record is not None else None
    for name in found:
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
