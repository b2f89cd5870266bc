"""`preempt_signals=`: which signals announce a preemption (parsed with the options).

>>> import signal
>>> signals_of("auto", keeps_state=True) == (signal.SIGTERM,)
True
>>> signals_of(["SIGUSR1"], keeps_state=True) == (signal.SIGUSR1,)
True
"""

from __future__ import annotations

import signal
from typing import Any

AUTO = "auto"
_UNCATCHABLE = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)}


def signals_of(value: Any, keeps_state: bool) -> tuple[int, ...]:
    """The signals `preempt_signals=value` asks to watch, or a `ValueError`.

    `"auto"`: SIGTERM when the run keeps a training state, else none. `None`
    or `()`: none. Otherwise signal names ("SIGTERM", "SIGUSR1") or numbers.
    """
    if value is None:
        return ()
    if isinstance(value, str) and value == AUTO:
        return (signal.SIGTERM,) if keeps_state else ()
    items = [value] if isinstance(value, (str, int, signal.Signals)) else value
    try:
        items = list(items)
    except TypeError:
        items = [value]
    out = []
    for item in items:
        signum = _signal_number(item)
        if signum is None:
            raise ValueError(
                '`preempt_signals` must be "auto", None, or signal names or numbers such as '
                f'["SIGTERM", "SIGUSR1"]. Received: preempt_signals={value!r}'
            )
        if signum in _UNCATCHABLE:
            raise ValueError(
                f"{signal.Signals(signum).name} cannot be caught by any process, so it cannot announce a "
                f"preemption; schedulers send SIGTERM first. Received: preempt_signals={value!r}"
            )
        out.append(signum)
    if out and not keeps_state:
        raise ValueError(
            "`preempt_signals` saves the training state when a signal comes, but this run keeps none: "
            f"pass resume=True (or save_last=True) too. Received: preempt_signals={value!r}"
        )
    return tuple(dict.fromkeys(out))


def _signal_number(item: Any) -> int | None:
    if isinstance(item, signal.Signals):
        return int(item)
    if isinstance(item, str):
        name = item.upper() if item.upper().startswith("SIG") else "SIG" + item.upper()
        number = getattr(signal, name, None)
        return int(number) if isinstance(number, signal.Signals) else None
    if isinstance(item, int) and not isinstance(item, bool):
        try:
            return int(signal.Signals(item))
        except ValueError:
            return None
    return None
