"""What checkpointing costs a real training run, in wall time.

Trains a small CNN on scikit-learn's digits (8x8 images, 10 classes) with
`model.fit` for a fixed number of epochs, three ways, in interleaved rounds
(median reported):

  (a) no checkpointing,
  (b) `keras.callbacks.ModelCheckpoint(save_best_only=True, save_weights_only=True)`,
  (c) `keras_best.BestCheckpoint(save_best_only=True)` (background writes),
  (d) the same with `async_save=False`,

and prints each one's wall time relative to (a), and the CPU time of the
process (all threads), which other users of a shared machine disturb less.
Every run starts from the same initial weights and data order, so the epochs
that improve (and are saved) are the same for (b), (c) and (d).

`--dense` sets the width of the hidden Dense layer, hence the checkpoint
size (the default 2048 gives about 9 MB of weights; the file also holds
Adam's two slots, about 26 MB); the convolutional part stays small.

Usage: python benchmarks/training_overhead.py [--epochs 15] [--rounds 3] [--dense 2048]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_best import BestCheckpoint  # noqa: E402


def data():
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def build(dense: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(dense, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def callbacks_for(kind: str, directory: str) -> list[keras.callbacks.Callback]:
    path = os.path.join(directory, kind, "best.weights.h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "none":
        return []
    if kind == "ModelCheckpoint":
        return [keras.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True,
                                                save_weights_only=True)]
    if kind == "keras-best":
        return [BestCheckpoint(path, monitor="val_loss", save_best_only=True)]
    if kind == "keras-best sync":
        return [BestCheckpoint(path, monitor="val_loss", save_best_only=True, async_save=False)]
    raise ValueError(kind)


KINDS = ["none", "ModelCheckpoint", "keras-best", "keras-best sync"]


def run(kind: str, dense: int, epochs: int, root: str, train, val) -> tuple[float, float, int]:
    model = build(dense)
    directory = tempfile.mkdtemp(dir=root)
    callbacks = callbacks_for(kind, directory)
    os.sync()
    t, cpu = time.perf_counter(), time.process_time()
    history = model.fit(*train, validation_data=val, epochs=epochs, batch_size=64, verbose=0,
                        callbacks=callbacks, shuffle=False)
    seconds = time.perf_counter() - t  # BestCheckpoint's on_train_end waits for its writes
    cpu = time.process_time() - cpu
    losses = history.history["val_loss"]
    improved = sum(1 for i, v in enumerate(losses) if v < min(losses[:i], default=np.inf))
    shutil.rmtree(directory, ignore_errors=True)
    return seconds, cpu, improved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dense", type=int, default=2048)
    args = parser.parse_args()
    train, val = data()
    root = tempfile.mkdtemp(prefix="kb-overhead-")
    model = build(args.dense)
    mb = sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in model.weights) / 1e6
    print(f"keras-best training overhead | {platform.machine()} {os.cpu_count()} CPUs | Keras {keras.__version__} "
          f"| backend {keras.backend.backend()} | CNN on sklearn digits, {len(train[0])} train / {len(val[0])} val, {args.epochs} epochs, "
          f"{mb:.1f} MB of weights (file with Adam slots: ~{3 * mb:.0f} MB) | {args.rounds} rounds, medians",
          flush=True)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    cpus: dict[str, list[float]] = {k: [] for k in KINDS}
    saves = {}
    try:
        run("none", args.dense, 1, root, train, val)  # warm-up (tracing, caches)
        for _ in range(args.rounds):
            for kind in KINDS:
                seconds, cpu, improved = run(kind, args.dense, args.epochs, root, train, val)
                times[kind].append(seconds)
                cpus[kind].append(cpu)
                saves[kind] = improved
        base, cpu_base = statistics.median(times["none"]), statistics.median(cpus["none"])
        print(f"{'':<18}{'wall s':>8}{'vs none':>9}{'cpu s':>8}{'vs none':>9}{'saves':>7}   per-round wall seconds")
        for kind in KINDS:
            med, cpu = statistics.median(times[kind]), statistics.median(cpus[kind])
            rounds = " ".join(f"{t:.2f}" for t in times[kind])
            print(f"{kind:<18}{med:>8.2f}{med / base:>9.3f}{cpu:>8.2f}{cpu / cpu_base:>9.3f}"
                  f"{saves[kind] if kind != 'none' else 0:>7}   {rounds}")
        mc, kb = statistics.median(times["ModelCheckpoint"]), statistics.median(times["keras-best"])
        print(f"checkpointing overhead per saved epoch: ModelCheckpoint {(mc - base) / max(saves['keras-best'], 1) * 1e3:.0f} ms, "
              f"keras-best {(kb - base) / max(saves['keras-best'], 1) * 1e3:.0f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
