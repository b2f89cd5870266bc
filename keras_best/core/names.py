"""The names of a run directory: its bookkeeping files, temp names, training
states, and what makes a recorded name a plain file name inside it.

Pure string functions (no I/O): the policy and the record check names with
them; `keras_best.storage.files` acts on them.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from typing import Any

TMP_PREFIX = ".kb-tmp-"
COMPLETE_MARKER = ".kb-complete"
_TMP_RE = re.compile(r"^\.kb-tmp-[0-9a-f]{12}-")
ORBAX_TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's own temp directories (`<step>.orbax-checkpoint-tmp-*`)

# The names a run directory's own bookkeeping uses: never a saved model's name.
MANIFEST_NAME = "keras_best.json"
HISTORY_NAME = "keras_best_history.jsonl"
LOCK_NAME = ".keras_best.lock"
LAST_NAME = "keras_best_last.h5"
SHARDED_STATE = ".orbax"  # the suffix of a training state saved through Orbax (a directory)
SHARDED_LAST_NAME = "keras_best_last" + SHARDED_STATE
RESERVED_NAMES = (MANIFEST_NAME, HISTORY_NAME, LOCK_NAME, LAST_NAME, SHARDED_LAST_NAME)
STATE_PREFIX = "keras_best_state-"  # training states kept by keep_last > 1
HISTORY_PART_PREFIX = "keras_best_history-"  # on object stores: the history's parts after the file
STUDY_FILE = "keras_best_study.json"  # what a search's shared directory holds (Optuna, KerasTuner)


def state_name(epoch: int, step: int | None, suffix: str = ".h5") -> str:
    """The name of the training state of `(epoch, step)` when several are kept
    (`suffix`: ".h5", or `SHARDED_STATE` for a state saved through Orbax).

    >>> state_name(3, None), state_name(3, 120), state_name(3, None, SHARDED_STATE)
    ('keras_best_state-0003.h5', 'keras_best_state-0003-000120.h5', 'keras_best_state-0003.orbax')
    """
    return f"{STATE_PREFIX}{epoch:04d}{'' if step is None else f'-{step:06d}'}{suffix}"


def last_name(suffix: str = ".h5") -> str:
    """The name of the one training state `keep_last=1` keeps.

    >>> last_name(), last_name(SHARDED_STATE)
    ('keras_best_last.h5', 'keras_best_last.orbax')
    """
    return LAST_NAME if suffix == ".h5" else SHARDED_LAST_NAME


def is_state_name(name: str) -> bool:
    """Whether `name` is a training state's (the last one, or one `keep_last` keeps)."""
    return name in (LAST_NAME, SHARDED_LAST_NAME) or name.startswith(STATE_PREFIX)


SET_SUFFIX = ".weights.json"  # a sharded weights set's index (Keras 3.10+: `save_weights(max_shard_size=)`)


def is_set_name(name: str) -> bool:
    """Whether `name` is the index of a sharded weights set (its files: the
    index and `shard_name(name, i)` for i = 0, 1, ...)."""
    return isinstance(name, str) and name.endswith(SET_SUFFIX) and len(name) > len(SET_SUFFIX)


def shard_name(index: str, i: int) -> str:
    """The name of shard `i` of the set `index`, as Keras's `ShardedH5IOStore` names it.

    >>> shard_name("best.weights.json", 2)
    'best_00002.weights.h5'
    """
    return f"{index[: -len('.json')].replace('.weights', '')}_{i:05}.weights.h5"


def is_shard_of(name: str, index: str) -> bool:
    """Whether `name` is a shard name of the set `index` (whatever its number).

    >>> is_shard_of("best_00012.weights.h5", "best.weights.json"), is_shard_of("best.weights.h5", "best.weights.json")
    (True, False)
    """
    head = shard_name(index, 0)[: -len("00000.weights.h5")]
    tail = name[len(head):]
    return (name.startswith(head) and len(tail) >= len("00000.weights.h5") and tail.endswith(".weights.h5")
            and tail[: -len(".weights.h5")].isdigit() and tail[: -len(".weights.h5")].isascii())


def is_remote(path: str) -> bool:
    """True for `gs://`, `s3://`, `memory://`, `ram://`... (anything with a scheme
    but `file://`, which `fspath` turns into a local path)."""
    return "://" in str(path) and not str(path).startswith("file://")


def fspath(path: Any) -> str:
    """`os.fspath(path)`, with a `file://` URL turned into its local path.

    >>> fspath("file:///data/runs/exp1"), fspath("gs://bucket/exp1")
    ('/data/runs/exp1', 'gs://bucket/exp1')
    """
    path = os.fspath(path)
    if isinstance(path, str) and path.startswith("file://"):
        local = path[len("file://"):]
        local = local[len("localhost"):] if local.startswith("localhost/") else local
        if not local.startswith("/"):
            raise ValueError("A file:// URL names an absolute local path, as in file:///data/runs/exp1 "
                             f"(three slashes). Received: {path}")
        return local
    return path


def join(directory: str, name: str) -> str:
    if is_remote(directory):
        return directory.rstrip("/") + "/" + name
    return os.path.join(directory, name)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def tmp_path(final_path: str) -> str:
    """A fresh temp name beside `final_path` that keeps its suffix.

    `best.weights.h5` -> `.kb-tmp-1a2b3c4d5e6f-best.weights.h5`: the same
    directory (so `os.replace` is atomic) and the same ending (Keras checks it).
    """
    directory, name = final_path[: len(final_path) - len(basename(final_path))], basename(final_path)
    return f"{directory}{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"


def shared_tmp_path(final_path: str, key: str) -> str:
    """Like `tmp_path`, but the same on every process that passes the same `key`
    (a save every process writes a part of: an Orbax checkpoint).

    >>> shared_tmp_path("best", "7") == shared_tmp_path("best", "7") != shared_tmp_path("best", "8")
    True
    """
    directory, name = final_path[: len(final_path) - len(basename(final_path))], basename(final_path)
    return f"{directory}{TMP_PREFIX}{hashlib.sha1(key.encode()).hexdigest()[:12]}-{name}"


def is_tmp_name(name: str) -> bool:
    return bool(_TMP_RE.match(name))


def history_part_name(i: int) -> str:
    """The name of part `i` (1-based) of the history on an object store: the
    entries of one commit, appended after `keras_best_history.jsonl`.

    >>> history_part_name(3)
    'keras_best_history-00003.jsonl'
    """
    return f"{HISTORY_PART_PREFIX}{i:05d}.jsonl"


def is_leftover(name: str) -> bool:
    """A temp name a crash may leave: ours (`tmp_path`) or Orbax's."""
    return is_tmp_name(name) or ORBAX_TMP_MARK in name


def name_problem(name: object, reserved: tuple[str, ...] = RESERVED_NAMES, state: bool = False) -> str | None:
    """Why `name` is not a plain file name inside a run directory (`None` if it is).

    A plain name has no directory part (no separator, not `.` or `..`, not
    absolute, not empty) and is neither a temp name nor one of `reserved`, nor
    (unless `state`) a training state's name.

    >>> name_problem("best.weights.h5") is None, name_problem("../x"), name_problem("keras_best.json")
    (True, 'it has a directory part', 'it is the name of keras_best.json')
    """
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it names a directory"
    if "\0" in name or any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep)) or os.path.isabs(name):
        return "it has a directory part"
    if name.startswith(TMP_PREFIX):
        return "it is a temp file name"
    if name in reserved:
        return f"it is the name of {name}"
    if name.startswith(HISTORY_PART_PREFIX):
        return f"it starts with {HISTORY_PART_PREFIX!r}, the names of the history's parts"
    if name.startswith(STATE_PREFIX) and not state:
        return f"it starts with {STATE_PREFIX!r}, the names of the kept training states"
    return None
