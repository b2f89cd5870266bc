"""One `MultiWorkerMirroredStrategy` worker for tests/test_distribute.py.

    python tests/workers/multiworker_worker.py INDEX PORTS RUN_DIR OUT_DIR

Every worker runs the same script (TF_CONFIG built from INDEX and the
comma-separated PORTS on localhost) with the tracker built outside
`strategy.scope()`, and writes OUT_DIR/worker{INDEX}.json (+ .npz) with
what it saw. Phases:

1. custom loop with `strategy.run`, metrics created under the scope,
   `.weights.h5` named by epoch + `save_last` + early stopping + `restore_best_weights`;
2. a monitored plain float that differs by worker (worker 0 improves,
   worker 1 worsens): decided on the mean, `.keras` saved every epoch;
3. SavedModel export at `finish()` (`export_at_finish=True`);
4. update() with a different epoch on each worker: a ValueError on both;
5. both workers made chief by TF_CONFIG: a ValueError on both.

The model holds a `synchronization="on_read"` variable, so reading its
weights is a collective op: a save on the chief alone would hang.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings

import keras
import numpy as np


@keras.saving.register_keras_serializable("keras_best_tests")
class Shift(keras.layers.Layer):
    """Adds a variable synchronised on read (reading it is a collective op)."""

    def build(self, input_shape):
        self.shift = keras.Variable(0.0, trainable=False, synchronization="on_read",
                                    aggregation="mean", name="shift")

    def call(self, x):
        return x + self.shift


def build_model():
    """A tiny regression model with one on-read variable."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1), Shift()])


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(192, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32") + 0.3 * rng.normal(size=(192, 1))).astype("float32")
    return (x[:128], y[:128]), (x[128:], y[128:])


def main(index: int, ports: list[str], run_dir: str, out_dir: str) -> None:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    })
    import tensorflow as tf

    from keras_best import BestWeightsTracker

    t0 = time.monotonic()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model()
        optimizer = keras.optimizers.SGD(0.1)
        val_loss = keras.metrics.Mean("val_loss")
    (x, y), (vx, vy) = data()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32).with_options(options))
    val = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((vx, vy)).batch(32).with_options(options))

    @tf.function
    def train_step(batch):
        def step(bx, by):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(bx, training=True) - by) ** 2)
                loss = loss / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        strategy.run(step, args=batch)

    @tf.function
    def val_step(batch):
        def step(bx, by):
            val_loss.update_state(tf.reduce_mean((model(bx) - by) ** 2))
        strategy.run(step, args=batch)

    out: dict = {"index": index, "pid": os.getpid()}
    caught: list[str] = []

    # 1. Synchronised metrics, weights named by epoch, save_last, early stopping.
    tracker = BestWeightsTracker(
        model, os.path.join(run_dir, "sync", "w-{epoch:02d}.weights.h5"), monitor="val_loss",
        keep_top_k=1, patience=2, min_delta=0.05, save_last=True, optimizer=optimizer,
        restore_best_weights=True, verbose=1)
    out["chief"] = tracker._run.chief
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as w, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        for epoch in range(40):
            val_loss.reset_state()
            for batch in train:
                train_step(batch)
            for batch in val:
                val_step(batch)
            decision = tracker.update(epoch, {"val_loss": val_loss, "local": float(index)})  # a plain float
            if decision.should_stop:
                break
        tracker.finish()
    caught += [str(m.message) for m in w if "differs by worker" in str(m.message)]
    out["printed"] = [line for line in printed.getvalue().splitlines() if line]
    out["sync"] = {"stop_epoch": epoch, "best_epoch": tracker.best_epoch, "best": tracker.best,
                   "history": [(h["epoch"], h["value"], h["metrics"]["local"]) for h in tracker.history]}
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), *model.get_weights())

    out.setdefault("phases", []).append(time.monotonic() - t0)

    # 2. A plain float that differs by worker: the decision follows the mean.
    mine = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0] if index == 0 else [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    tracker = BestWeightsTracker(
        model, os.path.join(run_dir, "plain", "m-{epoch:02d}.keras"), monitor="val_loss",
        save_best_only=False, keep_top_k=None, patience=2, verbose=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for epoch, value in enumerate(mine):
            decision = tracker.update(epoch, {"val_loss": value})
            if decision.should_stop:
                break
        tracker.finish()
    caught += [str(m.message) for m in w if "differs by worker" in str(m.message)]
    out["plain"] = {"stop_epoch": epoch, "values": [h["value"] for h in tracker.history]}

    out.setdefault("phases", []).append(time.monotonic() - t0)

    # 3. SavedModel export at finish().
    tracker = BestWeightsTracker(
        model, os.path.join(run_dir, "export", "best"), monitor="val_loss",
        save_format="savedmodel", export_at_finish=True, verbose=0)
    for epoch, value in enumerate([2.0, 1.0, 1.5]):
        tracker.update(epoch, {"val_loss": value})
    tracker.finish()

    out.setdefault("phases", []).append(time.monotonic() - t0)

    # 4. Workers disagree on the epoch: every worker raises, none hangs.
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "bad", "b.weights.h5"), verbose=0)
    try:
        tracker.update(index, {"val_loss": 1.0})
        out["mismatch"] = None
    except ValueError as e:
        out["mismatch"] = str(e)
    tracker.finish()

    # 5. TF_CONFIG makes both workers the chief: every worker raises.
    own = os.environ["TF_CONFIG"]
    os.environ["TF_CONFIG"] = json.dumps({**json.loads(own), "task": {"type": "worker", "index": 0}})
    try:
        tracker = BestWeightsTracker(model, os.path.join(run_dir, f"chief{index}", "c.weights.h5"), verbose=0)
    finally:
        os.environ["TF_CONFIG"] = own
    try:
        tracker.update(0, {"val_loss": 1.0})
        out["two_chiefs"] = None
    except ValueError as e:
        out["two_chiefs"] = str(e)
    tracker.finish()

    out["warnings"] = caught
    out["seconds"] = time.monotonic() - t0
    with open(os.path.join(out_dir, f"worker{index}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4])
