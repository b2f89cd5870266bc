"""Which saved files to keep: pure functions over `Record`s, no I/O."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Record:
    """One saved file: the epoch it holds, its monitored value, its metrics.

    `path` is relative to the run directory.
    """

    epoch: int
    value: float
    path: str
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "value": self.value,
            "path": self.path,
            "step": self.step,
            "metrics": dict(self.metrics),
        }

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
        )


def sort_key(mode: str):
    """Key that sorts records best first; ties go to the earlier epoch."""
    sign = 1.0 if mode == "min" else -1.0
    return lambda r: (sign * r.value, r.epoch, r.step or 0)


def ranked(records: Iterable[Record], mode: str) -> list[Record]:
    """`records` best first (ties: earlier first)."""
    return sorted(records, key=sort_key(mode))


def admits(kept: Sequence[Record], value: float, keep_top_k: int, mode: str) -> bool:
    """Would a new finite `value` enter the best `keep_top_k` of `kept`?"""
    if not math.isfinite(value):
        return False
    if len(kept) < keep_top_k:
        return True
    worst = ranked(kept, mode)[keep_top_k - 1]
    return value < worst.value if mode == "min" else value > worst.value


def retain(
    kept: Sequence[Record], new: Record, keep_top_k: int | None, mode: str
) -> tuple[list[Record], list[Record], list[Record]]:
    """Add `new` to `kept`; return `(kept, evicted, replaced)`.

    `replaced` are records whose file `new` overwrote (same path): they leave
    the kept set without a delete. `evicted` fell out of the top k: their
    files are to be deleted. With `keep_top_k=None` nothing is evicted.

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
    keep = {id(r) for r in order[:keep_top_k]}
    kept_out = [r for r in candidates if id(r) in keep]
    evicted = [r for r in candidates if id(r) not in keep]
    return kept_out, evicted, replaced


def best_of(records: Iterable[Record], mode: str) -> Record | None:
    order = ranked(records, mode)
    return order[0] if order else None
