"""The part of a training state that `fit()` or a custom loop needs to go on in the middle of an epoch.

Group "fit" of the state file: the values of the model's compiled metrics'
variables at the saved batch (`model.metrics`: `fit()` resets them at each
epoch start, so a resumed epoch puts them back before its first batch), and
the process-wide random state as of the start of the saved epoch
(`rng.capture_global`: the state the data adapters shuffled that epoch with, so
that the resumed epoch draws the same order). A state without the group (an
older keras-best) resumes `fit()` at the start of the epoch.

A custom loop's `tracker.batches()` keeps the same part as group "loop", with no
metric variables (`keras_best.frontends.loop_resume`).

`holder` is the front end's helper (`keras_best.frontends.fit_resume`, `loop_resume`):
`holder.metric_variables()` and `holder.epoch_random` are saved; `assign`
hands what was read to `holder.take(...)`; nothing is assigned to the model here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from keras_best.storage.buffers import HostBuffers

RANDOM = "random/"


class FitProgress:
    """The "fit" group (or `name`): metric variables "0", "1"... and `RANDOM` + generator name."""

    def __init__(self, holder: Any, name: str = "fit") -> None:
        self.holder, self.name = holder, name

    def copies(self, buffers: HostBuffers, reuse: Mapping[int, np.ndarray] | None) -> dict[str, np.ndarray]:
        out = {str(i): a for i, a in enumerate(buffers.copies(self.holder.metric_variables(), reuse))}
        out.update({RANDOM + k: np.array(a) for k, a in (self.holder.epoch_random or {}).items()})
        return out

    def write(self, group: Any, copies: Mapping[str, np.ndarray]) -> None:
        group.attrs["metrics"] = sum(1 for k in copies if not k.startswith(RANDOM))
        for key, a in copies.items():
            group.create_dataset(key, data=np.asarray(a))

    def read(self, group: Any, where: str) -> dict[str, Any] | None:
        """`None` for a state without the group, or whose metrics do not fit this model's."""
        if group is None:
            return None
        variables = self.holder.metric_variables()
        count = int(group.attrs["metrics"])
        if count != len(variables) or any(tuple(group[str(i)].shape) != tuple(v.shape)
                                          for i, v in enumerate(variables)):
            return None
        random = group.get(RANDOM.rstrip("/"))
        return {"metrics": [group[str(i)][()] for i in range(count)],
                "random": {} if random is None else {k: d[()] for k, d in random.items()}}

    def assign(self, values: dict[str, Any] | None) -> None:
        self.holder.take(values)
