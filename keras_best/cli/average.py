"""`keras-best average RUN_DIR -k 3 -o FILE`: a run's k best kept files, averaged, in one file.

The model comes from the run's own `.keras` files (the best one's
architecture) or from `--model FILE.keras`; `average_best` puts the average
into it and the stock Keras saver writes FILE (`model.save_weights` for
`.weights.h5`, `model.save` for `.keras`) under a temp name beside it, renamed
into place once complete: FILE is the old file or the new one, never a part.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from keras_best.core.formats import KERAS
from keras_best.storage import files, manifest

SUFFIXES = (".weights.h5", ".keras")


def average(run_dir: str, k: int, output: str, model_file: str | None = None, by: str | None = None,
            by_mode: str | None = None) -> int:
    """Average the run's `k` best kept files into `output`; print what was averaged."""
    from keras_best.cli import summary

    if not output.endswith(SUFFIXES):
        raise ValueError(f"-o must name a .keras or .weights.h5 file (the stock Keras saver picks the format "
                         f"by the suffix). Received: -o {output!r}")
    if model_file is not None and not model_file.endswith(".keras"):
        raise ValueError(f"--model must be a .keras file (a saved model of the run's architecture). "
                         f"Received: --model {model_file!r}")
    directory = summary.resolve_run_directory(run_dir)
    record = manifest.read(directory)
    if model_file is None and record.save_format != KERAS:
        raise ValueError(
            f"The run in {directory!r} keeps {record.save_format} files, which hold no architecture: pass "
            "--model FILE.keras (a saved model of the run's architecture, e.g. model.save('arch.keras') "
            "where the model is built)."
        )
    import keras

    from keras_best.frontends.average import average_best
    from keras_best.frontends.loading import current_file, rank_kept, read_best

    if model_file is None:
        best = read_best(directory) if by is None else rank_kept(directory, by, by_mode)[0]
        model_file = current_file(directory, best.path)
    model = keras.saving.load_model(model_file, compile=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = average_best(model, directory, k, by=by, by_mode=by_mode)
    _save(model, output)
    epochs = ", ".join(str(m.epoch + 1) for m in result.members)
    ranked = f"by {result.members[0].monitor}" if result.members[0].monitor else "as recorded"
    print(f"Averaged epochs {epochs} (the {len(result.members)} best kept files {ranked}; epochs count from 1) "
          f"of {directory} -> {output}")
    for note in result.notes:
        print(f"Note: {note}.")
    del caught  # the notes are printed above, once each
    return 0


def _save(model: Any, output: str) -> None:
    """Write `output` with the stock saver, atomically (temp name beside it, then renamed)."""
    tmp = files.tmp_path(os.path.abspath(output))  # beside it, with its suffix (the stock saver checks it)

    def write(path: str) -> None:
        if output.endswith(".keras"):
            model.save(path)
        else:
            model.save_weights(path)

    try:
        files.write_durably(tmp, write)
        files.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
