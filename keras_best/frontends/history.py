"""`tracker.history`: the run's history, read-only."""

from __future__ import annotations

from typing import Any, Sequence


class HistoryView(Sequence):
    """A read-only view of a run's history (`keras_best.runner.run.Run.history`,
    never a copy, so reading it costs nothing however long the run); equal to
    a list or tuple with the same entries. The entries are the run's own
    dicts: read them, do not change them."""

    def __init__(self, run: Any) -> None:
        self._run = run

    def __getitem__(self, index: Any) -> Any:
        return self._run.history[index]

    def __len__(self) -> int:
        return len(self._run.history)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, HistoryView)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))
