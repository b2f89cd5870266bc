"""The tracker's options, declared once and validated once.

`Options` is the one list of what a run can be asked to do. The custom-loop
tracker takes these names as keyword arguments; `BestCheckpoint` takes
`keras.callbacks.ModelCheckpoint`'s names and translates them. Every value is
checked here, at construction, with a Keras-style message, and normalised to a
plain Python type (numpy bools and ints are accepted where Keras accepts them):

>>> import numpy as np
>>> Options(patience=np.int64(3), save_best_only=np.False_).patience
3
>>> Options(verbose="1")
Traceback (most recent call last):
...
ValueError: `verbose` must be 0, 1 or 2. Received: verbose='1'
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import inspect
import math
import numbers
import re
from typing import Any, Mapping

from keras_best.core import signals, smoothing
from keras_best.core.monitor import Monitor
from keras_best.core.objective import Objective

_FLAGS = ("save_best_only", "save_last", "restore_best_weights", "resume", "export_at_finish",
          "stop_on_non_finite", "async_save", "save_random_state")
_STATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a run is asked to do (see `BestWeightsTracker` for each)."""

    monitor: Any = "val_loss"
    mode: Any = "auto"
    min_delta: float = 0.0
    baseline: float | None = None
    keep_top_k: int | None = 1
    save_best_only: bool = True
    save_last: bool = False
    patience: int | None = None
    start_from_epoch: int = 0
    restore_best_weights: bool = False
    optimizer: Any = None
    resume: bool = False
    save_format: str | None = None
    export_at_finish: bool = False
    stop_on_non_finite: bool = False
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None
    verbose: int = 1
    require: Any = None
    async_save: bool = True
    preempt_signals: Any = "auto"
    keep_last: int = 1
    archive_every: int | None = None
    save_state_every: float | None = None
    save_state_every_batches: int | None = None
    save_random_state: bool = True
    state: Any = None
    max_shard_size: float | None = None
    max_host_memory: int | str | None = None
    smooth: Any = None
    loggers: Any = None
    save_on_exception: bool | None = None
    max_disk: Any = None
    storage_options: Any = dataclasses.field(default=None, repr=False)  # may hold credentials: never shown

    def __post_init__(self) -> None:
        for name in _FLAGS:
            self._set(name, flag(name, getattr(self, name)))
        self._set("keep_top_k", integer("keep_top_k", self.keep_top_k, 1, ", or None to keep every saved file"))
        self._set("patience", integer("patience", self.patience, 0, " or None"))
        self._set("start_from_epoch", integer("start_from_epoch", self.start_from_epoch, 0, allow_none=False))
        self._set("min_delta", real("min_delta", self.min_delta))
        self._set("smooth", smoothing.parse(self.smooth))
        self._set("baseline", None if self.baseline is None else real("baseline", self.baseline))
        for name in ("stopping_threshold", "divergence_threshold"):
            value = getattr(self, name)
            self._set(name, None if value is None else real(name, value))
        verbose = self.verbose
        if _is_bool(verbose):
            verbose = int(verbose)
        if not _is_int(verbose) or int(verbose) not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={self.verbose!r}")
        self._set("verbose", int(verbose))
        if self.save_format is not None and not isinstance(self.save_format, str):
            raise ValueError(f"`save_format` must be a string or None. Received: save_format={self.save_format!r}")
        # Checked now, not at the first update: raises their own messages.
        self._set("keep_last", integer("keep_last", self.keep_last, 1, allow_none=False))
        self._set("archive_every", archive_period(self.archive_every))
        self._set("max_disk", byte_size("max_disk", self.max_disk))
        self._set("max_host_memory", byte_size("max_host_memory", self.max_host_memory, minimum=0,
                                               hint="; 0 takes no host copy; None holds one save"))
        self._set("save_state_every_batches", integer("save_state_every_batches", self.save_state_every_batches,
                                                      1, " or None"))
        if self.save_state_every is not None:
            seconds = real("save_state_every", self.save_state_every)
            if not 0 < seconds < math.inf:
                raise ValueError("`save_state_every` is in seconds and must be > 0, or None. "
                                 f"Received: save_state_every={self.save_state_every!r}")
            self._set("save_state_every", seconds)
        self._set("state", state_objects(self.state))
        self._set("storage_options", storage_options(self.storage_options))
        self._set("loggers", run_loggers(self.loggers))
        if self.save_on_exception is None:  # by default, whenever a training state is kept
            self._set("save_on_exception", self.keeps_state)
        elif flag("save_on_exception", self.save_on_exception) and not self.keeps_state:
            raise ValueError("`save_on_exception` writes the training state, and this run keeps none: pass "
                             "resume=True (or save_last=True) too. Received: save_on_exception=True")
        else:
            self._set("save_on_exception", flag("save_on_exception", self.save_on_exception))
        if self.max_shard_size is not None:
            size = real("max_shard_size", self.max_shard_size)
            if not 0 < size < math.inf:
                raise ValueError("`max_shard_size` is the largest shard in GB (as in `model.save_weights`) and must "
                                 f"be > 0, or None. Received: max_shard_size={self.max_shard_size!r}")
            if self.export_at_finish:
                raise ValueError("`export_at_finish=True` exports one SavedModel; it cannot be sharded. Drop "
                                 f"max_shard_size. Received: max_shard_size={self.max_shard_size!r}")
            self._set("max_shard_size", size)
        for name, default in (("keep_last", 1), ("save_state_every", None), ("save_state_every_batches", None),
                              ("state", None)):
            if getattr(self, name) != default and not self.keeps_state:
                raise ValueError(f"`{name}` is about training states, and this run keeps none: pass "
                                 f"resume=True (or save_last=True) too. Received: {name}={getattr(self, name)!r}")
        signals.signals_of(self.preempt_signals, self.keeps_state)  # its own messages
        objective = Objective(self.monitor, self.mode, self.require)
        checks = self.monitor_options()
        if objective.unresolved:  # the thresholds' order is checked once the mode is known
            checks["divergence_threshold"] = None
        Monitor(objective.engine_modes, **checks)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def keeps_state(self) -> bool:
        """Whether every update writes the training state (`save_last`, implied by `resume`)."""
        return self.save_last or self.resume

    @property
    def archive_seconds(self) -> float | None:
        """The wall time between archived saves when `archive_every` is a duration."""
        every = self.archive_every
        return duration_seconds(every) if isinstance(every, str) else None

    @property
    def archive_epochs(self) -> int | None:
        """The epochs between archived saves when `archive_every` is an int."""
        return self.archive_every if isinstance(self.archive_every, int) else None

    @property
    def needs_monitor(self) -> bool:
        """Whether every update must hold the monitored value (without it, as
        `ModelCheckpoint` with `save_best_only=False`, every update is saved)."""
        return self.save_best_only or self.keep_top_k is not None or self.patience is not None or (
            self.restore_best_weights)

    def monitor_options(self) -> dict[str, Any]:
        """The keyword arguments of `Monitor`."""
        return dict(min_delta=self.min_delta, baseline=self.baseline, patience=self.patience,
                    start_from_epoch=self.start_from_epoch, stop_on_non_finite=self.stop_on_non_finite,
                    stopping_threshold=self.stopping_threshold, divergence_threshold=self.divergence_threshold,
                    smooth=self.smooth)

    def recorded(self) -> dict[str, Any]:
        """The options written into `keras_best.json` (what `inspect` shows)."""
        return {k: getattr(self, k) for k in ("min_delta", "baseline", "patience", "start_from_epoch",
                                              "keep_top_k", "save_best_only", "stopping_threshold",
                                              "divergence_threshold", "keep_last", "archive_every")} | {
            k: getattr(self, k) for k in ("max_shard_size", "max_disk") if getattr(self, k) is not None} | (
            {} if self.smooth is None else {"smooth": list(self.smooth)})

    @classmethod
    def create(cls, owner: str, **options: Any) -> Options:
        """`Options(**options)`, with an unknown name reported for `owner`."""
        cls.check_names(owner, options)
        return cls(**options)

    @classmethod
    def check_names(cls, owner: str, options: Any) -> None:
        """Raise `TypeError` for a name in `options` that is not an option."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"{owner} got an unexpected argument {key!r}.{hint} Valid options: {', '.join(names)}")


def signature(*leading: str) -> inspect.Signature:
    """A front end's signature: the parameters `leading`, then every option
    (`monitor` positional, the others keyword-only), so that `help()` shows them."""
    positional, keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature([inspect.Parameter(name, positional) for name in leading] + [
        inspect.Parameter(f.name, positional if f.name == "monitor" else keyword, default=f.default)
        for f in dataclasses.fields(Options)])


def state_objects(value: Any) -> dict[str, Any] | None:
    """The `state=` option: a mapping of names to the objects saved in the
    training state (what each may be is checked by `keras_best.training_state.objects`);
    an empty mapping is None.

    >>> state_objects({"d_opt": 1})
    {'d_opt': 1}
    >>> state_objects({"a/b": 1})
    Traceback (most recent call last):
    ...
    ValueError: `state` names must be non-empty strings of letters, digits, '_', '.' and '-' (not starting with '.'). Received: 'a/b'
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("`state` must be a dict of names to the objects to save in the training state, e.g. "
                         f"state={{'d_optimizer': d_optimizer}}. Received: state={value!r}")
    for name, obj in value.items():
        if not isinstance(name, str) or not _STATE_NAME.match(name):
            raise ValueError("`state` names must be non-empty strings of letters, digits, '_', '.' and '-' "
                             f"(not starting with '.'). Received: {name!r}")
        if obj is None:
            raise ValueError(f"`state[{name!r}]` is None: pass the object to save, or leave the name out.")
    return dict(value) or None


def storage_options(value: Any) -> dict[str, Any] | None:
    """`storage_options=`: fsspec's, a dict of keyword arguments for the remote
    file system's constructor (`endpoint_url`, `key`, `secret`, `profile`,
    `token`...); an empty one is None. Which names the file system takes is
    its own affair (s3fs, gcsfs...): they are checked when it is built.

    >>> storage_options({"profile": "ml"})
    {'profile': 'ml'}
    >>> storage_options("ml")
    Traceback (most recent call last):
    ...
    ValueError: `storage_options` must be a dict of the remote file system's arguments (fsspec's storage_options), e.g. storage_options={"endpoint_url": "http://127.0.0.1:9000", "profile": "ml"}, or None. Received: a str
    """
    if value is None:
        return None
    bad = [k for k in value if not isinstance(k, str) or not k] if isinstance(value, Mapping) else []
    if bad:
        raise ValueError(f"`storage_options` names the file system's arguments: its keys must be non-empty strings. "
                         f"Received the key {bad[0]!r}")
    if not isinstance(value, Mapping):  # the values are not shown: they may be credentials
        raise ValueError("`storage_options` must be a dict of the remote file system's arguments (fsspec's "
                         'storage_options), e.g. storage_options={"endpoint_url": "http://127.0.0.1:9000", '
                         f'"profile": "ml"}}, or None. Received: a {type(value).__name__}')
    return dict(value) or None


def run_loggers(value: Any) -> tuple[Any, ...]:
    """The `loggers=` option: a logger or a list of them, each with an
    `on_best` or `on_finish` method (`keras_best.runner.loggers`).

    >>> run_loggers(None)
    ()
    >>> run_loggers([print])
    Traceback (most recent call last):
    ...
    ValueError: `loggers` takes objects with an `on_best(event)` or `on_finish(event)` method (e.g. keras_best.mlflow.MlflowLogger()). Received: <built-in function print>
    """
    items = () if value is None else tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for item in items:
        if not callable(getattr(item, "on_best", None)) and not callable(getattr(item, "on_finish", None)):
            raise ValueError("`loggers` takes objects with an `on_best(event)` or `on_finish(event)` method "
                             f"(e.g. keras_best.mlflow.MlflowLogger()). Received: {item!r}")
    return items


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(s|sec|min|m|h|d)\s*$", re.IGNORECASE)


def byte_size(name: str, value: Any, minimum: int = 1, hint: str = "") -> int | None:
    """A size in bytes, at least `minimum`: an int, or a string with a unit ("500MB", "20GB",
    "1.5GiB": KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024).

    >>> byte_size("max_disk", "1.5GiB"), byte_size("max_disk", "20GB"), byte_size("max_disk", 4096)
    (1610612736, 20000000000, 4096)
    >>> byte_size("max_host_memory", "0GB", minimum=0)
    0
    >>> byte_size("max_disk", "20 gigs")
    Traceback (most recent call last):
    ...
    ValueError: `max_disk` must be a number of bytes > 0 (an int, or a string such as "500MB", "20GB" or "1.5GiB"), or None. Received: max_disk='20 gigs'
    """
    if value is None:
        return None
    nbytes = None
    if _is_int(value):
        nbytes = int(value)
    elif isinstance(value, str) and (match := _SIZE.match(value)) and match[2].lower() in _BYTE_UNITS:
        nbytes = int(float(match[1]) * _BYTE_UNITS[match[2].lower()])
    if nbytes is None or nbytes < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f'`{name}` must be a number of bytes {bound} (an int, or a string such as "500MB", "20GB" '
                         f'or "1.5GiB"{hint}), or None. Received: {name}={value!r}')
    return nbytes


def duration_seconds(text: str) -> float:
    """Seconds in a checked duration string ("90s", "30min", "1.5h", "2d")."""
    match = _DURATION.match(text)
    return float(match[1]) * _SECONDS[match[2].lower()]


def archive_period(value: Any) -> int | str | None:
    """`archive_every`: an int of epochs, or a duration of wall time ("90s",
    "30min", "1h", "2d", or a `datetime.timedelta`), normalised to a string.

    >>> archive_period(3), archive_period(" 1.5H "), archive_period(datetime.timedelta(minutes=2))
    (3, '1.5h', '120s')
    """
    if isinstance(value, datetime.timedelta):
        value = f"{value.total_seconds():g}s"
    if isinstance(value, str) and _DURATION.match(value) and duration_seconds(value) > 0:
        return value.strip().lower()
    if value is None or (_is_int(value) and int(value) >= 1):
        return None if value is None else int(value)
    raise ValueError("`archive_every` must be an int >= 1 (epochs), a duration of wall time such as \"30min\", "
                     f"\"1h\" or \"2d\" (one archived save per period), or None. Received: archive_every={value!r}")


def flag(name: str, value: Any) -> bool:
    """A bool option: `True`/`False`, numpy bools, and the ints 0 and 1."""
    if _is_bool(value):
        return bool(value)
    if _is_int(value) and int(value) in (0, 1):
        return bool(value)
    raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")


def integer(name: str, value: Any, minimum: int, hint: str = "", allow_none: bool = True) -> int | None:
    """An int option >= `minimum` (numpy ints accepted), or None when allowed."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or int(value) < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}{hint}. Received: {name}={value!r}")
    return int(value)


def real(name: str, value: Any) -> float:
    """A finite-or-infinite, non-NaN number option (numpy numbers accepted)."""
    if not isinstance(value, numbers.Real) or _is_bool(value) or math.isnan(value):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    return float(value)


def _is_bool(value: Any) -> bool:
    """`bool` or `numpy.bool_` (numpy is not imported for this)."""
    return isinstance(value, bool) or (type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)
