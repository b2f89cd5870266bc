"""The save policy: the run's state and one update's score in, a `Plan` out.

One update is one engine step (`Monitor.step`: is it better, should training
stop) plus the union of what the retention rules keep (`BestK`, `Archive`,
`LastN` in `keras_best.core.retention`): a file stays while any rule keeps
it, and the others are evicted. Decided here once: `save_best_only` (which
updates may enter the top k), the pinned best, and names that never overwrite
a kept file of another epoch. Plain Python: no TensorFlow, no I/O. The
executor (`keras_best.runner.run`) carries plans out and decides nothing.

The invariants, checked by `RunState.check` and by the property tests:

1. The best (`best_at`) is `None` exactly when the engine has no best, and
   otherwise names a kept record: the one file `best_path`, keras_best.json,
   `load_best` and `restore_best_weights` all mean.
2. At most `keep_top_k` records are kept, their names are distinct plain
   file names, and no record is ever given the name of another kept one.
3. A NaN/inf or infeasible score is never best.
4. With `max_disk`, the kept files' sizes (measured, or estimated for the
   pending ones) add up to at most `max_disk`, unless the best and the newest
   training state alone exceed it (`Plan.over_budget`); neither is ever
   evicted for the budget (`keras_best.core.retention.DiskBudget`).

>>> from keras_best.core.options import Options
>>> from keras_best.core.objective import Objective, Score
>>> policy = Policy(Options(keep_top_k=2), Objective("val_loss"))
>>> plan = policy.plan(RunState(), 0, None, Score(0.5), {"val_loss": 0.5}, lambda v: f"e1-v{v}.h5")
>>> plan.decision.improved, plan.save_as, plan.state.best_at
(True, 'e1-v0.h5', (0, None))
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping

from keras_best.core import names
from keras_best.core.monitor import Decision, Monitor, MonitorState
from keras_best.core.objective import Objective, Score
from keras_best.core.options import Options
from keras_best.core.retention import (
    Archive,
    ArchiveEvery,
    BestK,
    DiskBudget,
    LastN,
    Position,
    Record,
    ranked,
    with_sizes,
)


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run has decided so far. Immutable: a plan brings the next one.

    Attributes:
        engine: the `MonitorState` (best score, patience counter); `None`
            before the first update. Its JSON form (a mapping) is accepted too.
        kept: the records of the files kept on disk, best first.
        best_at: `(epoch, step)` of the best, a record in `kept` (or `None`).
        last: `{"path", "epoch", "step"}` of the training state, if written.
        stopped: `{"epoch", "step", "reason"}` once early stopping fired.
        export: the SavedModel exported at `finish()`, if any.
        at: `(epoch, step)` of the last update (`None` at the start and right
            after a resume): updates must move forward.
        archived: the records of the files `archive_every` keeps for good
            (a file may be kept by top-k and archived: one file, kept while
            any rule keeps it).
        states: the older training states `keep_last` keeps, newest first
            (`last` is the newest).
        archive_time: the wall time of the newest save a time-based
            `archive_every` archived (kept when `max_disk` evicts it since).
    """

    engine: MonitorState | None = None
    kept: tuple[Record, ...] = ()
    best_at: Position | None = None
    last: Mapping[str, Any] | None = None
    stopped: Mapping[str, Any] | None = None
    export: str | None = None
    at: Position | None = None
    archived: tuple[Record, ...] = ()
    states: tuple[Mapping[str, Any], ...] = ()
    archive_time: float | None = None

    def __post_init__(self) -> None:
        if self.engine is not None and not isinstance(self.engine, MonitorState):
            object.__setattr__(self, "engine", MonitorState.from_json(self.engine))

    def with_sizes(self, sizes: Mapping[str, int]) -> RunState:
        """This state with the measured size of each file named in `sizes`."""
        def sized(s: Mapping[str, Any]) -> Mapping[str, Any]:
            return {**s, "size": sizes[s["path"]]} if s["path"] in sizes else s

        if not sizes:
            return self
        return dataclasses.replace(self, kept=with_sizes(self.kept, sizes), archived=with_sizes(self.archived, sizes),
                                   last=self.last and sized(self.last), states=tuple(sized(s) for s in self.states))

    def best_record(self) -> Record | None:
        """The kept record of the best epoch (`None` before the first best)."""
        if self.best_at is None:
            return None
        for r in self.kept:
            if (r.epoch, r.step) == tuple(self.best_at):
                return r
        return None

    def best_raw(self) -> float | None:
        """The best's monitored value as read, before `smooth=` (without it, the best's value)."""
        record = self.best_record()
        return None if record is None else record.value if record.raw is None else record.raw

    def check(self, keep_top_k: int | None) -> None:
        """Raise `AssertionError` when an invariant of the module docstring fails."""
        paths = [r.path for r in self.kept]
        assert len(set(paths)) == len(paths), f"two kept records share a name: {paths}"
        assert all(names.name_problem(p) is None for p in paths), paths
        assert keep_top_k is None or len(self.kept) <= keep_top_k, (len(self.kept), keep_top_k)
        archived = {r.path: (r.epoch, r.step) for r in self.archived}
        assert len(archived) == len(self.archived), f"two archived records share a name: {self.archived}"
        assert all(names.name_problem(n) is None for n in archived), archived
        for r in self.kept:  # one name, one file: kept and archived only as the same epoch
            assert archived.get(r.path, (r.epoch, r.step)) == (r.epoch, r.step), (r, archived)
        state_names = [s["path"] for s in ((self.last,) if self.last else ()) + tuple(self.states)]
        assert len(set(state_names)) == len(state_names), state_names
        assert not set(state_names) & (set(paths) | set(archived)), state_names
        best = None if self.engine is None else self.engine.best_value
        assert (best is None) == (self.best_at is None), (best, self.best_at)
        if self.best_at is not None:
            record = self.best_record()
            assert record is not None, f"the best {self.best_at} is not kept"
            assert record.score.eligible and record.value == best, (record, best)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one update is to do, and the state once it is done.

    `save_as` is the file name to write (`None`: nothing), `evict` the kept
    files to delete, `keep_host_copy` whether `restore_best_weights` needs a
    host copy of the weights now, `write_state` whether the training state is
    written, `entry` the history entry. `decision.saved_path` and
    `decision.evicted` hold run-directory names.
    """

    decision: Decision
    save_as: str | None
    evict: tuple[str, ...]
    keep_host_copy: bool
    write_state: bool
    entry: dict[str, Any]
    state: RunState
    drop_states: tuple[str, ...] = ()
    over_budget: tuple[int, int] | None = None  # (bytes kept, max_disk) when the best and newest state exceed it


class Policy:
    """Turns scores into plans for one run's `Options` and `Objective`."""

    def __init__(self, options: Options, objective: Objective, clock: Callable[[], float] = time.time,
                 state_suffix: str = ".h5") -> None:
        self.options = options
        self.state_suffix = state_suffix  # names.SHARDED_STATE: the training states are Orbax directories
        self.objective = objective
        self.clock = clock  # wall time, for a time-based `archive_every` (tests pass a fake one)
        self._monitor: Monitor | None = None

    @property
    def monitor(self) -> Monitor:
        """The engine's rules, built (and checked) once for the objective's
        modes, and again only if a Keras metric has resolved one since."""
        modes = self.objective.engine_modes
        if self._monitor is None or self._monitor.modes != modes:
            self._monitor = Monitor(modes, **self.options.monitor_options())
        return self._monitor

    def plan(
        self,
        state: RunState,
        epoch: int,
        step: int | None,
        score: Score | None,
        values: Mapping[str, float],
        name: Callable[[int], str],
        sizes: tuple[int, int] = (0, 0),
    ) -> Plan:
        """Decide one update. `name(version)` gives the file name to save as
        (version 0, or `-vN` when that name is a kept file of another epoch).
        `score=None` is an update without validation values (e.g. `fit()`
        with `validation_freq`): recorded, the training state written if asked,
        but no best decision and no patience counted. `sizes`: the bytes
        expected of this update's saved file and training state (`max_disk`)."""
        position = (epoch, step)
        if state.at is not None and order(position) <= order(state.at):
            raise ValueError(
                f"update() for {_describe(position)} came after an update for {_describe(state.at)}: "
                "epochs (and steps within an epoch) must move forward. Pass each epoch once, in "
                "order (after resume=True, loop over tracker.epochs(n): it starts at tracker.initial_epoch)."
            )
        engine = MonitorState() if state.engine is None else state.engine
        raw = None if score is None or self.options.smooth is None else score.primary  # recorded beside it
        if score is None:  # no validation values in this update: nothing decided, patience untouched
            decision = Decision(epoch=epoch, value=math.nan, improved=False, best=engine.best_value,
                                best_epoch=engine.best_epoch, wait=engine.wait)
            best_at = state.best_at
            new = Record(epoch, math.nan, "", dict(values), step)
        else:
            decision, engine = self.monitor.step(engine, epoch, score)
            best_at = position if decision.improved else state.best_at
            score = Score(decision.value, decision.ties, decision.feasible)  # smoothed: what `smooth=` ranks
            new = Record(epoch, score.primary, "", dict(values), step, score.ties, score.feasible, raw)
        o = self.options
        budgeted = o.max_disk is not None
        new = dataclasses.replace(new, size=sizes[0] if budgeted else None,
                                  time=self.clock() if o.archive_seconds else None)
        # Without validation values: saved only where every update is (ModelCheckpoint's save_best_only=False).
        admitted = self._admits(decision, score) if score is not None else not self.options.needs_monitor
        kept, archived, save_as, archive = self._retain(state, new, admitted, best_at, name)
        last, states = self._states(state, epoch, step, sizes[1] if budgeted else None)
        gone, left = DiskBudget(o.max_disk).evict(kept, archived, ((last,) if last else ()) + states, {
            *(r.path for r in kept if best_at is not None and r.position == tuple(best_at)), *((last["path"],) if last else ())})
        if gone:
            kept, archived = (tuple(r for r in rs if r.path not in gone) for rs in (kept, archived))
            states = tuple(s for s in states if s["path"] not in gone)
            save_as, archive = (None, False) if save_as in gone else (save_as, archive)
        on_disk = {r.path for r in kept + archived}
        evict = tuple(p for p in dict.fromkeys(r.path for r in state.kept + state.archived) if p not in on_disk)
        held = {s["path"] for s in ((last,) if last else ()) + states}
        drop_states = tuple(s["path"] for s in ((state.last,) if state.last else ()) + tuple(state.states)
                            if s["path"] not in held)
        stopped = state.stopped
        if decision.should_stop:
            stopped = {"epoch": epoch, "step": step, "reason": decision.stop_reason.value}
        entry = {
            "epoch": epoch,
            "step": step,
            "value": decision.value,
            **({} if raw is None else {"raw": raw}),
            "improved": decision.improved,
            "saved": save_as,
            "wait": decision.wait,
            "metrics": dict(values),
            **({"validated": False} if score is None else {}),
            **({"ties": list(score.ties)} if score is not None and score.ties else {}),
            **({} if score is None or score.feasible else {"feasible": False}),
            **({"archived": True} if archive else {}),
        }
        return Plan(
            decision=dataclasses.replace(decision, saved_path=save_as, evicted=evict),
            save_as=save_as,
            evict=evict,
            keep_host_copy=decision.improved and o.restore_best_weights,
            write_state=o.keeps_state,
            entry=entry,
            state=dataclasses.replace(state, engine=engine, kept=kept, best_at=best_at,
                                      last=last, stopped=stopped, at=position, archived=archived, states=states,
                                      archive_time=new.time if archive and new.time else state.archive_time),
            drop_states=drop_states,
            over_budget=(left, o.max_disk) if budgeted and left > o.max_disk else None,
        )

    def _admits(self, decision: Decision, score: Score) -> bool:
        """Whether this update may enter the top k: every one, or with
        `save_best_only` an improvement (with `keep_top_k` > 1, also one that
        clears the baseline as a best would)."""
        o = self.options
        if not o.save_best_only:
            return True
        if o.keep_top_k in (None, 1):
            return decision.improved
        return decision.improved or self.monitor.clears_baseline(score)

    def _retain(self, state: RunState, new: Record, admitted: bool, best_at: Position | None,
                name: Callable[[int], str]):
        """`(kept, archived, save_as, archive)`: what `BestK` and `Archive`
        keep once `new` is considered, the name it is saved as (`None`: no rule
        keeps it), and whether `Archive` keeps it."""
        o, modes = self.options, self.objective.engine_modes
        kept = state.kept
        if admitted:  # a record of this update's own position (only after a resume) is replaced
            top = BestK(o.keep_top_k, modes).keep([r for r in state.kept if r.position != new.position], new,
                                                   pinned=best_at)
            kept = top if any(r is new for r in top) else state.kept  # would be evicted at once: not written
        rule = ArchiveEvery(o.archive_seconds) if o.archive_seconds else Archive(o.archive_epochs)
        archived = rule.keep(state.archived, new, state.archive_time)
        in_top, in_archive = any(r is new for r in kept), any(r is new for r in archived)
        if not (in_top or in_archive):
            return kept, archived, None, False
        taken = {r.path for r in kept if r is not new} | {
            r.path for r in state.archived if not in_top or r.position != new.position}
        named = dataclasses.replace(new, path=_free_name(name, taken))  # never overwrite another epoch's file
        kept = tuple(ranked([named if r is new else r for r in kept], modes)) if in_top else kept
        return kept, tuple(named if r is new else r for r in archived), named.path, in_archive

    def _states(self, state: RunState, epoch: int, step: int | None, size: int | None):
        """`(last, states)`: the training state this update writes (`size`:
        its expected bytes, with `max_disk`) and the older ones `keep_last`
        keeps (newest first)."""
        o = self.options
        if not o.keeps_state:
            return state.last, tuple(state.states)
        new = {"path": names.last_name(self.state_suffix) if o.keep_last == 1 else
               names.state_name(epoch, step, self.state_suffix),
               "epoch": epoch, "step": step, **({} if size is None else {"size": size})}
        old = ((state.last,) if state.last else ()) + tuple(state.states)
        kept = LastN(o.keep_last).keep(old, new)
        return kept[0], tuple(kept[1:])


def _free_name(name: Callable[[int], str], taken: set[str]) -> str:
    """`name(0)`, or `name(v)` for the first version `v` not in `taken`."""
    version = 0
    while name(version) in taken:
        version += 1
    return name(version)


def order(position: Position) -> tuple[int, float]:
    """A sort key for `(epoch, step)` positions: an epoch's end (step `None`) comes after its steps.

    >>> order((2, None)) > order((2, 7)) > order((1, None))
    True
    """
    epoch, step = position
    return (epoch, math.inf if step is None else step)


def _describe(position: Position) -> str:
    epoch, step = position
    return f"epoch={epoch}" + ("" if step is None else f", step={step}")
