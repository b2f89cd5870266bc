"""`MirroredStrategy` over two logical CPU devices, for tests/test_distribute.py.

    python tests/workers/mirrored_worker.py RUN_DIR OUT_DIR

Logical devices must be configured before TensorFlow initialises its devices,
hence a process of its own. Trackers and callbacks are built outside
`strategy.scope()`. Writes OUT_DIR/mirrored.json and the final (restored
best) weights of each part as .npz:

1. `model.fit()` with `BestCheckpoint` (.weights.h5, patience,
   restore_best_weights);
2. a custom loop with `strategy.run` and `BestWeightsTracker` (.keras,
   metrics created under the scope, patience, restore_best_weights).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def main(run_dir: str, out_dir: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras

    from keras_best import BestCheckpoint, BestWeightsTracker
    from tests.workers.multiworker_worker import build_model, data

    t0 = time.monotonic()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out: dict = {"replicas": strategy.num_replicas_in_sync}
    (x, y), (vx, vy) = data()

    # 1. fit() + BestCheckpoint, built outside the scope.
    callback = BestCheckpoint(os.path.join(run_dir, "fit", "best.weights.h5"), monitor="val_loss",
                              save_best_only=True, save_weights_only=True, patience=2,
                              min_delta=0.05, restore_best_weights=True)
    with strategy.scope():
        model = build_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, y, validation_data=(vx, vy), batch_size=32, epochs=40, verbose=0,
                        callbacks=[callback])
    out["fit"] = {"val_loss": history.history["val_loss"], "best_epoch": callback.tracker.best_epoch,
                  "best": callback.best, "stopped": callback.tracker.stopped}
    np.savez(os.path.join(out_dir, "fit.npz"), *model.get_weights())

    # 2. Custom loop with strategy.run.
    with strategy.scope():
        tracker_model = build_model()
        optimizer = keras.optimizers.SGD(0.1)
        val_loss = keras.metrics.Mean("val_loss")
    tracker = BestWeightsTracker(tracker_model, os.path.join(run_dir, "loop", "best.keras"),
                                 monitor="val_loss", patience=2, min_delta=0.05, optimizer=optimizer,
                                 save_last=True, restore_best_weights=True, verbose=0)
    train = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(32))
    val = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((vx, vy)).batch(32))

    @tf.function
    def train_step(batch):
        def step(bx, by):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((tracker_model(bx, training=True) - by) ** 2)
                loss = loss / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, tracker_model.trainable_variables)
            optimizer.apply_gradients(zip(grads, tracker_model.trainable_variables))
        strategy.run(step, args=batch)

    @tf.function
    def val_step(batch):
        strategy.run(lambda bx, by: val_loss.update_state(tf.reduce_mean((tracker_model(bx) - by) ** 2)),
                     args=batch)

    for epoch in range(40):
        val_loss.reset_state()
        for batch in train:
            train_step(batch)
        for batch in val:
            val_step(batch)
        if tracker.update(epoch, {"val_loss": val_loss}).should_stop:
            break
    tracker.finish()
    out["loop"] = {"stop_epoch": epoch, "best_epoch": tracker.best_epoch, "best": tracker.best,
                   "values": [h["value"] for h in tracker.history]}
    np.savez(os.path.join(out_dir, "loop.npz"), *tracker_model.get_weights())
    out["seconds"] = time.monotonic() - t0
    with open(os.path.join(out_dir, "mirrored.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
