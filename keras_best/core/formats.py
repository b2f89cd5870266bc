"""The save formats and which one a file name asks for (pure: no Keras, no I/O)."""

from __future__ import annotations

import os
import re

from keras_best.core.names import SET_SUFFIX

WEIGHTS, KERAS, SAVEDMODEL, ORBAX = "weights", "keras", "savedmodel", "orbax"
FORMATS = (WEIGHTS, KERAS, SAVEDMODEL, ORBAX)

# Inside a SavedModel directory we also keep the Keras weights, so that
# `load_best` and `restore_best_weights` work for every format.
EXPORT_WEIGHTS_NAME = "keras_best.weights.h5"


def resolve_format(filepath: str, save_format: str | None = None, save_weights_only: bool | None = None,
                   sharded: bool = False, orbax: bool = True) -> str:
    """The format implied by `filepath` and `save_format`, or a `ValueError`.

    With `save_weights_only` (True or False) and no `save_format`, the file
    name rules and messages of `keras.callbacks.ModelCheckpoint` apply
    (`BestCheckpoint` takes its arguments). `sharded` (`max_shard_size` given):
    weights saved as a `.weights.json` set, as `model.save_weights` does.
    `orbax=False` (a backend without Orbax saves): a name without a file
    extension is not an Orbax directory, and ModelCheckpoint's rules refuse it.

    >>> resolve_format("best.weights.h5"), resolve_format("m.keras")
    ('weights', 'keras')
    >>> resolve_format("export/best", "savedmodel")
    'savedmodel'
    >>> resolve_format("m.h5", save_weights_only=False)  # legacy `.h5`: a full model, as Keras saves it
    'keras'
    >>> resolve_format("runs/x/best-{epoch:03d}")  # no file extension: an Orbax checkpoint directory
    'orbax'
    """
    name = str(filepath)
    if sharded or name.endswith(SET_SUFFIX):
        return _sharded(name, save_format, save_weights_only, sharded)
    if save_format == ORBAX or (save_format is None and orbax and not has_extension(name)):
        if has_extension(name):
            raise ValueError(
                'save_format="orbax" saves each kept best as an Orbax checkpoint directory: give a name '
                f"without a file extension, e.g. 'runs/exp1/best-{{epoch:03d}}'. Received: filepath={name}"
            )
        return ORBAX
    if save_format is None and save_weights_only is not None:
        if save_weights_only and not name.endswith(".weights.h5"):
            raise ValueError(
                "When using `save_weights_only=True` in `ModelCheckpoint`"
                ", the filepath provided must end in `.weights.h5` "
                f"(Keras weights format). Received: filepath={name}"
            )
        if not name.endswith((".weights.h5", ".keras", ".h5")):
            raise ValueError(
                "The filepath provided must end in `.keras` "
                f"(Keras model format). Received: filepath={name}"
            )
        return WEIGHTS if name.endswith(".weights.h5") else KERAS
    if save_format is not None:
        aliases = {"tf": SAVEDMODEL, "tf_saved_model": SAVEDMODEL, "h5": WEIGHTS}
        fmt = aliases.get(save_format, save_format)
        if fmt not in FORMATS:
            raise ValueError(
                f"`save_format` must be one of {FORMATS}. Received: save_format={save_format!r}"
            )
        if fmt == SAVEDMODEL and name.endswith((".h5", ".keras")):
            raise ValueError(
                'save_format="savedmodel" writes a directory; give a directory name '
                f"without `.weights.h5`/`.keras`, e.g. 'runs/exp1/best_export'. "
                f"Received: filepath={name}"
            )
        if fmt == WEIGHTS and not name.endswith(".weights.h5"):
            raise ValueError(
                f"The filename must end in `.weights.h5`. Received: filepath={name}"
            )
        if fmt == KERAS and (not name.endswith((".keras", ".h5")) or name.endswith(".weights.h5")):
            raise ValueError(f"The filename must end in `.keras`. Received: filepath={name}")
        return fmt
    if name.endswith(".weights.h5"):
        return WEIGHTS
    if name.endswith(".keras"):
        return KERAS
    raise ValueError(
        "Cannot tell what to save from the file name. End it in `.weights.h5` "
        "(weights), `.keras` (full model), give a name without an extension (an Orbax checkpoint "
        "directory), or pass save_format=\"savedmodel\" with a directory name. "
        f"Received: filepath={name}"
    )


def has_extension(filepath: str) -> bool:
    """Whether the file name of `filepath` (placeholders left out) has an extension.

    >>> has_extension("best.weights.h5"), has_extension("best-{epoch:03d}-{val_loss:.4f}")
    (True, False)
    """
    name = re.sub(r"\{[^{}]*\}", "x", os.path.basename(str(filepath).rstrip("/")))
    return bool(os.path.splitext(name)[1])


def _sharded(name: str, save_format: str | None, save_weights_only: bool | None, sharded: bool) -> str:
    """The format of a sharded set (weights), or why `name` and the options cannot be one.

    >>> _sharded("m.keras", None, None, True)
    Traceback (most recent call last):
    ...
    ValueError: `max_shard_size` shards weights only: Keras's `model.save` writes no sharded `.keras` archive. Save sharded weights with a filepath ending in `.weights.json` (save_weights_only=True in BestCheckpoint), or drop max_shard_size. Received: filepath=m.keras
    """
    fmt = {"tf": SAVEDMODEL, "tf_saved_model": SAVEDMODEL, "h5": WEIGHTS}.get(save_format or "", save_format)
    if not sharded:
        raise ValueError("A `.weights.json` file is the index of a sharded weights set: pass `max_shard_size` "
                         "(the largest shard in GB, as in `model.save_weights`), or end the filename in "
                         f"`.weights.h5`. Received: filepath={name}")
    if fmt == SAVEDMODEL:
        raise ValueError('`max_shard_size` shards `.weights.json` sets; save_format="savedmodel" writes a '
                         "SavedModel directory, which it cannot shard. Drop one of them. Received: "
                         f"save_format={save_format!r}, filepath={name}")
    if fmt == KERAS or save_weights_only is False or name.endswith(".keras"):
        raise ValueError("`max_shard_size` shards weights only: Keras's `model.save` writes no sharded `.keras` "
                         "archive. Save sharded weights with a filepath ending in `.weights.json` "
                         "(save_weights_only=True in BestCheckpoint), or drop max_shard_size. "
                         f"Received: filepath={name}")
    if fmt not in (None, WEIGHTS):
        raise ValueError(f"`save_format` must be one of {FORMATS}. Received: save_format={save_format!r}")
    if not name.endswith(SET_SUFFIX):
        raise ValueError("The filename must end in `.weights.json` when `max_shard_size` is specified. "
                         f"Received: filepath={name}")
    return WEIGHTS
