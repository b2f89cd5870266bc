"""What "best + early stopping + resume" costs `fit()` at each epoch end.

The same model (Dense, about 134 MB of float32 weights, Adam: weights and
slots about 400 MB) is trained with `model.fit` in repeated, interleaved runs,
two ways:

- trio       `keras.callbacks.ModelCheckpoint(save_best_only=True,
             save_weights_only=True)` + `EarlyStopping(restore_best_weights=True)`
             + `BackupAndRestore`: what a Keras user writes today.
- keras-best `BestCheckpoint(resume=True, patience=..., restore_best_weights=True)`,
             the same three jobs (best file, early stopping, resumable state).
- host copy  `[keras.ops.convert_to_numpy(v) for v in weights + optimizer
             variables]` at each epoch end, kept until the next: the floor, a
             fresh host copy of what the state holds.

Every epoch is a new best (a first callback sets `val_loss` to 1/(epoch+1)),
and each epoch takes `--epoch-s` seconds ("training": one real batch, then a
sleep, as the CPU is idle while an accelerator trains). Measured per epoch
end: from the first callback's `on_epoch_end` to the last's, i.e. how long
the training loop waits for the checkpointing callbacks. Per run, the median
over the epochs after the first; then, over the runs of each way, the best
and worst run and worst / best (goal for keras-best: <= 2), and the final wait
in `on_train_end` (keras-best waits there for its last writes to be durable);
last, each way's median over runs divided by the host copy's.

Usage: python benchmarks/epoch_end_cost.py [--runs 4] [--epochs 8] [--epoch-s 0.6] [--mb 134]
The disk is shared with everything else on the machine: compare runs made in
the same minutes only.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_best import BestCheckpoint  # noqa: E402

WIDTHS = {34: (2048, 2), 134: (4096, 2), 268: (4096, 4)}  # MB -> (width, layers)


def build(mb: int) -> keras.Model:
    width, layers = WIDTHS[mb]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width, use_bias=False) for _ in range(layers)]
    )
    model.compile(keras.optimizers.Adam(1e-4), "mse")
    return model


class Clock(keras.callbacks.Callback):
    """First callback: makes every epoch a new best, sleeps the "training"
    time at epoch begin, and starts the epoch-end clock."""

    def __init__(self, epoch_s: float) -> None:
        super().__init__()
        self.epoch_s, self.start, self.costs = epoch_s, 0.0, []

    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(self.epoch_s)

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = 1.0 / (epoch + 1)
        self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.start = time.perf_counter()


class Stop(keras.callbacks.Callback):
    """Last callback: stops the clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock, self.end_wait = clock, 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.clock.costs.append(time.perf_counter() - self.clock.start)

    def on_train_end(self, logs=None):
        self.end_wait = time.perf_counter() - self.clock.start


def callbacks_for(kind: str, directory: str, patience: int) -> list[keras.callbacks.Callback]:
    if kind == "trio":
        return [
            keras.callbacks.ModelCheckpoint(os.path.join(directory, "best.weights.h5"), monitor="val_loss",
                                            save_best_only=True, save_weights_only=True),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
            keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")),
        ]
    if kind == "host copy":
        return [HostCopy()]
    return [BestCheckpoint(os.path.join(directory, "best.weights.h5"), monitor="val_loss", resume=True,
                           patience=patience, restore_best_weights=True)]


class HostCopy(keras.callbacks.Callback):
    """The floor: one fresh host copy of the weights and optimizer variables."""

    def on_epoch_end(self, epoch, logs=None):
        self.copies = None
        self.copies = [keras.ops.convert_to_numpy(v) for v in self.model.weights + self.model.optimizer.variables]


KINDS = ["trio", "keras-best", "host copy"]


def run(kind: str, args, root: str, x, y) -> tuple[float, float]:
    model = build(args.mb)
    directory = tempfile.mkdtemp(dir=root)
    clock = Clock(args.epoch_s)
    callbacks = [clock] + callbacks_for(kind, directory, patience=args.epochs) + [Stop(clock)]
    stop = callbacks[-1]
    os.sync()
    model.fit(x, y, validation_data=(x, y), epochs=args.epochs, batch_size=len(x), verbose=0, callbacks=callbacks)
    shutil.rmtree(directory, ignore_errors=True)
    return statistics.median(clock.costs[1:]), stop.end_wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epoch-s", type=float, default=0.6)
    parser.add_argument("--mb", type=int, default=134, choices=sorted(WIDTHS))
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    width = WIDTHS[args.mb][0]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, width)).astype("float32")
    y = rng.normal(size=(8, width)).astype("float32")
    root = tempfile.mkdtemp(prefix="kb-epoch-end-", dir=args.dir)
    print(f"keras-best epoch-end cost | {platform.machine()} {os.cpu_count()} CPUs | Keras {keras.__version__} "
          f"| backend {keras.backend.backend()} | Dense {args.mb} MB + Adam | {args.epochs} epochs "
          f"{args.epoch_s} s apart, every one a new best | {args.runs} runs each, interleaved", flush=True)
    costs: dict[str, list[float]] = {k: [] for k in KINDS}
    waits: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        run("keras-best", argparse.Namespace(**{**vars(args), "epochs": 2}), root, x, y)  # warm-up
        for _ in range(args.runs):
            for kind in KINDS:
                cost, wait = run(kind, args, root, x, y)
                costs[kind].append(cost)
                waits[kind].append(wait)
        print(f"{'':<12}{'best run':>10}{'worst run':>10}{'worst/best':>11}{'end wait':>10}   "
              "per-run median epoch-end cost, ms")
        for kind in KINDS:
            c = costs[kind]
            print(f"{kind:<12}{min(c) * 1e3:>10.0f}{max(c) * 1e3:>10.0f}{max(c) / min(c):>11.2f}"
                  f"{statistics.median(waits[kind]) * 1e3:>10.0f}   " + " ".join(f"{v * 1e3:.0f}" for v in c))
        med = {kind: statistics.median(costs[kind]) for kind in KINDS}
        print(f"medians over runs: trio / keras-best {med['trio'] / med['keras-best']:.1f}x, "
              f"keras-best / host copy {med['keras-best'] / med['host copy']:.2f}, "
              f"trio / host copy {med['trio'] / med['host copy']:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
