"""The front ends' checks, each rule written once: the model, the optimizer,
the save format and `filepath`'s placeholders (when a front end is built),
and which updates hold validation values (at each update)."""

from __future__ import annotations

import warnings
from typing import Any, Mapping

from keras_best.core import formats as savers
from keras_best.core.extras import install_hint
from keras_best.core.objective import Objective, infer_mode
from keras_best.core.options import Options
from keras_best.core.paths import RunPath
from keras_best.keras_adapter.fit import compiled_metric, compiled_metric_direction, metric_direction


def check_format(filepath: str, options: Options) -> str:
    """The save format of `filepath` under `options`, or a `ValueError`."""
    fmt = savers.resolve_format(filepath, options.save_format, sharded=options.max_shard_size is not None)
    if fmt == savers.SAVEDMODEL:
        import importlib.util

        import keras

        if keras.backend.backend() == "torch":
            raise ValueError(
                'save_format="savedmodel" cannot work on the torch backend: Keras\'s own '
                '`model.export(format="tf_saved_model")` fails there. Save `.keras` or `.weights.h5` '
                f"files instead, or train on TensorFlow or JAX. Received: filepath={filepath}"
            )
        if importlib.util.find_spec("tensorflow") is None:
            raise ValueError(
                'save_format="savedmodel" writes a TensorFlow SavedModel, and TensorFlow is not '
                f"installed. Install it ({install_hint('tensorflow', 'tensorflow')}), or save `.keras` "
                f"or `.weights.h5` files. Received: filepath={filepath}"
            )
    if fmt == savers.ORBAX:
        import keras

        if keras.backend.backend() != "jax":
            raise ValueError(
                'save_format="orbax" (a filepath without a file extension) saves a model-parallel run on '
                f"the JAX backend; this is {keras.backend.backend()}. End the filepath in `.weights.h5` or "
                f"`.keras`. Received: filepath={filepath}"
            )
    if options.export_at_finish and fmt != savers.SAVEDMODEL:
        raise ValueError(
            '`export_at_finish=True` needs save_format="savedmodel". '
            f"Received: save_format={options.save_format!r}, filepath={filepath}"
        )
    return fmt


def check_model(model: Any, options: Options | None = None) -> None:
    """`model` is a Keras model; with `options`, their `optimizer=` fits it, and
    a run that keeps a training state has an optimizer to put in it."""
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` must be a keras.Model (Sequential, functional or subclassed). "
            f"Received: {type(model).__name__}"
        )
    if options is not None:
        check_optimizer(options.optimizer, model)
        check_state_optimizer(options, optimizer_of(model, options))


def optimizer_of(model: Any, options: Options) -> Any:
    """The optimizer a run saves: `optimizer=`, else the compiled model's."""
    return options.optimizer if options.optimizer is not None else getattr(model, "optimizer", None)


def check_optimizer(optimizer: Any, model: Any) -> None:
    """`optimizer=` is a Keras optimizer, and if built, built for this model."""
    if optimizer is None:
        return
    import keras

    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "`optimizer` must be a keras.optimizers.Optimizer instance (the one your train step "
            f"applies), e.g. keras.optimizers.Adam(1e-3). Received: optimizer={optimizer!r}"
        )
    from keras_best.keras_adapter.h5_layout import optimizer_fits

    if not optimizer_fits(optimizer, model):
        raise ValueError(
            "`optimizer` was built for other variables than this model's trainable variables, so its "
            "state could not be saved or resumed with this model. Pass the optimizer that trains "
            "this model (or a new one)."
        )


def check_state_optimizer(options: Options, optimizer: Any) -> None:
    """Warn when the run keeps a training state but has no optimizer to put in it."""
    if options.keeps_state and optimizer is None and not options.state:
        option = "resume=True" if options.resume else "save_last=True"
        warnings.warn(
            f"{option} saves the training state to continue from, but there is no optimizer to save "
            "in it: the model is not compiled and no `optimizer=` was given. A resumed run would "
            "start the optimizer afresh (Adam's moments and step count lost). Pass "
            "optimizer=<the optimizer your train step applies>.", stacklevel=5)


def check_placeholders(path: RunPath, options: Options | None = None, save_freq: Any = None) -> None:
    """`filepath`'s placeholders against what the run keeps: several files
    need one that differs per epoch; `{batch}` needs saves at batch ends (not
    `save_freq="epoch"`; for `update()` see `check_update`)."""
    if save_freq == "epoch" and "batch" in path.fields:
        raise ValueError(
            "`filepath` uses {batch}, but with save_freq='epoch' saves happen at epoch "
            "ends, where there is no batch. Use {epoch}, or an int save_freq to save "
            f"every N batches. Received: filepath={path.filepath}"
        )
    if options is None or path.fields:
        return
    if options.keep_top_k is not None and options.keep_top_k > 1:
        raise ValueError(
            f"keep_top_k={options.keep_top_k} keeps several files, so `filepath` needs a "
            "placeholder that differs per epoch, e.g. 'best-{epoch:03d}.weights.h5'. "
            f"Received: filepath={path.filepath}"
        )
    if options.archive_every is not None:
        raise ValueError(
            f"archive_every={options.archive_every!r} keeps a file every {options.archive_every}"
            f"{' epochs' if options.archive_epochs else ''} besides "
            "the best, so `filepath` needs a placeholder that differs per epoch, e.g. "
            f"'{{epoch:03d}}.weights.h5'. Received: filepath={path.filepath}"
        )


def validated(objective: Objective, values: Mapping[str, float]) -> bool:
    """False for an update without any validation value while the monitor
    names only validation metrics (`fit(validation_freq=k)`, `save_freq=N`
    batches, no validation data): it is recorded as "no value" (never NaN),
    decides nothing and counts no patience. (Without a needed monitor it is
    still saved, as `ModelCheckpoint` does.)

    >>> validated(Objective("val_loss"), {"loss": 0.5})
    False
    """
    names = objective.names
    if not names or not all(n.startswith("val_") for n in names) or any(n in values for n in names):
        return True
    return any(k.startswith("val_") for k in values)


def check_update(objective: Objective, options: Options, path: RunPath, values: Mapping[str, float],
                 step: int | None, model: Any, metrics: Mapping[str, Any]) -> None:
    """A validated update's checks, at every one (a key missing later must not
    silently read as NaN): the monitored and required keys, and `filepath`'s
    placeholders; then every "auto" mode is resolved (`resolve_modes(final=True)`)."""
    objective.check_keys(values, needs_monitor=options.needs_monitor)
    if step is None and "batch" in path.fields:
        raise ValueError(
            "`filepath` uses {batch}, but update() was called without `step=`. Pass the batch "
            f"index as step=..., or use {{epoch}} instead. Received: filepath={path.filepath}"
        )
    missing = [f for f in path.metric_fields() if f not in values]
    if missing:
        raise ValueError(
            f"`filepath` uses {missing}, which are not among the metrics given to "
            f"update(): {sorted(values)}. Received: filepath={path.filepath}"
        )
    resolve_modes(objective, model, metrics, final=True)


def resolve_modes(objective: Objective, model: Any, metrics: Mapping[str, Any] | None = None,
                  final: bool = False) -> None:
    """Resolve `mode="auto"` of each name no rule infers from the Keras metric
    object given for it in `metrics`, else from `model`'s compiled metric;
    with `final`, a name still unresolved raises (asks for "min" or "max")."""
    for name in objective.unresolved:
        objective.hint(name, metric_direction((metrics or {}).get(name)) or compiled_metric_direction(model, name))
    if final:
        objective.finalize()


def check_train_begin(objective: Objective, model: Any) -> None:
    """What `fit()` knows at train begin and would otherwise fail the first save after a whole epoch:
    a model Keras cannot save (not built), and a monitored metric compiled into the model whose
    direction "auto" cannot infer (the message of a custom loop's first update)."""
    import keras

    from keras_best.training_state.parts import require_built

    if model.weights and not model.built and type(model).call is keras.Model.call:  # nothing will build it
        require_built(model)  # (TensorFlow builds a model with call() at its first batch, after train begin)
    resolve_modes(objective, model)
    for name in objective.unresolved:
        if compiled_metric(model, name) is not None:
            infer_mode(name)  # raises: "Cannot infer whether `name` should be minimised or maximised..."


def check_keeps_state(options: Options) -> None:
    if not options.keeps_state:
        raise ValueError("save_state() writes the training state, which this run does not keep: pass "
                         "resume=True (or save_last=True) to the tracker.")
