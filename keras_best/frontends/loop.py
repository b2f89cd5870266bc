"""The loop `BestWeightsTracker.run()` drives: train, validate, update, stop early."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping


def run_epochs(
    tracker: Any,
    train_step: Callable[..., Any],
    validation_step: Callable[..., Any],
    train_data: Iterable[Any],
    validation_data: Iterable[Any],
    epochs: int,
    metrics: Iterable[Any] | Mapping[str, Any] = (),
) -> None:
    """Run `tracker.epochs(epochs)`, resetting `metrics` each epoch, with one
    Keras progress bar line per epoch (as `fit()` shows it). Batches go
    through `tracker.batches()`: a resumed epoch continues at the next batch,
    and a preemption signal saves the state and exits after the current one.

    In a resumed epoch the training metrics cover only the batches after the
    saved one; validation metrics, weights and decisions on them are as in
    an uninterrupted run."""
    import keras

    named = dict(metrics) if isinstance(metrics, Mapping) else {m.name: m for m in metrics}
    for epoch in tracker.epochs(epochs):
        for m in named.values():
            m.reset_state()
        if tracker.verbose:
            print(f"Epoch {epoch + 1}/{epochs}")
        # Metric results are shown as they are (not averaged again), as in fit().
        progbar = keras.utils.Progbar(_length(train_data), verbose=1 if tracker.verbose else 0,
                                      stateless_metrics=set())
        seen = tracker.initial_step if epoch == tracker.initial_epoch else 0  # > 0: resumed mid-epoch
        for step, batch in tracker.batches(epoch, train_data):  # preemption: the state of this batch, exit
            _call(train_step, batch)
            seen = step + 1
            progbar.update(seen, _results(named, validation=False), finalize=False)
        validated = sum(1 for batch in validation_data if _call(validation_step, batch) or True)
        for what, count, data in (("training", seen, train_data),
                                  ("validation", validated, validation_data)):
            if not count:
                raise ValueError(
                    f"Epoch {epoch + 1} saw no {what} batches: `{what}_data` gave nothing"
                    f"{' (a generator or iterator can be read only once)' if iter(data) is data else ''}. "
                    "Pass data that can be iterated once per epoch: a list, a tf.data.Dataset, a "
                    "keras.utils.PyDataset or a torch DataLoader."
                )
        progbar.target = seen  # (known now, also for data without a length)
        progbar.update(seen, _results(named, validation=True), finalize=True)  # the same line, with val_*
        tracker.update(epoch, named)


def _results(named: Mapping[str, Any], validation: bool) -> list[tuple[str, float]]:
    import keras

    return [(k, float(keras.ops.convert_to_numpy(v.result())))
            for k, v in named.items() if validation or not k.startswith("val_")]


def _length(data: Any) -> int | None:
    try:
        n = len(data)
    except TypeError:
        return None
    return n if n >= 0 else None


def _call(fn: Callable[..., Any], batch: Any) -> Any:
    return fn(*batch) if isinstance(batch, (tuple, list)) else fn(batch)
