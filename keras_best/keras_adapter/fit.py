"""Keras internals that `fit()` and its metrics need (no public way exists).

Pinned by `tests/test_callback.py` and `tests/test_metrics.py` against the
installed Keras:

- a Keras 3 metric's direction hint is the private `_direction` ("up"/"down");
- `fit()` starts at `model._initial_epoch` when it is set (what
  `keras.callbacks.BackupAndRestore` sets to resume);
- a callback is given `self.model`, never the `CallbackList` of the `fit()`
  that runs it: `fit_callbacks` finds that list on the call stack of the
  callback's `on_train_begin` (`CallbackList.on_train_begin` calls it);
- no callback hears of an exception that ends `fit()` (`on_train_end` is not
  called): `FitGuard` wraps the running `fit()`'s `model.train_function` and its
  `CallbackList`'s batch and epoch hooks, until `remove()`.

`tests/test_callback_state.py` pins the last two on each backend.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

_HOOKS = ("on_epoch_begin", "on_train_batch_end", "on_epoch_end", "on_train_batch_begin")


def metric_direction(metric: Any) -> str | None:
    """A Keras metric object's own direction hint: "up", "down" or `None`.

    >>> metric_direction(0.5) is None
    True
    """
    if not (callable(getattr(metric, "result", None)) and callable(getattr(metric, "reset_state", None))):
        return None
    direction = getattr(metric, "_direction", None)
    return direction if direction in ("up", "down") else None


def compiled_metric_direction(model: Any, monitor: str) -> str | None:
    """The direction ("up"/"down") of the compiled metric of `model` that the
    log key `monitor` names (`val_` stripped), searching nested metric
    containers; `None` when none says."""
    m = compiled_metric(model, monitor)
    return getattr(m, "_direction", None) if getattr(m, "_direction", None) in ("up", "down") else None


def compiled_metric(model: Any, monitor: str) -> Any:
    """The metric object of `model` that the log key `monitor` names (`val_`
    stripped), known before `fit()`'s first batch: in `model.metrics` (nested
    containers searched) or compiled into it (`compile(metrics=...)`, built or
    not, from the private `model._compile_metrics`); one with a direction first."""
    import keras

    name = monitor[4:] if monitor.startswith("val_") else monitor
    compiled = getattr(model, "_compile_metrics", None)
    declared = [getattr(compiled, a, None) for a in ("_user_metrics", "_user_weighted_metrics")]
    stack = list(getattr(model, "metrics", [])) + [m for d in declared if d for m in keras.tree.flatten(d)]
    found = None
    while stack:
        m = stack.pop()
        stack.extend(getattr(m, "metrics", []) if m is not None and not hasattr(m, "_direction") else [])
        if getattr(m, "name", None) == name and callable(getattr(m, "result", None)):
            if getattr(m, "_direction", None) in ("up", "down"):
                return m
            found = m
    return found


def set_initial_epoch(model: Any, epoch: int) -> None:
    """Make the running `fit()` start at `epoch` (as `BackupAndRestore` does)."""
    model._initial_epoch = epoch


def clear_initial_epoch(model: Any) -> None:
    """Undo `set_initial_epoch`, so a later `fit()` starts where it is told."""
    if getattr(model, "_initial_epoch", None) is not None:
        model._initial_epoch = None


def fit_callbacks(callback: Any) -> Any:
    """The `keras.callbacks.CallbackList` of the `fit()` whose `on_train_begin`
    is calling `callback`'s now (`None` when called another way)."""
    import keras

    def holding(local: dict[str, Any]) -> Any:
        owner = local.get("self")
        if isinstance(owner, keras.callbacks.CallbackList) and any(c is callback for c in owner.callbacks):
            return owner
        return None

    return _from_callers(holding, depth=8)  # CallbackList.on_train_begin is a caller or two up


class FitGuard:
    """Hears what the running `fit()` does, and the exception that ends it.

    `seen(hook, args)` after each of `_HOOKS` of `callback_list` that returns
    (`args`: its positional arguments); `failed(error, hook, args)` when a
    training step (`hook` "train_function") or one of those hooks raises an
    `Exception` or `KeyboardInterrupt` (then the error goes on). `remove()`
    puts everything back (also done before `failed`).
    """

    def __init__(self, model: Any, callback_list: Any, seen: Callable[[str, tuple], None],
                 failed: Callable[[BaseException, str, tuple], None]) -> None:
        self.model, self.callback_list, self.seen, self.failed = model, callback_list, seen, failed
        self.originals: dict[str, Any] = {}
        if callback_list is not None:
            for hook in _HOOKS:
                self.originals[hook] = getattr(callback_list, hook)
                setattr(callback_list, hook, self._wrap(hook, self.originals[hook], report=True))
        stale = getattr(getattr(model, "train_function", None), "keras_best_guard", None)
        if stale is not None:  # an earlier fit() that ended without telling its callbacks
            stale.remove()
        self.train_function = getattr(model, "train_function", None)
        if self.train_function is not None:
            model.train_function = self._wrap("train_function", self.train_function, report=False)

    def _wrap(self, hook: str, original: Callable[..., Any], report: bool) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                out = original(*args, **kwargs)
            except (Exception, KeyboardInterrupt) as e:
                self.remove()
                self.failed(e, hook, args)
                raise
            if report:
                self.seen(hook, args)
            return out

        guarded.keras_best_guard = self  # type: ignore[attr-defined]
        return guarded

    def remove(self) -> None:
        """Put back the hooks and `model.train_function` (those still ours)."""
        for hook, original in self.originals.items():
            if getattr(getattr(self.callback_list, hook, None), "keras_best_guard", None) is self:
                setattr(self.callback_list, hook, original)
        self.originals = {}
        if getattr(getattr(self.model, "train_function", None), "keras_best_guard", None) is self:
            self.model.train_function = self.train_function


# ------------------------------------------------- mid-epoch resume of fit()
# Also pinned by `tests/test_fit_resume.py`: the running `fit()` holds its
# `EpochIterator` in the local `epoch_iterator` (its `data_adapter`,
# `steps_per_epoch`), each epoch draws its batches from a new iterator of the
# adapter (numpy arrays: `np.random.permutation` at the first batch; a PyDataset:
# `random.shuffle`; a torch DataLoader: the torch generator; arrays on TensorFlow:
# the same op seeds every epoch; a `tf.data.Dataset`: its reshuffle seed advances
# once per iterator made), and `fit()` calls `model.train_function` once per
# `steps_per_execution` batches: TensorFlow with the iterator, JAX with
# `(state, iterator)` returning `(logs, state)`, torch with the drawn batches.


def running_fit_data() -> Any:
    """The `EpochIterator` of the `fit()` call this is called from (a callback's
    `on_train_begin`), or `None`."""
    def iterator(local: dict[str, Any]) -> Any:
        found = local.get("epoch_iterator")
        return found if hasattr(found, "data_adapter") else None

    return _from_callers(iterator)


def _from_callers(find: Callable[[dict[str, Any]], Any], depth: int | None = None) -> Any:
    """The first result other than `None` of `find(locals)` over the frames that
    called the caller, nearest first (at most `depth` of them), or `None`."""
    frame = inspect.currentframe()
    frame = frame and frame.f_back  # the caller's own frame is not searched
    try:
        seen = 0
        while frame is not None and (depth is None or seen < depth):
            frame, seen = frame.f_back, seen + 1
            found = frame and find(frame.f_locals)
            if found is not None:
                return found
        return None
    finally:
        del frame


def unpositionable(epoch_iterator: Any) -> str | None:
    """Why `fit()` cannot continue in the middle of an epoch of this data (the
    consumed batches cannot be drawn again in the same order); `None` when it can."""
    if epoch_iterator is None:
        return "the data of this fit() call could not be found"
    adapter = epoch_iterator.data_adapter
    kind = type(adapter).__name__
    steps = epoch_iterator.steps_per_epoch
    if kind == "GeneratorDataAdapter":
        return "a Python generator cannot be rewound to draw the consumed batches again"
    if steps and steps != adapter.num_batches:
        return f"with steps_per_epoch={steps}, one stream of batches runs across the epochs"
    if kind in ("ArrayDataAdapter", "TFDatasetAdapter"):
        return None
    if kind == "PyDatasetAdapter":
        return None if adapter.py_dataset.num_batches is not None else "the PyDataset has no num_batches (endless)"
    if kind == "TorchDataLoaderAdapter":
        loader = adapter.get_torch_dataloader()
        if getattr(loader, "generator", None) is not None:
            return ("the DataLoader draws its order from its own `generator=`, whose state at the start of the "
                    "epoch is not saved (leave it out: the global torch generator is)")
        return None
    return f"a {kind} cannot be rewound to draw the consumed batches again"


def advance_epochs(epoch_iterator: Any, epochs: int) -> None:
    """Make the iterators of a `tf.data.Dataset` that `fit()`'s first `epochs`
    epochs made (none drawn from): its reshuffle seed then stands where an
    uninterrupted run's does. `EpochIterator` makes one at each epoch's start
    and, when the number of batches is known (from the dataset's cardinality, or
    after a first epoch), one more at each epoch's end."""
    adapter = getattr(epoch_iterator, "data_adapter", None)
    if type(adapter).__name__ == "TFDatasetAdapter" and epochs > 0:
        make_iterators(adapter.get_tf_dataset(), 2 * epochs if adapter.num_batches else 2 * epochs - 1)


def make_iterators(data: Any, count: int) -> bool:
    """Make `count` iterators of `data` if it is a `tf.data.Dataset` (none drawn
    from: a `shuffle(..., seed=)` reshuffle seed advances once per iterator made);
    whether it is one. Other data is left alone (its iterators may draw)."""
    import sys

    tf = sys.modules.get("tensorflow")
    dataset = getattr(getattr(tf, "data", None), "Dataset", None)
    if dataset is None or not isinstance(data, dataset):
        return False
    for _ in range(count):
        iter(data)
    return True


def metric_variables(model: Any) -> list[Any]:
    """The variables of the model's compiled metrics (`model.metrics`), in order."""
    return list(getattr(model, "metrics_variables", []))


def skip_batch(model: Any, logs: Any, then: Any = None) -> None:
    """Have `fit()`'s next call of `model.train_function` only draw its batches
    (trained already), call `then()` if given, and return `logs`; the train
    function comes back at once."""
    import keras

    train, backend = model.train_function, keras.backend.backend()

    def skip(*args: Any) -> Any:
        model.train_function = train
        if backend in ("tensorflow", "jax"):  # the batches are drawn inside the train function
            iterator = args[-1]
            next(iterator)
            for _ in range(int(getattr(model, "steps_per_execution", 1) or 1) - 1):
                if next(iterator, None) is None:
                    break
        if then is not None:
            then()
        return (logs, args[0]) if backend == "jax" else logs

    model.train_function = skip


def build_metrics(model: Any, epoch_iterator: Any) -> None:
    """Build the compiled metrics before the first batch (TensorFlow builds them
    when it traces the train function), for their saved state to be assigned,
    from the data's element spec: no batch is drawn."""
    import keras

    if keras.backend.backend() != "tensorflow" or epoch_iterator is None:
        return
    compiled = getattr(model, "_compile_metrics", None)
    dataset = getattr(epoch_iterator, "_distributed_dataset", None)
    if compiled is not None and not compiled.built and dataset is not None:
        model._symbolic_build(data_batch=dataset.element_spec)
