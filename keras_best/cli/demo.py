"""`keras-best demo`: keras-best on a real data set, in under a minute.

Trains a small classifier on scikit-learn's bundled digits (1,797 8x8 images
of handwritten digits; nothing is downloaded) twice:

1. a custom loop with `BestWeightsTracker`, written the Keras backend's own
   way (TensorFlow: `tf.GradientTape`; JAX: `jax.value_and_grad` with
   `stateless_call`; PyTorch: `loss.backward()`), on numpy batches;
2. `model.fit()` with `BestCheckpoint` (a drop-in for `ModelCheckpoint`);

both with early stopping (`patience=5`) and the 3 best files kept. Each run
prints what it saved and deleted epoch by epoch, what it kept, then reloads the
best into a fresh model with `load_best` and reports its test accuracy, and
that of the average of the kept files (`average_best`). With
matplotlib installed it also draws each run's learning curve.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Callable

from keras_best.cli import summary as summary_lib
from keras_best.cli.plot import MissingDependency
from keras_best.cli.tables import format_size

MARKER = ".keras-best-demo"
RUNS = ("custom_loop", "fit")
PATIENCE = 5
KEEP = 3
BATCH = 32
FILENAME = "{epoch:03d}-{val_loss:.4f}.weights.h5"


def load_data() -> dict[str, Any]:
    """Digits split into train / validation / test (stratified, fixed seed)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise MissingDependency(
            "keras-best demo needs scikit-learn for its data set (load_digits ships with "
            'scikit-learn; nothing is downloaded). Install it with: python -m pip install "keras-best[demo]"'
            '  (in a checkout: python -m pip install -e ".[demo]", or just: python -m pip install scikit-learn)'
        ) from e
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(
        x_train, y_train, test_size=0.25, random_state=0, stratify=y_train)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def build_model(seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),  # logits
    ], name="digits_mlp")


def test_accuracy(model: Any, data: dict[str, Any]) -> float:
    import numpy as np

    x, y = data["test"]
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


# ------------------------------------------------------------------ progress
class Progress:
    """One line per epoch: a bar, the metrics, and what the tracker did."""

    def __init__(self, tracker: Any, epochs: int, width: int = 20) -> None:
        self.tracker, self.epochs, self.width = tracker, epochs, width
        self._kept = {r.path for r in tracker.kept}
        self._start = time.time()

    def epoch_end(self) -> None:
        h = self.tracker.history[-1]
        epoch, m = h["epoch"], h["metrics"]
        kept = {r.path for r in self.tracker.kept}
        deleted, self._kept = sorted(self._kept - kept), kept
        done = int(self.width * (epoch + 1) / self.epochs)
        bar = "[" + "#" * done + "-" * (self.width - done) + "]"
        metrics = "  ".join(f"{k} {m[k]:.4f}" for k in ("loss", "val_loss", "val_accuracy") if k in m)
        if h["saved"] and h["improved"]:
            what = f"new best, saving {h['saved']}"
        elif h["saved"]:
            what = f"no new best ({h['wait']}/{PATIENCE}) but among the best {KEEP}, saving {h['saved']}"
        else:
            what = f"no improvement ({h['wait']}/{PATIENCE})"
        if deleted:
            what += f", deleting {', '.join(deleted)}"
        if self.tracker.stopped:
            what += " -> early stop"
        n = len(str(self.epochs))
        print(f"  epoch {epoch + 1:>{n}}/{self.epochs} {bar} {metrics}  {what}", flush=True)

    def elapsed(self) -> float:
        return time.time() - self._start


# ---------------------------------------------------------------------- runs
def batches(x: Any, y: Any, size: int, rng: Any = None) -> Any:
    """Numpy batches of `(x, y)`, shuffled by `rng` when given."""
    import numpy as np

    order = np.arange(len(x)) if rng is None else rng.permutation(len(x))
    for i in range(0, len(x), size):
        yield x[order[i:i + size]], y[order[i:i + size]]


def tensorflow_trainer(model: Any, optimizer: Any, loss_fn: Any, loss: Any) -> Callable[..., None]:
    """TensorFlow: `tf.GradientTape` in a `tf.function`."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def train_step(x: Any, y: Any) -> None:
        with tf.GradientTape() as tape:
            batch_loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(batch_loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        loss.update_state(batch_loss)

    def train_epoch(data: Any) -> None:
        for x, y in data:
            train_step(x, y)

    return train_epoch


def jax_trainer(model: Any, optimizer: Any, loss_fn: Any, loss: Any) -> Callable[..., None]:
    """JAX: `model.stateless_call` + `jax.value_and_grad` + `optimizer.stateless_apply`,
    jitted; the epoch's new state goes back into the variables before `update()`."""
    import jax

    def loss_of(trainable: Any, non_trainable: Any, x: Any, y: Any) -> Any:
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits), non_trainable

    @jax.jit
    def train_step(state: Any, x: Any, y: Any) -> Any:
        trainable, non_trainable, optimizer_vars = state
        (batch_loss, non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(
            trainable, non_trainable, x, y)
        trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return (trainable, non_trainable, optimizer_vars), batch_loss

    def train_epoch(data: Any) -> None:
        variables = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        state = tuple([v.value for v in vs] for vs in variables)
        for x, y in data:
            state, batch_loss = train_step(state, x, y)
            loss.update_state(batch_loss)
        for vs, values in zip(variables, state):  # the tracker saves what the variables hold
            for v, value in zip(vs, values):
                v.assign(value)

    return train_epoch


def torch_trainer(model: Any, optimizer: Any, loss_fn: Any, loss: Any) -> Callable[..., None]:
    """PyTorch: `loss.backward()`, then `optimizer.apply` with the gradients."""

    def train_epoch(data: Any) -> None:
        for x, y in data:
            model.zero_grad()
            batch_loss = loss_fn(y, model(x, training=True))
            batch_loss.backward()
            optimizer.apply([v.value.grad for v in model.trainable_variables], model.trainable_variables)
            loss.update_state(batch_loss.detach())

    return train_epoch


TRAINERS = {"tensorflow": (tensorflow_trainer, "tf.GradientTape"),
            "jax": (jax_trainer, "jax.value_and_grad"),
            "torch": (torch_trainer, "torch backward()")}


def trainer_of_backend() -> tuple[Callable[..., Any], str]:
    """This Keras backend's way to train one epoch, and its name."""
    import keras

    backend = keras.backend.backend()
    if backend not in TRAINERS:
        raise ValueError(f"keras-best demo trains on the {', '.join(TRAINERS)} backends. "
                         f"Set KERAS_BACKEND to one of them. Received: KERAS_BACKEND={backend!r}")
    return TRAINERS[backend]


def run_custom_loop(data: dict[str, Any], run_dir: str, epochs: int) -> Any:
    """A custom loop written the backend's own way; `BestWeightsTracker.update()` once per epoch."""
    import keras
    import numpy as np

    from keras_best import BestWeightsTracker

    model, optimizer = build_model(), keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    loss = keras.metrics.Mean(name="loss")
    val_loss = keras.metrics.Mean(name="val_loss")
    val_acc = keras.metrics.SparseCategoricalAccuracy(name="val_accuracy")
    train_epoch = trainer_of_backend()[0](model, optimizer, loss_fn, loss)
    rng = np.random.default_rng(0)

    tracker = BestWeightsTracker(
        model, os.path.join(run_dir, FILENAME),
        monitor="val_loss", keep_top_k=KEEP, patience=PATIENCE,
        restore_best_weights=True, optimizer=optimizer, save_last=True, verbose=0,
    )
    progress = Progress(tracker, epochs)
    for epoch in tracker.epochs(epochs):  # ends at the early stop
        for metric in (loss, val_loss, val_acc):
            metric.reset_state()
        train_epoch(batches(*data["train"], BATCH, rng))
        for x, y in batches(*data["val"], 256):
            logits = model(x, training=False)
            val_loss.update_state(loss_fn(y, logits))
            val_acc.update_state(y, logits)
        tracker.update(epoch, {"loss": loss, "val_loss": val_loss, "val_accuracy": val_acc})
        progress.epoch_end()
    tracker.finish()  # waits for background writes; puts the best weights back
    return tracker, progress.elapsed()


def run_fit(data: dict[str, Any], run_dir: str, epochs: int) -> Any:
    """`model.fit()` with `BestCheckpoint` where `ModelCheckpoint` would be."""
    import keras

    from keras_best import BestCheckpoint

    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    checkpoint = BestCheckpoint(
        os.path.join(run_dir, FILENAME),  # the same arguments as ModelCheckpoint...
        monitor="val_loss", save_best_only=True, save_weights_only=True,
        keep_top_k=KEEP, patience=PATIENCE, restore_best_weights=True, save_last=True,  # ...and more
    )
    progress: list[Progress] = []

    class ShowProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            progress.append(Progress(checkpoint.tracker, epochs))

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            progress[0].epoch_end()

    model.fit(*data["train"], validation_data=data["val"], epochs=epochs, batch_size=BATCH,
              shuffle=True, verbose=0, callbacks=[checkpoint, ShowProgress()])
    return checkpoint.tracker, progress[0].elapsed()


# ---------------------------------------------------------------------- main
def prepare_output(output: str) -> str:
    """Create `output`, or empty the demo's own runs from a previous demo there.

    Refuses a non-empty directory the demo did not make, so it never deletes
    anything else.
    """
    output = os.path.normpath(output)
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(f"--output {output!r} is a file; pass a directory for the demo's runs.")
    if os.path.isdir(output) and os.listdir(output):
        if not os.path.exists(os.path.join(output, MARKER)):
            raise FileExistsError(
                f"--output {output!r} is not empty and was not made by keras-best demo; "
                "pass a new or empty directory, e.g. --output keras-best-demo-2."
            )
        for name in RUNS:
            shutil.rmtree(os.path.join(output, name), ignore_errors=True)
            with_suffix = os.path.join(output, f"{name}.png")
            if os.path.exists(with_suffix):
                os.remove(with_suffix)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, MARKER), "w") as f:
        f.write("made by `keras-best demo`; a later demo run may empty this directory's runs\n")
    return output


def report(title: str, run_dir: str, data: dict[str, Any], seconds: float) -> dict[str, Any]:
    from keras_best import average_best, load_best

    s = summary_lib.summarize(run_dir)
    best = s["best"]
    epochs = s["epochs_run"]
    stop = (f"early stop after epoch {s['stopped']['epoch'] + 1} ({PATIENCE} epochs without improvement)"
            if s["stopped"] else "no early stop")
    print(f"  {epochs} epochs in {seconds:.1f} s, {stop}.")
    print(f"  Best: val_loss {best['value']:.4f} at epoch {best['epoch'] + 1}. "
          f"Kept the {len(s['kept'])} best files in {run_dir}:")
    for r in s["kept"]:
        acc = r["metrics"].get("val_accuracy", float("nan"))
        print(f"    epoch {r['epoch'] + 1:>3}  val_loss {r['value']:.4f}  val_accuracy {acc:.4f}  "
              f"{format_size(r['size_bytes']):>8}  {r['path']}")
    fresh = build_model(seed=1)  # other initial weights: load_best must overwrite all of them
    record = load_best(fresh, run_dir)
    acc = test_accuracy(fresh, data)
    print(f"  load_best(fresh_model, {run_dir!r}) -> epoch {record.epoch + 1}, "
          f"val_loss {record.value:.4f}; test accuracy {acc:.4f} ({len(data['test'][1])} unseen digits)")
    soup = build_model(seed=1)
    k = len(s["kept"])  # KEEP, or fewer in a run shorter than that
    averaged = average_best(soup, run_dir, k=k)  # the uniform average of the kept files
    soup_acc = test_accuracy(soup, data)
    print(f"  average_best(fresh_model, {run_dir!r}, k={k}) -> epochs "
          f"{', '.join(str(e + 1) for e in averaged.epochs)} averaged; test accuracy {soup_acc:.4f}")
    return {"title": title, "summary": s, "test_accuracy": acc, "record": record, "seconds": seconds,
            "average_test_accuracy": soup_acc, "averaged_epochs": averaged.epochs}


def main(output: str = "keras-best-demo", epochs: int = 60, plot: bool = True) -> int:
    """Run the demo into `output`; returns 0 (errors raise, the CLI prints them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: no C++ log lines
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--epochs must be an int >= 1. Received: {epochs!r}")
    data = load_data()  # first: a missing scikit-learn fails before anything is written
    _, how = trainer_of_backend()  # (and a backend that cannot train)
    output = prepare_output(output)
    import keras

    n = {k: len(v[1]) for k, v in data.items()}
    print(f"keras-best demo: scikit-learn's digits, {n['train']} train / {n['val']} validation / "
          f"{n['test']} test images (8x8, 10 classes), a 2-layer MLP, {keras.backend.backend()} backend.")
    print(f"Monitor val_loss, keep the {KEEP} best files, stop after {PATIENCE} epochs without "
          f"improvement, at most {epochs} epochs. Output: {output}\n")

    runs: list[tuple[str, str, Callable[..., Any]]] = [
        ("custom_loop", f"1/2 custom {how} loop + BestWeightsTracker", run_custom_loop),
        ("fit", "2/2 model.fit() + BestCheckpoint (drop-in for ModelCheckpoint)", run_fit),
    ]
    results = []
    for name, title, run in runs:
        print(f"[{title}]")
        run_dir = os.path.join(output, name)
        _, seconds = run(data, run_dir, epochs)
        results.append(report(title, run_dir, data, seconds))
        print()

    plots = []
    if plot:
        from keras_best.cli.plot import plot_run

        try:
            for name, _, _ in runs:
                plots.append(os.path.join(output, f"{name}.png"))
                plot_run(os.path.join(output, name), plots[-1])
        except MissingDependency as e:
            plots = []
            print(f"No learning-curve plots: {e}\n")
    print("Done. Next:")
    print(f"  keras-best inspect {os.path.join(output, 'custom_loop')}      # the run at a glance")
    print(f"  keras-best plot {os.path.join(output, 'fit')} -o fit-curve.png")
    if plots:
        print(f"  learning curves: {', '.join(plots)}")
    sys.stdout.flush()
    return 0


__all__ = ["build_model", "load_data", "main"]
