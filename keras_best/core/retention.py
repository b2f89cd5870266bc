"""Which saved files to keep: pure functions over `Record`s, no I/O.

Records are ranked by their `Score` with `keras_best.core.objective.rank_key`,
the same order `Monitor` uses to decide an improvement. Every `mode` argument
below is "min"/"max" or a sequence of those (primary, then tie-breaks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from keras_best.core.objective import Score, rank_key


@dataclasses.dataclass(frozen=True)
class Record:
    """One saved file: the epoch it holds, its monitored value, its metrics.

    `path` is relative to the run directory. `ties` are the tie-break values
    of a list `monitor`; `feasible` is false for an epoch that broke a
    `require` constraint (kept only with `save_best_only=False`).
    """

    epoch: int
    value: float
    path: str
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    step: int | None = None
    ties: tuple[float, ...] = ()
    feasible: bool = True

    @property
    def score(self) -> Score:
        return Score(self.value, self.ties, self.feasible)

    def to_json(self) -> dict[str, Any]:
        data = {
            "epoch": self.epoch,
            "value": self.value,
            "path": self.path,
            "step": self.step,
            "metrics": dict(self.metrics),
        }
        if self.ties:
            data["ties"] = list(self.ties)
        if not self.feasible:
            data["feasible"] = False
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        for key in ("epoch", "value", "path"):
            if key not in data:
                raise ValueError(f"Required record attribute {key!r} is absent from {dict(data)!r}")
        return cls(
            epoch=int(data["epoch"]),
            value=float(data["value"]),
            path=str(data["path"]),
            metrics={k: float(v) for k, v in dict(data.get("metrics") or {}).items()},
            step=data.get("step"),
            ties=tuple(float(t) for t in data.get("ties") or ()),
            feasible=bool(data.get("feasible", True)),
        )


def _modes(mode: str | Sequence[str]) -> tuple[str, ...]:
    return (mode,) if isinstance(mode, str) else tuple(mode)


def sort_key(mode: str | Sequence[str]):
    """Key that sorts records best first; equal scores go to the earlier epoch."""
    modes = _modes(mode)
    return lambda r: (*rank_key(r.score, modes), r.epoch, r.step or 0)


def ranked(records: Iterable[Record], mode: str | Sequence[str]) -> list[Record]:
    """`records` best first (equal scores: earlier first)."""
    return sorted(records, key=sort_key(mode))


def retain(
    kept: Sequence[Record],
    new: Record,
    keep_top_k: int | None,
    mode: str | Sequence[str],
    pinned: tuple[int, int | None] | None = None,
) -> tuple[list[Record], list[Record], list[Record]]:
    """Add `new` to `kept`; return `(kept, evicted, replaced)`.

    `replaced` are records whose file `new` overwrote (same path): they leave
    the kept set without a delete. `evicted` fell out of the top k: their
    files are to be deleted. With `keep_top_k=None` nothing is evicted.
    `pinned` is the `(epoch, step)` of the run's best (the one `Monitor`
    chose, with `min_delta`): never evicted, even when files within
    `min_delta` of it rank above it by raw value.

    >>> a, b = Record(0, 0.5, "a"), Record(1, 0.4, "b")
    >>> kept, evicted, _ = retain([a], b, 1, "min")
    >>> [r.path for r in kept], [r.path for r in evicted]
    (['b'], ['a'])
    """
    replaced = [r for r in kept if r.path == new.path]
    candidates = [r for r in kept if r.path != new.path] + [new]
    if keep_top_k is None:
        return candidates, [], replaced
    order = ranked(candidates, mode)
    order.sort(key=lambda r: not _is(r, pinned))  # stable: the pinned record first
    keep = {id(r) for r in order[:keep_top_k]}
    kept_out = [r for r in candidates if id(r) in keep]
    evicted = [r for r in candidates if id(r) not in keep]
    return kept_out, evicted, replaced


def _is(record: Record, pinned: tuple[int, int | None] | None) -> bool:
    return pinned is not None and (record.epoch, record.step) == tuple(pinned)
