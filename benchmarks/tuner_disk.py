"""Disk used by a KerasTuner search, with and without keras-best.

The same 20-trial `RandomSearch` on scikit-learn's digits (Dense models of
about 0.3 to 2.6 MB of float32 weights, plus Adam's slots in the file, 2
epochs), once as KerasTuner runs it (every trial keeps
`checkpoint.weights.h5`) and once wrapped by `SearchBest(keep_top_k=3)`.
Prints the bytes of each project directory and their ratio.

Usage: python benchmarks/tuner_disk.py [--trials 20] [--keep 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_best.keras_tuner import SearchBest  # noqa: E402


def build(hp: keras_tuner.HyperParameters) -> keras.Model:
    units = hp.Int("units", 256, 2048, step=256)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(units // 4, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(hp.Float("lr", 1e-4, 1e-2, sampling="log")),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def disk_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(directory) for f in names)


def search(directory: str, trials: int, keep: int | None) -> tuple[int, int]:
    """Bytes of the project and the number of trial checkpoints left."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    tuner = keras_tuner.RandomSearch(build, objective="val_accuracy", max_trials=trials, seed=0,
                                     directory=directory, project_name="p")
    if keep is not None:
        SearchBest(keep_top_k=keep).wrap(tuner)
    tuner.search(x[:1200], y[:1200], validation_data=(x[1200:], y[1200:]), epochs=2, verbose=0)
    files = sum(os.path.exists(os.path.join(tuner.project_dir, n, "checkpoint.weights.h5"))
                for n in os.listdir(tuner.project_dir))
    return disk_bytes(tuner.project_dir), files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--keep", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_files = search(os.path.join(tmp, "plain"), args.trials, None)
        kept, kept_files = search(os.path.join(tmp, "kept"), args.trials, args.keep)
    print(f"backend {keras.backend.backend()}, {args.trials} trials")
    print(f"KerasTuner alone:               {plain / 1e6:8.2f} MB ({plain_files} checkpoints)")
    print(f"with SearchBest(keep_top_k={args.keep}): {kept / 1e6:8.2f} MB ({kept_files} checkpoints)")
    print(f"ratio: {plain / kept:.1f}x less disk")


if __name__ == "__main__":
    main()
