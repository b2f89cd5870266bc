"""How much host memory a run's saves take: one save's host copies at most.

Every save copies the variables it writes to the host (`engine.snapshot`,
`state.snapshot`) so that the writer can write them while training goes on.
`HostMemory` bounds those copies by `max_host_memory` bytes (by default, one
save: the model's weights and the optimizer's variables):

- before an update copies, it waits until the copies the writer still holds
  (`HostBuffers.held_bytes`: a save not written yet) leave room for its own
  (`make_room`, through `Writer.wait_for`): when the disk falls behind,
  training waits for it instead of taking another set of copies. A newer
  update merged with a waiting one still frees the older one's copies
  (`storage.writer.merge`);
- a budget below one save takes no copy at all: each file is written in the
  training thread, reading one variable at a time (`stream`), as
  `keras.callbacks.ModelCheckpoint` does: memory stays flat, the training
  thread waits for the disk at each save;
- `restore_best_weights` keeps no copy of the best: it is read back from its
  file at `finish()` (`restore_best`). A worker of a job of several processes,
  which cannot read the chief's files, keeps one (`keeps_best`), except with
  a collective load (Orbax: every process reads its own shards back).

Example:
    >>> memory = HostMemory(None, writer, chief=True)  # doctest: +SKIP
    >>> stream = memory.make_room(buffers, model, optimizer)  # before the snapshot  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from keras_best.keras_adapter.host import nbytes_of
from keras_best.runner import distribute
from keras_best.storage import files
from keras_best.storage.buffers import HostBuffers
from keras_best.storage.writer import Writer


class HostMemory:
    """The host-memory budget of one run (`max_host_memory`, bytes or None)."""

    def __init__(self, budget: int | None, writer: Writer, chief: bool,
                 load: Callable[[Any, str], None] | None = None) -> None:
        self.budget, self.writer, self.chief = budget, writer, chief
        self.load = load  # a collective load every process makes (Orbax): no process keeps a copy
        self._keeps_best: bool | None = None if load is None else False  # known at the first update (or resume)

    def make_room(self, buffers: HostBuffers, model: Any, optimizer: Any, parts: Sequence[Any] = ()) -> bool:
        """Wait until the copies the writer still holds leave room for one
        save's (with the training-state `parts` it writes) within the budget;
        return whether to stream instead (a budget below one save: no copy is taken)."""
        need = one_save_bytes(model, optimizer, parts)
        if self.budget is not None and self.budget < need:
            return True
        limit = max(need, self.budget or 0)
        self.writer.wait_for(lambda: buffers.held_bytes + need <= limit)
        return False

    def keeps_best(self, model: Any) -> bool:
        """Whether `restore_best_weights` keeps a host copy of the best (only
        in a job of several processes, whose workers cannot read the chief's files)."""
        if self._keeps_best is None:
            self._keeps_best = not self.chief or distribute.spans_processes(model)
        return self._keeps_best

    def restore_best(self, model: Any, kept: list[Any] | None, buffers: HostBuffers, path: str | None) -> bool:
        """Put the best weights back into `model` (its own variables, not its
        optimizer's): the copy `kept`, else the file `path` (what
        `model.load_weights` reads); whether there was a best to restore."""
        if kept is not None:
            # A backend may keep the arrays as the variables' memory (JAX on CPU): never reuse them.
            buffers.forget(kept)
            model.set_weights(kept)
            return True
        if path is None or self.keeps_best(model):
            return False
        if self.load is not None:
            self.load(model, path)
        else:
            files.load_weights(model, path, model_only=True)
        return True


def one_save_bytes(model: Any, optimizer: Any, parts: Sequence[Any] = ()) -> int:
    """The host bytes of one save at most: the model's weights, the variables
    of its built optimizers (the tracker's and the model's), and the variables
    of the training-state `parts` (other optimizers, `state=` models and seeds;
    each variable counted once). E.g. a GAN's two optimizers count both."""
    built = [o for o in {id(o): o for o in (optimizer, getattr(model, "optimizer", None))}.values()
             if o is not None and getattr(o, "built", False)]
    held = [v for part in parts for v in getattr(part, "variables", ())]
    return nbytes_of(list(model.weights) + [v for o in built for v in o.variables] + held)


def read_weights_of(model: Any, path: str) -> list[Any]:
    """The weights `model.load_weights(path)` would give `model`, which keeps its own."""
    current = model.get_weights()
    try:
        files.load_weights(model, path)
        return model.get_weights()
    finally:
        model.set_weights(current)
