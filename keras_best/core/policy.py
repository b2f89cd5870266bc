"""The save policy: the run's state and one update's score in, a `Plan` out.

Every rule of "is it better, is it saved, what is kept, is it the best,
should training stop" lives here once: mode, `min_delta`, `baseline`, NaN,
ties, `require` (through `keras_best.core.objective`), `save_best_only`, top-k
admission, the pinned best, patience (through `Monitor`), and names that never
overwrite a kept file of another epoch. Plain Python: no TensorFlow, no I/O.
The executor (`keras_best.runner.run`) carries plans out and decides nothing.

The invariants, checked by `RunState.check` and by the property tests:

1. The best (`best_at`) is `None` exactly when the engine has no best, and
   otherwise names a kept record: the one file `best_path`, keras_best.json,
   `load_best` and `restore_best_weights` all mean.
2. At most `keep_top_k` records are kept, their names are distinct plain
   file names, and no record is ever given the name of another kept one.
3. A NaN/inf or infeasible score is never best.

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
from typing import Any, Callable, Mapping

from keras_best.core import names, retention
from keras_best.core.monitor import Decision, Monitor
from keras_best.core.objective import Objective, Score
from keras_best.core.options import Options
from keras_best.core.retention import Record

Position = tuple  # (epoch, step | None)


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run has decided so far. Immutable: a plan brings the next one.

    Attributes:
        engine: `Monitor.state_dict()` (best score, patience counter); `None`
            before the first update.
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
    """

    engine: Mapping[str, Any] | None = None
    kept: tuple[Record, ...] = ()
    best_at: Position | None = None
    last: Mapping[str, Any] | None = None
    stopped: Mapping[str, Any] | None = None
    export: str | None = None
    at: Position | None = None
    archived: tuple[Record, ...] = ()
    states: tuple[Mapping[str, Any], ...] = ()

    def best_record(self) -> Record | None:
        """The kept record of the best epoch (`None` before the first best)."""
        if self.best_at is None:
            return None
        for r in self.kept:
            if (r.epoch, r.step) == tuple(self.best_at):
                return r
        return None

    def check(self, keep_top_k: int | None) -> None:
        """Raise `AssertionError` when an invariant of the module docstring fails."""
        names = [r.path for r in self.kept]
        assert len(set(names)) == len(names), f"two kept records share a name: {names}"
        assert all(names.name_problem(n) is None for n in names), names
        assert keep_top_k is None or len(self.kept) <= keep_top_k, (len(self.kept), keep_top_k)
        archived = {r.path: (r.epoch, r.step) for r in self.archived}
        assert len(archived) == len(self.archived), f"two archived records share a name: {self.archived}"
        assert all(names.name_problem(n) is None for n in archived), archived
        for r in self.kept:  # one name, one file: kept and archived only as the same epoch
            assert archived.get(r.path, (r.epoch, r.step)) == (r.epoch, r.step), (r, archived)
        state_names = [s["path"] for s in ((self.last,) if self.last else ()) + tuple(self.states)]
        assert len(set(state_names)) == len(state_names), state_names
        assert not set(state_names) & (set(names) | set(archived)), state_names
        best = (self.engine or {}).get("best")
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


class Policy:
    """Turns scores into plans for one run's `Options` and `Objective`."""

    def __init__(self, options: Options, objective: Objective) -> None:
        self.options = options
        self.objective = objective

    def engine(self, state: RunState) -> Monitor:
        """A `Monitor` holding `state`'s best and patience counter."""
        engine = Monitor(self.objective.engine_modes, **self.options.monitor_options())
        if state.engine is not None:
            engine.load_state_dict(state.engine)
        return engine

    def plan(
        self,
        state: RunState,
        epoch: int,
        step: int | None,
        score: Score | None,
        values: Mapping[str, float],
        name: Callable[[int], str],
    ) -> Plan:
        """Decide one update. `name(version)` gives the file name to save as
        (version 0, or `-vN` when that name is a kept file of another epoch).
        `score=None` is an update without validation values (e.g. `fit()`
        with `validation_freq`): recorded, the training state written if asked,
        but no best decision and no patience counted."""
        position = (epoch, step)
        if state.at is not None and _order(position) <= _order(state.at):
            raise ValueError(
                f"update() for {_describe(position)} came after an update for {_describe(state.at)}: "
                "epochs (and steps within an epoch) must move forward. Pass each epoch once, in "
                "order (after resume=True, loop over tracker.epochs(n): it starts at tracker.initial_epoch)."
            )
        engine = self.engine(state)
        if score is None:  # no validation values in this update: nothing decided, patience untouched
            decision = Decision(epoch=epoch, value=math.nan, improved=False, best=engine.best,
                                best_epoch=engine.best_epoch, wait=engine.wait)
            best_at, kept, save_as, evict = state.best_at, state.kept, None, ()
        else:
            decision = engine.step(epoch, score)
            best_at = position if decision.improved else state.best_at
            kept, save_as, evict = self._retain(state, engine, decision, score, values, position, best_at, name)
        o = self.options
        archived = state.archived
        archive = o.archive_every is not None and step is None and (epoch + 1) % o.archive_every == 0
        if archive:  # every archive_every epochs, a file no rule deletes
            if save_as is None:
                save_as = _free_name(name, {r.path for r in kept + state.archived})
            replaced = [r.path for r in archived if (r.epoch, r.step) == position and r.path != save_as]
            evict += tuple(p for p in replaced if p not in {r.path for r in kept})  # after a resume
            archived = tuple(r for r in archived if (r.epoch, r.step) != position) + (
                Record(epoch, math.nan if score is None else score.primary, save_as, dict(values), step,
                       () if score is None else score.ties, True if score is None else score.feasible),)
        evict = tuple(p for p in evict if p not in {r.path for r in archived})
        last, states, drop_states = self._states(state, epoch, step)
        stopped = state.stopped
        if decision.should_stop:
            stopped = {"epoch": epoch, "step": step, "reason": decision.stop_reason.value}
        entry = {
            "epoch": epoch,
            "step": step,
            "value": decision.value,
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
            state=dataclasses.replace(state, engine=engine.state_dict(), kept=kept, best_at=best_at,
                                      last=last, stopped=stopped, at=position, archived=archived, states=states),
            drop_states=drop_states,
        )

    def _states(self, state: RunState, epoch: int, step: int | None):
        """`(last, states, drop)`: the training state this update writes, the
        older ones `keep_last` keeps (newest first), and those it drops."""
        o = self.options
        if not o.keeps_state:
            return state.last, state.states, ()
        new = names.LAST_NAME if o.keep_last == 1 else names.state_name(epoch, step)
        older = [s for s in ((state.last,) if state.last else ()) + tuple(state.states) if s["path"] != new]
        return ({"path": new, "epoch": epoch, "step": step}, tuple(older[: o.keep_last - 1]),
                tuple(s["path"] for s in older[o.keep_last - 1:]))

    def _retain(self, state, engine, decision, score, values, position, best_at, name):
        """`(kept, save_as, evict)`: whether this update enters the kept set, under which name."""
        o, modes = self.options, self.objective.engine_modes
        if not o.save_best_only:
            candidate = True
        elif o.keep_top_k in (None, 1):
            candidate = decision.improved
        else:  # may enter the top k without improving, if it clears the baseline as a best would
            candidate = decision.improved or engine.clears_baseline(score)
        if not candidate:
            return state.kept, None, ()
        same = [r for r in state.kept if (r.epoch, r.step) == position]  # only after a resume
        others = [r for r in state.kept if (r.epoch, r.step) != position]
        new = Record(position[0], score.primary, "", dict(values), position[1], score.ties, score.feasible)
        kept, evicted, _ = retention.retain(others, new, o.keep_top_k, modes, best_at)
        if all(r is not new for r in kept):
            return state.kept, None, ()  # would be evicted at once: not written
        taken = {r.path for r in kept if r is not new} | {r.path for r in state.archived if (r.epoch, r.step) != position}
        save_as = _free_name(name, taken)  # never overwrite a kept file of another epoch
        named = dataclasses.replace(new, path=save_as)
        evict = tuple(dict.fromkeys(r.path for r in evicted + same if r.path != save_as))
        return tuple(retention.ranked([named if r is new else r for r in kept], modes)), save_as, evict


def _free_name(name: Callable[[int], str], taken: set[str]) -> str:
    """`name(0)`, or `name(v)` for the first version `v` not in `taken`."""
    version = 0
    while name(version) in taken:
        version += 1
    return name(version)


def _order(position: Position) -> tuple[int, float]:
    epoch, step = position
    return (epoch, math.inf if step is None else step)  # an epoch's end comes after its steps


def _describe(position: Position) -> str:
    epoch, step = position
    return f"epoch={epoch}" + ("" if step is None else f", step={step}")
