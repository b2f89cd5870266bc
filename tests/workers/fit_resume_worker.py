"""fit() with BestCheckpoint over one data source, for the mid-epoch resume tests.

A tiny model (Dense, Dropout: a SeedGenerator; Adam; a compiled metric) trained
with `fit()` on one of the SOURCES, resumable (`resume=True`). At the end the
final weights, optimizer variables and the last epochs' logs go to OUT (.npz),
for comparison with an uninterrupted run. Used in-process by
`tests/test_fit_resume.py` and as a process it stops with SIGTERM / SIGKILL.

Usage: python fit_resume_worker.py RUN_DIR OUT SOURCE [EVERY_BATCHES]
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_best import BestCheckpoint  # noqa: E402

EPOCHS, BATCH, SAMPLES = 3, 8, 48  # 6 batches an epoch
STEPS = SAMPLES // BATCH
SOURCES = {"tensorflow": ["arrays", "shuffled", "pydataset", "tf_data"],
           "jax": ["arrays", "shuffled", "pydataset"],
           "torch": ["arrays", "shuffled", "pydataset", "dataloader"]}[keras.backend.backend()]


def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 5)).astype("float32")
    return x, (x @ rng.normal(size=(5, 1))).astype("float32")


class Batches(keras.utils.PyDataset):
    """A PyDataset that shuffles its batches itself."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    @property
    def num_batches(self):
        return STEPS

    def __getitem__(self, i):
        return self.x[i * BATCH:(i + 1) * BATCH], self.y[i * BATCH:(i + 1) * BATCH]


def fit_args(source):
    """fit()'s data arguments for `source`, made anew (as a new process makes them)."""
    x, y = arrays()
    if source in ("arrays", "shuffled"):
        return {"x": x, "y": y, "batch_size": BATCH, "shuffle": source == "shuffled"}
    if source == "pydataset":
        return {"x": Batches(x, y), "shuffle": True}  # Keras shuffles the batch order with `random`
    if source == "tf_data":
        import tensorflow as tf

        return {"x": tf.data.Dataset.from_tensor_slices((x, y)).shuffle(SAMPLES, seed=1).batch(BATCH)}
    if source == "dataloader":
        import torch

        data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return {"x": torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)}
    raise ValueError(source)


def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.3),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    return model


class Pause(keras.callbacks.Callback):
    """Says which batch ended (for the process tests), and waits a little."""

    def __init__(self, pause=0.0, at=None):
        super().__init__()
        self.pause, self.at, self.epoch = pause, at, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.pause:
            print(f"BATCH {self.epoch} {batch}", flush=True)
            time.sleep(self.pause)
        if self.at == (self.epoch, batch):  # an in-process preemption
            import signal

            os.kill(os.getpid(), signal.SIGUSR1)


def train(run_dir, source, every=None, pause=0.0, at=None, signals="auto", verbose=0):
    """`fit()` with a resumable BestCheckpoint; returns (model, history)."""
    model = build()
    x, y = arrays()
    cb = BestCheckpoint(os.path.join(run_dir, "best.weights.h5"), monitor="val_loss", save_best_only=True,
                        resume=True, preempt_signals=signals, save_state_every_batches=every, verbose=verbose)
    history = model.fit(**fit_args(source), validation_data=(x, y), epochs=EPOCHS, verbose=0,
                        callbacks=[Pause(pause, at), cb])
    return model, history


def results(model, history):
    """What must be bit-identical: the weights, the optimizer's variables, the last epoch's logs."""
    out = {f"w{i}": keras.ops.convert_to_numpy(w) for i, w in enumerate(model.weights)}
    out.update({f"o{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)})
    out.update({f"log_{k}": np.float64(v[-1]) for k, v in history.history.items()})
    return out


if __name__ == "__main__":
    run_dir, out, source = sys.argv[1:4]
    every = int(sys.argv[4]) if len(sys.argv) > 4 else None
    print("READY", flush=True)
    np.savez(out, **results(*train(run_dir, source, every=every, pause=0.03)))
    print("DONE", flush=True)
