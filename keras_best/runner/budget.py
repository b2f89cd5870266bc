"""What a run's kept files take on disk, for `max_disk`.

The decision is the policy's (`keras_best.core.retention.DiskBudget`, in the
training thread, before anything is written); this module gives it sizes:

- a committed file's size is measured by the commit that writes it
  (`storage.journal.commit`: the temp files once written, a sharded set as
  the sum of its files, through the file-system layer, so remote run
  directories too) into `DiskUsage.measured`, and the record it writes holds
  the measured sizes;
- a file not written yet (this update's) is estimated as the largest measured
  file of its kind (model file or training state): while a kind has none
  measured, the update waits for the writer's pending commit (once per kind);
  a model file before any is measured is bounded by a measured training state
  (which holds the model's weights), and at the very first update, estimated
  from the bytes of the variables it holds. A file larger than its estimate
  (only possible at the first update, for a file that is not the best) is
  corrected at the next update, which evicts what then exceeds;
- files recorded without a size (a run resumed with `max_disk` newly set) are
  measured on disk once.

The warning when the best and the newest training state alone exceed
`max_disk` is given once per run.
"""

from __future__ import annotations

import warnings
from typing import Any

from keras_best.core.names import is_state_name
from keras_best.core.policy import Plan, RunState
from keras_best.keras_adapter.host import nbytes_of
from keras_best.runner import distribute
from keras_best.runner.memory import one_save_bytes
from keras_best.storage import files
from keras_best.storage.writer import Writer


class DiskUsage:
    """The sizes `max_disk` (bytes or `None`) decides with, for one run directory."""

    def __init__(self, max_disk: int | None, directory: str, writer: Writer) -> None:
        self.max_disk, self.directory, self.writer = max_disk, directory, writer
        self.measured: dict[str, int] | None = None if max_disk is None else {}  # filled by the writer
        self._warned = False
        self._checked = False
        self._seeded = False

    def sized(self, state: RunState) -> RunState:
        """`state` with the measured size of every file it names."""
        if self.measured is None:
            return state
        if not self._seeded:  # a resumed run's recorded sizes: measured by the commits that wrote them
            self._seeded = True
            for r in state.kept + state.archived:
                self.measured.setdefault(r.path, r.size) if r.size is not None else None
            for s in ((state.last,) if state.last else ()) + tuple(state.states):
                self.measured.setdefault(s["path"], s["size"]) if s.get("size") is not None else None
        named = [(r.path, r.size) for r in state.kept + state.archived] + [
            (s["path"], s.get("size")) for s in ((state.last,) if state.last else ()) + tuple(state.states)]
        for name, size in named:
            if size is None and name not in self.measured:  # recorded without a size: measured once
                try:
                    self.measured[name] = sum(files.size(files.join(self.directory, m))
                                              for m in files.members(self.directory, name))
                except OSError:
                    pass
        return state.with_sizes(dict(self.measured))

    def estimate(self, model: Any, optimizer: Any) -> tuple[int, int]:
        """The expected bytes of this update's model file and training state."""
        if self.measured is None:
            return (0, 0)
        if not self._checked:
            self._checked = True
            if distribute.spans_processes(model):
                raise ValueError("`max_disk` is not supported yet in a job of several processes (its eviction "
                                 "decision uses sizes only the chief measures). Drop max_disk there, or bound "
                                 "the files with keep_top_k and keep_last.")
        largest = self._largest()
        if not all(largest):  # a first file of a kind may be in flight: its size is the estimate
            self.writer.flush()
            largest = self._largest()
        # A training state holds the model's weights: before a model file is measured, a measured state bounds it.
        return (largest[0] or largest[1] or nbytes_of(list(model.weights)),
                largest[1] or one_save_bytes(model, optimizer))

    def _largest(self) -> list[int]:
        largest = [0, 0]  # model files, training states
        for name, size in dict(self.measured).items():
            kind = int(is_state_name(name))
            largest[kind] = max(largest[kind], size)
        return largest

    def warn(self, plan: Plan) -> None:
        """Warn once when the best and the newest training state alone exceed `max_disk`."""
        if plan.over_budget is None or self._warned:
            return
        self._warned = True
        kept, limit = plan.over_budget
        warnings.warn(f"max_disk={limit} bytes is less than the best file and the newest training state take "
                      f"together ({kept} bytes): both are kept anyway (they are never evicted), and every other "
                      f"file is evicted. Raise max_disk to at least {kept} to keep more.", stacklevel=5)
