"""A training process for the crash tests: killed at random instants by the test.

Each epoch gives the model weights that are a known function of the epoch, so
the test can tell exactly which epoch a file holds.

Usage: python crash_worker.py RUN_DIR EPOCHS [async|sync|sharded]
("sharded": background writes of `.weights.json` sets of 5 shards each.)
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The test interrupts this process with SIGINT too: take it as Ctrl-C even when the
# test runs where SIGINT is ignored (a background job inherits SIG_IGN; so would this).
signal.signal(signal.SIGINT, signal.default_int_handler)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_best import BestWeightsTracker  # noqa: E402

UNITS = 1024  # 4 dense layers of 1024x1024: ~17 MB of float32, saves take tens of ms


def build() -> keras.Model:
    return keras.Sequential(
        [keras.Input((UNITS,))] + [keras.layers.Dense(UNITS) for _ in range(4)] + [keras.layers.Dense(1)]
    )


def pattern(model: keras.Model, epoch: int) -> list[np.ndarray]:
    return [np.full(w.shape, epoch + 1e-3 * i, dtype=w.dtype) for i, w in enumerate(model.weights)]


def value_of(epoch: int) -> float:
    # Improves most epochs; every third epoch is worse (non-improving, may enter top-k).
    return 1.0 / (epoch + 1) + (0.5 if epoch % 3 == 2 else 0.0)


def main(run_dir: str, epochs: int, how: str = "sync") -> None:
    model = build()
    options = {"async_save": how == "async"} if how == "async" else {}
    if how == "sharded":  # one 1024x1024 kernel (4 MB) and its bias a shard
        options = {"max_shard_size": 5e6 / 1024**3}
    name = "{epoch:03d}.weights.json" if how == "sharded" else "{epoch:03d}.weights.h5"
    tracker = BestWeightsTracker(
        model, os.path.join(run_dir, name), monitor="val_loss",
        keep_top_k=2, save_last=True, resume=True, verbose=0, **options,
    )
    print(f"READY {tracker.initial_epoch}", flush=True)
    for epoch in range(tracker.initial_epoch, epochs):
        model.set_weights(pattern(model, epoch))
        print(f"BEGIN {epoch}", flush=True)
        tracker.update(epoch, {"val_loss": value_of(epoch)})
        print(f"END {epoch}", flush=True)
    tracker.finish()
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
