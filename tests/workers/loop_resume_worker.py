"""A custom loop with BestWeightsTracker over one shuffled data source, for the loop resume tests.

A tiny model (Dense, Dropout: a SeedGenerator; Adam) trained with
`train_on_batch` over `tracker.batches(epoch, data)`, resumable (`resume=True`).
Each source draws a new order every epoch when its iterator is made or first
drawn from: "generator" (a generator function calling `np.random.permutation`,
and adding noise drawn per batch from `np.random`), "dataloader" (torch
`DataLoader(shuffle=True)`, torch's global generator), "tf_data" (`shuffle(seed=)`,
reshuffled each iteration). At the end the final weights and optimizer variables
go to OUT (.npz), for comparison with an uninterrupted run. Used in-process by
`tests/test_loop_resume.py` and as a process it stops with SIGTERM.

Usage: python loop_resume_worker.py RUN_DIR OUT SOURCE
"""

import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_best import BestWeightsTracker  # noqa: E402

EPOCHS, BATCH, SAMPLES = 3, 8, 48  # 6 batches an epoch
STEPS = SAMPLES // BATCH
SOURCES = {"tensorflow": ["generator", "tf_data"], "jax": ["generator"],
           "torch": ["generator", "dataloader"]}[keras.backend.backend()]


def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 5)).astype("float32")
    return x, (x @ rng.normal(size=(5, 1))).astype("float32")


def source_for(source):
    """A function giving the data of one epoch (made anew, as a new process makes it)."""
    x, y = arrays()
    if source == "generator":
        def batches():  # the order is drawn at the first batch; noise at each
            order = np.random.permutation(SAMPLES)
            for i in range(STEPS):
                idx = order[i * BATCH:(i + 1) * BATCH]
                yield x[idx] + np.random.normal(scale=0.1, size=x[idx].shape).astype("float32"), y[idx]

        return batches
    if source == "tf_data":
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(SAMPLES, seed=1).batch(BATCH)
        return lambda: dataset
    if source == "dataloader":
        import torch

        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                             batch_size=BATCH, shuffle=True)
        return lambda: loader
    raise ValueError(source)


def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.3),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def train(run_dir, source, epochs=EPOCHS, at=None, signals="auto", pause=0.0):
    """The custom loop, resumable; sends itself SIGUSR1 after batch `at` = (epoch, step)."""
    model = build()
    epoch_data, (x, y) = source_for(source), arrays()
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "best.weights.h5"), monitor="val_loss",
                                 resume=True, preempt_signals=signals, verbose=0)
    for epoch in tracker.epochs(epochs):
        for step, (xb, yb) in tracker.batches(epoch, epoch_data()):
            model.train_on_batch(xb, yb)
            if pause:
                print(f"BATCH {epoch} {step}", flush=True)
                time.sleep(pause)
            if at == (epoch, step):  # an in-process preemption
                os.kill(os.getpid(), signal.SIGUSR1)
        tracker.update(epoch, {"val_loss": model.evaluate(x, y, verbose=0)})
    tracker.finish()
    return model


def results(model):
    """What must be bit-identical: the weights and the optimizer's variables."""
    out = {f"w{i}": keras.ops.convert_to_numpy(w) for i, w in enumerate(model.weights)}
    out.update({f"o{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)})
    return out


if __name__ == "__main__":
    run_dir, out, source = sys.argv[1:4]
    print("READY", flush=True)
    np.savez(out, **results(train(run_dir, source, pause=0.03)))
    print("DONE", flush=True)
