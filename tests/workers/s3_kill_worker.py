"""A training process writing to S3, for tests/test_s3.py: SIGKILLed at random instants.

Each epoch gives the model weights that are a known function of the epoch
(`crash_worker.pattern`), so the test can tell exactly which epoch a file holds.
The model's files are ~12.6 MB, and s3fs uploads them in 5 MiB parts (S3's
smallest) instead of its 50 MiB default: a kill lands in a multipart upload as
it does with the default parts on a 150 MB file.

Usage: python s3_kill_worker.py RUN_URL EPOCHS   (the S3 endpoint and credentials from the environment)
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from keras_best import BestWeightsTracker  # noqa: E402
from tests.workers.crash_worker import pattern, value_of  # noqa: E402

PART = 5 * 2**20

UNITS = 1024  # 3 dense layers of 1024x1024: ~12.6 MB of float32, 3 parts a file


def build() -> keras.Model:
    return keras.Sequential([keras.Input((UNITS,))] + [keras.layers.Dense(UNITS) for _ in range(3)])


def small_parts() -> None:
    """Have s3fs upload in `PART`-byte parts (imported here: collecting the tests
    imports this module, where s3fs may be missing)."""
    import s3fs.core

    original = s3fs.core.calculate_chunksize
    s3fs.core.calculate_chunksize = lambda size, chunksize=None, **kw: original(size, chunksize or PART, **kw)


def main(run: str, epochs: int) -> None:
    small_parts()
    model = build()
    tracker = BestWeightsTracker(model, f"{run}/{{epoch:03d}}.weights.h5", monitor="val_loss", keep_top_k=2,
                                 save_last=True, resume=True, optimizer=keras.optimizers.SGD(), verbose=0)
    print(f"READY {tracker.initial_epoch}", flush=True)
    for epoch in range(tracker.initial_epoch, epochs):
        model.set_weights(pattern(model, epoch))
        tracker.update(epoch, {"val_loss": value_of(epoch)})
    tracker.finish()
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
