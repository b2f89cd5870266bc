"""Which saved files to keep: small rules over `Record`s, pure, no I/O.

Each rule is a frozen dataclass with one method, `keep(kept, new)`: the
records it keeps once `new` joins those it kept so far (`new` among them only
when the rule keeps it), as Orbax's preservation policies do. A file stays on
disk while any rule keeps it (`keras_best.core.policy` takes the union):

- `BestK(k, modes)`: the k best saved files (the run's best pinned);
- `Archive(every)`: a file every `every` epochs, never deleted;
- `LastN(n)`: the n newest training states;
- `ArchiveEvery(seconds)`: a file per `seconds` of wall time, never deleted
  (Orbax's `EveryNSeconds`);
- `DiskBudget(max_bytes)`: not a keep rule but a bound over their union: it
  evicts, in a fixed priority, until what is kept fits (see its docstring).

Records are ranked by their `Score` with `keras_best.core.objective.rank_key`,
the same order `Monitor` uses to decide an improvement. Every `mode` argument
below is "min"/"max" or a sequence of those (primary, then tie-breaks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from keras_best.core.objective import Score, rank_key

Position = tuple  # (epoch, step | None): where in training a file was written


@dataclasses.dataclass(frozen=True)
class Record:
    """One saved file: the epoch it holds, its monitored value, its metrics.

    `path` is relative to the run directory. `ties` are the tie-break values
    of a list `monitor`; `feasible` is false for an epoch that broke a
    `require` constraint (kept only with `save_best_only=False`). With
    `smooth=`, `value` (and `ties`) are the smoothed values the file was
    ranked by and `raw` the monitored value as read; otherwise `raw` is None.
    `size` is the bytes of its files (with `max_disk`: measured once written,
    estimated before), `time` the wall time it was saved at (with a time-based archive).
    """

    epoch: int
    value: float
    path: str
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    step: int | None = None
    ties: tuple[float, ...] = ()
    feasible: bool = True
    raw: float | None = None
    size: int | None = None
    time: float | None = None

    @property
    def score(self) -> Score:
        return Score(self.value, self.ties, self.feasible)

    @property
    def position(self) -> Position:
        """`(epoch, step)`: where in training this file was written."""
        return (self.epoch, self.step)

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
        if self.raw is not None:
            data["raw"] = self.raw
        for key in ("size", "time"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
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
            raw=None if data.get("raw") is None else float(data["raw"]),
            size=None if data.get("size") is None else _count(data["size"]),
            time=None if data.get("time") is None else float(data["time"]),
        )


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a size must be an int >= 0, not {value!r}")
    return value


def _modes(mode: str | Sequence[str]) -> tuple[str, ...]:
    return (mode,) if isinstance(mode, str) else tuple(mode)


def sort_key(mode: str | Sequence[str]):
    """Key that sorts records best first; equal scores go to the earlier epoch."""
    modes = _modes(mode)
    return lambda r: (*rank_key(r.score, modes), r.epoch, r.step or 0)


def ranked(records: Iterable[Record], mode: str | Sequence[str]) -> list[Record]:
    """`records` best first (equal scores: earlier first)."""
    return sorted(records, key=sort_key(mode))


@dataclasses.dataclass(frozen=True)
class BestK:
    """Keep the `k` best records (`k=None`: every one).

    `pinned` is the `(epoch, step)` of the run's best (the one `Monitor`
    chose, with `min_delta`): never dropped, even when files within
    `min_delta` of it rank above it by raw value.

    >>> a, b, c = Record(0, 0.5, "a"), Record(1, 0.4, "b"), Record(2, 0.6, "c")
    >>> [r.path for r in BestK(1, ("min",)).keep([a], b)]
    ['b']
    >>> [r.path for r in BestK(2, ("min",)).keep([a, b], c, pinned=(0, None))]
    ['a', 'b']
    """

    k: int | None
    modes: str | Sequence[str] = "min"

    def keep(self, kept: Sequence[Record], new: Record, pinned: Position | None = None) -> tuple[Record, ...]:
        """`kept` and `new` (in that order), less those outside the best k."""
        records = (*kept, new)
        if self.k is None:
            return records
        rank = sort_key(self.modes)
        order = sorted(records, key=lambda r: (pinned is None or r.position != tuple(pinned), rank(r)))
        chosen = {id(r) for r in order[: self.k]}
        return tuple(r for r in records if id(r) in chosen)


@dataclasses.dataclass(frozen=True)
class Archive:
    """Keep every record kept so far, and `new` when its epoch ends a period
    of `every` epochs (`None`: never). One record per `(epoch, step)`: a new
    one replaces an older one of its position (a resumed epoch).

    >>> [r.epoch for r in Archive(2).keep([Record(1, 0.5, "a")], Record(3, 0.4, "b"))]
    [1, 3]
    >>> [r.epoch for r in Archive(2).keep([Record(1, 0.5, "a")], Record(2, 0.4, "b"))]
    [1]
    """

    every: int | None

    def keep(self, kept: Sequence[Record], new: Record, since: float | None = None) -> tuple[Record, ...]:
        """The archived records once `new` has been considered (oldest first);
        `since` (a time, for `ArchiveEvery`'s signature) plays no part in epoch periods."""
        if self.every is None or new.step is not None or (new.epoch + 1) % self.every:
            return tuple(kept)
        return (*(r for r in kept if r.position != new.position), new)


@dataclasses.dataclass(frozen=True)
class LastN:
    """Keep the `n` newest training states (`{"path", "epoch", "step"}` entries).

    >>> new = {"path": "s3", "epoch": 3, "step": None}
    >>> [s["path"] for s in LastN(2).keep([{"path": "s2"}, {"path": "s1"}], new)]
    ['s3', 's2']
    """

    n: int

    def keep(self, kept: Sequence[Mapping[str, Any]], new: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
        """Newest first: `new`, then the newest of `kept` (newest first) but
        one of `new`'s name, `n` in all."""
        older = [s for s in kept if s["path"] != new["path"]]
        return (new, *older[: self.n - 1])


@dataclasses.dataclass(frozen=True)
class ArchiveEvery:
    """Keep every record kept so far, and `new` when at least `seconds` of
    wall time (`Record.time`) have passed since the newest archived one (the
    first is kept), as Orbax's `EveryNSeconds`. Epoch ends only, one record
    per `(epoch, step)`, as `Archive`.

    >>> rule = ArchiveEvery(3600)
    >>> [r.epoch for r in rule.keep([Record(0, 0.5, "a", time=0.0)], Record(1, 0.4, "b", time=1800.0))]
    [0]
    >>> [r.epoch for r in rule.keep([Record(0, 0.5, "a", time=0.0)], Record(2, 0.4, "b", time=3600.0))]
    [0, 2]
    """

    seconds: float

    def keep(self, kept: Sequence[Record], new: Record, since: float | None = None) -> tuple[Record, ...]:
        """The archived records once `new` has been considered (oldest first);
        `since`: the time of the newest archived save, also when evicted since."""
        others = [r for r in kept if r.position != new.position]
        times = [r.time for r in others if r.time is not None] + ([] if since is None else [since])
        if new.step is not None or new.time is None or (times and new.time - max(times) < self.seconds):
            return tuple(kept)
        return (*others, new)


@dataclasses.dataclass(frozen=True)
class DiskBudget:
    """At most `max_bytes` in the files the other rules keep (`None`: no bound).

    `evict` drops files, one unit at a time (a sharded set is one), in this
    priority until the total fits: archived files that no other rule keeps,
    oldest first; then the top-k files, lowest-ranked first; then the older
    training states, oldest first. The `protected` ones (the best, the newest
    training state) are never evicted: when they alone exceed the bound they
    stay, and `evict` says how far over it is.

    >>> best, low = Record(1, 0.1, "best", size=40), Record(0, 0.5, "low", size=40)
    >>> old = Record(2, 0.9, "arch", size=30)
    >>> DiskBudget(100).evict([best, low], [old], [{"path": "s", "size": 20}], {"best", "s"})
    (('arch',), 100)
    >>> DiskBudget(50).evict([best, low], [old], [{"path": "s", "size": 20}], {"best", "s"})
    (('arch', 'low'), 60)
    """

    max_bytes: int | None

    def evict(self, kept: Sequence[Record], archived: Sequence[Record], states: Sequence[Mapping[str, Any]],
              protected: set[str]) -> tuple[tuple[str, ...], int]:
        """`(evicted names, bytes left)`. `kept`: the top-k records best first;
        `archived`: oldest first; `states`: newest first. A size not known
        counts as 0."""
        sizes: dict[str, int] = {}
        for path, size in [(r.path, r.size) for r in (*kept, *archived)] + [(s["path"], s.get("size"))
                                                                             for s in states]:
            sizes[path] = size or 0
        total = sum(sizes.values())
        if self.max_bytes is None or total <= self.max_bytes:
            return (), total
        in_top = {r.path for r in kept}
        order = [r.path for r in archived if r.path not in in_top] + [r.path for r in reversed(kept)] + [
            s["path"] for s in reversed(states)]
        evicted = []
        for path in order:
            if total <= self.max_bytes:
                break
            if path not in protected and path not in evicted:
                evicted.append(path)
                total -= sizes[path]
        return tuple(evicted), total


def with_sizes(records: Sequence[Record], sizes: Mapping[str, int]) -> tuple[Record, ...]:
    """`records` with the size of each file named in `sizes` (measured)."""
    return tuple(dataclasses.replace(r, size=sizes[r.path]) if r.path in sizes else r for r in records)
