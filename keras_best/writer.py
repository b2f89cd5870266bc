"""Apply transactions to the run directory (see `manifest` for the protocol)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from keras_best import files, manifest


@dataclasses.dataclass
class Transaction:
    """One change to the run directory.

    Attributes:
        jobs: `(write_fn, tmp_rel)` pairs: `write_fn(local_path)` writes a
            complete file whose temp name is `tmp_rel`.
        renames: `(tmp_rel, final_rel)` pairs moved into place on commit
            (jobs' temp files and files already written under temp names).
        deletes: files (relative) removed on commit.
        state: the manifest body after the commit.
    """

    state: dict[str, Any]
    jobs: list[tuple[Callable[[str], None], str]] = dataclasses.field(default_factory=list)
    renames: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    deletes: list[str] = dataclasses.field(default_factory=list)


def commit(directory: str, txn: Transaction) -> None:
    """Write `txn` so that a crash at any instant leaves a consistent run."""
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
    if not txn.renames and not txn.deletes:
        manifest.write(directory, txn.state)
        return
    pending = {"renames": [list(r) for r in txn.renames], "deletes": list(txn.deletes)}
    manifest.write(directory, {**txn.state, "pending": pending})
    manifest.apply(directory, pending)
    manifest.write(directory, txn.state)


class Writer:
    """Commits transactions for one run directory.

    Only the chief of a distributed job writes: other workers are given a
    writer with `enabled=False`, which drops every transaction.
    """

    def __init__(self, directory: str, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled

    def submit(self, txn: Transaction) -> None:
        if self.enabled:
            commit(self.directory, txn)

    def flush(self) -> None:
        """Wait until every submitted transaction is on disk."""

    def close(self) -> None:
        self.flush()
