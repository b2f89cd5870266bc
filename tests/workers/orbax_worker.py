"""One process of a model-parallel JAX job saved through Orbax, for tests/test_orbax.py.

    python tests/workers/orbax_worker.py MODE RUN_DIR OUT_DIR [MESH] [INDEX PORT PROCESSES]

XLA_FLAGS (`--xla_force_host_platform_device_count`) gives each process its
CPU devices; with PROCESSES > 1, `jax.distributed.initialize` on 127.0.0.1:PORT.
MESH is "1x4", "2x2" (batch x model, over all processes' devices) or "none"
(no distribution: one device). A `LayoutMap` splits every Dense kernel over
the "model" axis. Modes:

- `fit`: `model.fit` with `BestCheckpoint(RUN_DIR/best-{epoch:03d}, keep_top_k=2)`;
  each epoch's weights (gathered, for the test only) go to OUT_DIR/epochs.npz;
- `loop`: a custom loop with `BestWeightsTracker` whose "training" assigns
  new values to the sharded variables (scores are set so epochs 2 and 4 improve);
- `load`: `load_best` onto MESH, then (under a distribution: without one they
  restore the saved shardings, which need the devices that saved) stock
  `model.load_weights` and `keras.models.load_model` of the best directory:
  OUT_DIR/load.npz;
- `kill`: `fit` with `resume=True`; at the end of epoch KILL_AT (env) the
  process kills itself with SIGKILL while the save is being written (with KILL_INDEX,
  only that process: the others must end with an error; HEARTBEAT_S sets
  `jax.distributed`'s heartbeat timeout);
- `resume`: `fit` for EPOCHS epochs with `resume=True, keep_last=2` in RUN_DIR/full;
  then in RUN_DIR/cut, `fit` for STOP_AT (env, default 2) epochs, and a new model
  resumed there for the rest: the final weights and losses of both go to OUT_DIR.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_best import BestCheckpoint, BestWeightsTracker, load_best  # noqa: E402
from keras_best.loading import read_best  # noqa: E402

EPOCHS = 4


def distribution(mesh: str):
    if mesh == "none":
        return None
    import jax

    shape = tuple(int(n) for n in mesh.split("x"))
    device_mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), devices=jax.devices())
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map[".*dense.*kernel"] = (None, "model")
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def build_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="dense_1")(hidden), name="net")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


def gathered(model: keras.Model) -> list[np.ndarray]:
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return [np.asarray(v.value) for v in model.weights]
    return [np.asarray(multihost_utils.process_allgather(v.value, tiled=True)) for v in model.weights]


class Record(keras.callbacks.Callback):
    """Keeps each epoch's weights (for the test's comparisons only)."""

    def __init__(self, kill_at: int | None = None, run_dir: str = "") -> None:
        super().__init__()
        self.epochs: dict[str, np.ndarray] = {}
        self.kill_at, self.run_dir = kill_at, run_dir

    def on_epoch_end(self, epoch, logs=None):
        for i, w in enumerate(gathered(self.model)):
            self.epochs[f"e{epoch}_{i}"] = w
        if epoch == self.kill_at:  # BestCheckpoint (before this callback) has started the save
            np.savez(os.path.join(os.environ["OUT_DIR"], "epochs.npz"), **self.epochs)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                    ".kb-tmp-" in n for n in os.listdir(self.run_dir)):
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    return x, (x @ rng.normal(size=(8, 4))).astype("float32")


def main(mode: str, run_dir: str, out_dir: str, mesh: str = "1x4", index: int = 0, port: str = "",
         processes: int = 1) -> None:
    os.environ["OUT_DIR"] = out_dir
    if processes > 1:
        import jax

        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=processes,
                                   process_id=index, initialization_timeout=60,
                                   heartbeat_timeout_seconds=int(os.environ.get("HEARTBEAT_S", "100")))
    dist = distribution(mesh)
    if dist is not None and processes > 1:
        dist.auto_shard_dataset = False  # every process feeds the whole batch (the "batch" axis has size 1)
    keras.distribution.set_distribution(dist)
    out: dict = {"index": index}
    model = build_model()
    x, y = data()
    if mode in ("fit", "kill"):
        kill_at = int(os.environ.get("KILL_AT", "-1")) if mode == "kill" else None
        if os.environ.get("KILL_INDEX", str(index)) != str(index):
            kill_at = None  # another process is killed: this one must end with an error, not hang
        record = Record(kill_at, run_dir)
        callback = BestCheckpoint(os.path.join(run_dir, "best-{epoch:03d}"), monitor="loss", keep_top_k=2,
                                  verbose=0, resume=mode == "kill")
        history = model.fit(x, y, epochs=EPOCHS, batch_size=16, verbose=0, callbacks=[callback, record])
        out["initial_epoch"] = callback.tracker._run.initial_epoch
        out["losses"] = history.history["loss"]
        np.savez(os.path.join(out_dir, f"epochs{index}.npz"), **record.epochs)
    elif mode == "resume":
        stop_at, runs = int(os.environ.get("STOP_AT", "2")), {}
        for name, stops in (("full", (EPOCHS,)), ("cut", (stop_at, EPOCHS))):
            losses, initial = [], []
            for epochs in stops:
                model = build_model()  # new weights and optimizer: only the run directory carries them on
                callback = BestCheckpoint(os.path.join(run_dir, name, "best-{epoch:03d}"), monitor="loss",
                                          keep_top_k=2, keep_last=2, verbose=0, resume=True)
                losses += model.fit(x, y, epochs=epochs, batch_size=16, verbose=0,
                                    callbacks=[callback]).history["loss"]
                initial.append(callback.tracker._run.initial_epoch)
            runs[name] = gathered(model)
            out[name] = {"losses": losses, "initial_epochs": initial}
        np.savez(os.path.join(out_dir, f"resume{index}.npz"),
                 **{f"{name}_{i}": w for name, ws in runs.items() for i, w in enumerate(ws)})
    elif mode == "loop":
        tracker = BestWeightsTracker(model, os.path.join(run_dir, "best-{epoch:03d}"), monitor="val_loss",
                                     keep_top_k=2, verbose=0, restore_best_weights=True)
        rng = np.random.default_rng(7)  # the same on every process: the same values everywhere
        epochs = {}
        for epoch, score in enumerate([3.0, 2.0, 2.5, 1.0, 1.5]):
            for v in model.weights:
                v.assign(rng.normal(size=v.shape).astype("float32"))
            for i, w in enumerate(gathered(model)):
                epochs[f"e{epoch}_{i}"] = w
            tracker.update(epoch, {"val_loss": score})
        tracker.finish()  # restore_best_weights: read back through Orbax on every process
        out["best_epoch"] = tracker.best_epoch
        out["sharding"] = str(model.weights[0].value.sharding)
        np.savez(os.path.join(out_dir, f"epochs{index}.npz"), **epochs)
        np.savez(os.path.join(out_dir, f"restored{index}.npz"), *gathered(model))
    elif mode == "load":
        best = load_best(model, run_dir)
        out["best_epoch"] = best.epoch
        out["sharding"] = str(model.weights[0].value.sharding)
        arrays = {f"best_{i}": w for i, w in enumerate(gathered(model))}
        path = read_best(run_dir).path
        if mesh == "none":  # Keras's loaders restore the saved shardings: they need the devices that saved
            np.savez(os.path.join(out_dir, f"load{index}.npz"), **arrays)
            return _write(out, out_dir, mode, index)
        stock = build_model()
        stock.load_weights(path)
        arrays.update({f"load_weights_{i}": w for i, w in enumerate(gathered(stock))})
        loaded = keras.models.load_model(path)
        arrays.update({f"load_model_{i}": w for i, w in enumerate(gathered(loaded))})
        np.savez(os.path.join(out_dir, f"load{index}.npz"), **arrays)
    _write(out, out_dir, mode, index)


def _write(out: dict, out_dir: str, mode: str, index: int) -> None:
    with open(os.path.join(out_dir, f"{mode}{index}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*args[:4], *(int(a) if i != 1 else a for i, a in enumerate(args[4:7])))
