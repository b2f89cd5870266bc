"""A new run in a directory that holds another one (`resume=False`): the old
run's files move aside, into `<run_dir>/previous-<n>/`, never deleted and
never outside the run directory.

What moves is what the old record names (kept and archived files, with a
sharded set's shards, training states, the export), then its history and, last,
`keras_best.json`: a crash in between leaves the record beside the files it
still names, and the next start moves the rest into the next `previous-<n>`.
The moved directory is a run directory of its own: `load_best(model,
"runs/x/previous-1")` and `keras-best inspect` read it. Other files (the
user's own) stay where they are.
"""

from __future__ import annotations

from keras_best.storage import files
from keras_best.storage.record import RunRecord

PREFIX = "previous-"


def free_name(directory: str) -> str:
    """`previous-<n>`, the first `n` from 1 not taken in `directory`."""
    n = 1
    while files.exists(files.join(directory, f"{PREFIX}{n}")):
        n += 1
    return f"{PREFIX}{n}"


def move_aside(directory: str, record: RunRecord) -> str:
    """Move `record`'s run into a new `previous-<n>` of `directory`; return its name."""
    target = free_name(directory)
    files.makedirs(files.join(directory, target))
    names = [m for name in sorted(record.named_files()) for m in files.members(directory, name)]
    for name in dict.fromkeys(names + record.history_files() + [files.MANIFEST_NAME]):  # the record last
        source = files.join(directory, name)
        if not files.exists(source):
            continue  # a file the record names that a crash or a user removed
        files.replace(source, files.join(directory, files.join(target, name)))  # plain names: no folder to make
    return target
