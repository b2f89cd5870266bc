"""A training process for the preemption tests: sent SIGTERM at random instants.

Real training (Adam, deterministic numpy batches), resumable: `batches()` skips
what a mid-epoch state covers and stops at the end of the batch a signal came
in. At the end the final weights, optimizer variables and the tracker's best are
written to OUT (.npz), for comparison with an uninterrupted run.

`handloop` is a loop that iterates its own batches (no `batches()`): it starts
at `initial_step` itself and calls `after_batch(epoch, step)` after each batch.

Usage: python preempt_worker.py RUN_DIR OUT [loop|handloop|fit] [SIGNALS]
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_best import BestCheckpoint, BestWeightsTracker  # noqa: E402

EPOCHS, BATCH, SAMPLES = 4, 8, 64
PAUSE = 0.03  # per batch, so that signals land at many different batches


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1))).astype("float32")
    return x, y


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.2),
                              keras.layers.Dense(1)])  # Dropout: a SeedGenerator whose state must come back
    return model


def _custom_loop(run_dir: str, signals) -> tuple:
    """What both custom loops start with: the data, the model, its optimizer, the
    tracker (its resume point printed for the test) and a training step."""
    x, y = data()
    model, optimizer = build(), keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "{epoch:02d}.weights.h5"), monitor="val_loss",
                                 keep_top_k=2, resume=True, optimizer=optimizer, verbose=0, preempt_signals=signals)
    print(f"READY {tracker.initial_epoch} {tracker.initial_step}", flush=True)
    return x, y, model, optimizer, tracker, train_step_for(model, optimizer)


def loop(run_dir: str, signals) -> tuple[keras.Model, keras.optimizers.Optimizer, object]:
    import keras.ops as ops

    x, y, model, optimizer, tracker, step_fn = _custom_loop(run_dir, signals)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, SAMPLES, BATCH)]
    for epoch in range(tracker.initial_epoch, 0 if tracker.stopped else EPOCHS):
        for step, (bx, by) in tracker.batches(epoch, batches):
            noise = np.random.normal(scale=0.01, size=bx.shape).astype("float32")  # the global stream
            step_fn(bx + noise, by)
            print(f"BATCH {epoch} {step}", flush=True)
            time.sleep(PAUSE)
        val_loss = ops.mean(ops.square(ops.subtract(model(x), y)))  # a tensor (on torch, one that carries a gradient)
        if tracker.update(epoch, {"val_loss": val_loss}).should_stop:
            break
    tracker.finish()
    return model, optimizer, tracker


def handloop(run_dir: str, signals) -> tuple[keras.Model, keras.optimizers.Optimizer, object]:
    """The documented pattern for a loop over its own batches (docs/resume.md)."""
    import keras.ops as ops

    x, y, model, optimizer, tracker, step_fn = _custom_loop(run_dir, signals)
    for epoch in tracker.epochs(EPOCHS):
        start = tracker.initial_step if epoch == tracker.initial_epoch else 0
        for step in range(start, SAMPLES // BATCH):
            step_fn(x[step * BATCH:(step + 1) * BATCH], y[step * BATCH:(step + 1) * BATCH])
            print(f"BATCH {epoch} {step}", flush=True)
            tracker.after_batch(epoch, step)  # a signal: the state of this batch is saved, exit 143
            time.sleep(PAUSE)
        tracker.update(epoch, {"val_loss": ops.mean(ops.square(ops.subtract(model(x), y)))})
    tracker.finish()
    return model, optimizer, tracker


def train_step_for(model, optimizer):
    """One training step written the backend's way."""
    backend = keras.backend.backend()
    variables = model.trainable_variables

    def mse(bx, by):
        return keras.ops.mean(keras.ops.square(keras.ops.subtract(model(bx, training=True), by)))

    if backend == "tensorflow":
        import tensorflow as tf

        def step(bx, by):
            with tf.GradientTape() as tape:
                loss = mse(bx, by)
            optimizer.apply(tape.gradient(loss, variables), variables)
    elif backend == "torch":
        def step(bx, by):
            model.zero_grad()
            mse(bx, by).backward()
            optimizer.apply([v.value.grad for v in variables], variables)
    else:
        import jax

        def step(bx, by):
            non_trainable = [v.value for v in model.non_trainable_variables]

            def loss_of(trainable):
                pred, _ = model.stateless_call(trainable, non_trainable, bx, training=True)
                return keras.ops.mean(keras.ops.square(pred - by))

            optimizer.apply(jax.grad(loss_of)([v.value for v in variables]), variables)
    return step


class Pause(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"BATCH {batch}", flush=True)
        time.sleep(PAUSE)


def fit(run_dir: str, signals):
    x, y = data()
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.build((None, 6))
    model.optimizer.build(model.trainable_variables)
    cb = BestCheckpoint(os.path.join(run_dir, "best.weights.h5"), monitor="val_loss", save_best_only=True,
                        resume=True, preempt_signals=signals)
    print("READY 0 0", flush=True)
    model.fit(x, y, validation_data=(x, y), epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0,
              callbacks=[Pause(), cb])
    return model, model.optimizer, cb.tracker


def main(run_dir: str, out: str, how: str = "loop", signals: str = "auto") -> None:
    signals = signals.split(",") if signals != "auto" else "auto"
    model, optimizer, tracker = {"loop": loop, "handloop": handloop, "fit": fit}[how](run_dir, signals)
    np.savez(out, best=np.float64(tracker.best), best_epoch=tracker.best_epoch,
             iterations=int(keras.ops.convert_to_numpy(optimizer.iterations)),
             **{f"w{i}": keras.ops.convert_to_numpy(w) for i, w in enumerate(model.weights)},
             **{f"o{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer.variables)})
    print("DONE", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
