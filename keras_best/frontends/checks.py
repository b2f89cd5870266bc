"""Checks of the model, the optimizer and the save format, made when a front end is built."""

from __future__ import annotations

from typing import Any

from keras_best.core import formats as savers
from keras_best.core.extras import install_hint
from keras_best.core.options import Options


def check_format(filepath: str, options: Options) -> str:
    """The save format of `filepath` under `options`, or a `ValueError`."""
    fmt = savers.resolve_format(filepath, options.save_format)
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
    if options.export_at_finish and fmt != savers.SAVEDMODEL:
        raise ValueError(
            '`export_at_finish=True` needs save_format="savedmodel". '
            f"Received: save_format={options.save_format!r}, filepath={filepath}"
        )
    return fmt


def check_model(model: Any) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` must be a keras.Model (Sequential, functional or subclassed). "
            f"Received: {type(model).__name__}"
        )


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
