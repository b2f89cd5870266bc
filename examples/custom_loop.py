"""A custom GradientTape loop that keeps its best model with BestWeightsTracker.

Run: python examples/custom_loop.py [OUTPUT_DIR]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_best import BestWeightsTracker, load_best  # noqa: E402


def main(output: str = "runs/custom_loop") -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype("float32")
    y = (x[:, :4].sum(axis=1) + 0.5 * rng.normal(size=2000) > 0).astype("float32")[:, None]
    train = tf.data.Dataset.from_tensor_slices((x[:1600], y[:1600])).shuffle(1600, seed=0).batch(64)
    val = tf.data.Dataset.from_tensor_slices((x[1600:], y[1600:])).batch(256)

    def build() -> keras.Model:
        return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                                 keras.layers.Dense(1, activation="sigmoid")])

    model, optimizer = build(), keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.BinaryCrossentropy()
    train_loss = keras.metrics.Mean(name="loss")
    val_loss = keras.metrics.Mean(name="val_loss")
    val_acc = keras.metrics.BinaryAccuracy(name="val_accuracy")

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        train_loss.update_state(loss)

    @tf.function
    def validation_step(xb, yb):
        pred = model(xb)
        val_loss.update_state(loss_fn(yb, pred))
        val_acc.update_state(yb, pred)

    tracker = BestWeightsTracker(model, f"{output}/{{epoch:03d}}-{{val_loss:.4f}}.weights.h5",
                                 monitor="val_loss", keep_top_k=3, patience=3,
                                 restore_best_weights=True, optimizer=optimizer, resume=True)
    tracker.run(train_step, validation_step, train, val, epochs=30,
                metrics=[train_loss, val_loss, val_acc])
    print(f"\nbest val_loss {tracker.best:.4f} at epoch {tracker.best_epoch + 1}; kept:")
    for r in tracker.kept:
        print(f"  {r.path}  val_loss={r.value:.4f}")
    fresh = build()
    rec = load_best(fresh, output)
    print(f"load_best: epoch {rec.epoch + 1}, val_loss {rec.value:.4f}, from {rec.path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
