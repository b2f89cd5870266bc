"""One JAX process of a two-process job for tests/test_distribute_backends.py.

    python tests/workers/jax_multiprocess_worker.py INDEX PORT RUN_DIR OUT_DIR

Both processes run this script (`jax.distributed.initialize` with the
coordinator on localhost:PORT, CPU, KERAS_BACKEND=jax) and write
OUT_DIR/process{INDEX}.json (+ .npz). Phases:

1. custom loop, JAX's way (`stateless_call` + `jax.value_and_grad`), each
   process training its own model on its own shard, so the values differ;
   early stopping, `restore_best_weights`;
2. `fit()` under `keras.distribution.DataParallel` over both processes'
   devices (one model, gradients and metrics reduced by JAX), `BestCheckpoint`;
3. update() with a different epoch on each process: a ValueError on both;
4. a callback built before `jax.distributed.initialize()` (so both processes
   took themselves for the chief): a ValueError on both.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_best import BestCheckpoint, BestWeightsTracker  # noqa: E402
from tests.workers.shards import EPOCHS, build_model, shard  # noqa: E402


def main(index: int, port: str, run_dir: str, out_dir: str) -> None:
    t0 = time.monotonic()
    out: dict = {"index": index, "pid": os.getpid()}
    caught: list[str] = []
    # Built before jax.distributed.initialize(): this process cannot know it is not the chief.
    early = BestCheckpoint(os.path.join(run_dir, f"early{index}", "e.weights.h5"), verbose=0)

    import jax

    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=index,
                               initialization_timeout=60)
    (x, y), (vx, vy) = shard(index)

    # 1. Custom loop: stateless_call + jax.value_and_grad, on this process's shard.
    print("phase 1", flush=True)  # where a hung run stopped
    model = build_model()
    optimizer = keras.optimizers.SGD(0.05)
    optimizer.build(model.trainable_variables)
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "loop", "best.weights.h5"), monitor="val_loss",
                                 patience=2, min_delta=0.05, restore_best_weights=True, verbose=1)
    out["chief"] = tracker._run.chief

    def loss_of(trainable, non_trainable, bx, by):
        pred, _ = model.stateless_call(trainable, non_trainable, bx)
        return keras.ops.mean((pred - by) ** 2)

    grad_fn = jax.jit(jax.value_and_grad(loss_of))
    own: list[float] = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for epoch in range(EPOCHS):
            for i in range(0, len(x), 32):
                trainable = [v.value for v in model.trainable_variables]
                non_trainable = [v.value for v in model.non_trainable_variables]
                _, grads = grad_fn(trainable, non_trainable, x[i:i + 32], y[i:i + 32])
                optimizer.apply(grads, model.trainable_variables)
            val_loss = keras.ops.mean((model(vx) - vy) ** 2)  # this process's shard only
            own.append(float(keras.ops.convert_to_numpy(val_loss)))
            if tracker.update(epoch, {"val_loss": val_loss}).should_stop:
                break
        tracker.finish()
    caught += [str(m.message) for m in w if "differs by worker" in str(m.message)]
    out["loop"] = {"stop_epoch": epoch, "best_epoch": tracker.best_epoch, "best": tracker.best,
                   "history": [(h["epoch"], h["value"]) for h in tracker.history], "own": own}
    np.savez(os.path.join(out_dir, f"process{index}.npz"), *model.get_weights())

    # 2. fit() with one model over both processes: Keras's DataParallel, each
    #    process feeding its own shard (hence auto_shard_dataset=False).
    print("phase 2", flush=True)  # where a hung run stopped
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    distribution.auto_shard_dataset = False
    keras.distribution.set_distribution(distribution)
    model = build_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = BestCheckpoint(os.path.join(run_dir, "fit", "best.keras"), monitor="val_loss",
                              save_best_only=True, patience=2, min_delta=0.05, restore_best_weights=True,
                              verbose=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        history = model.fit(x, y, validation_data=(vx, vy), epochs=EPOCHS, batch_size=32, verbose=0,
                            callbacks=[callback])
    caught += [str(m.message) for m in w if "differs by worker" in str(m.message)]
    out["fit"] = {"epochs": len(history.history["val_loss"]), "own": history.history["val_loss"],
                  "best_epoch": callback.tracker.best_epoch, "best": callback.tracker.best}
    np.savez(os.path.join(out_dir, f"fit{index}.npz"), *model.get_weights())
    keras.distribution.set_distribution(None)

    # 3. The processes disagree on the epoch: every process raises, none hangs.
    print("phase 3", flush=True)  # where a hung run stopped
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "bad", "b.weights.h5"), verbose=0)
    try:
        tracker.update(index, {"val_loss": 1.0})
        out["mismatch"] = None
    except ValueError as e:
        out["mismatch"] = str(e)
    tracker.finish()

    # 4. Both processes built a callback before jax.distributed.initialize(): both raise.
    print("phase 4", flush=True)  # where a hung run stopped
    early.tracker.bind(model)
    try:
        early.tracker.update(0, {"val_loss": 1.0})
        out["two_chiefs"] = None
    except ValueError as e:
        out["two_chiefs"] = str(e)
    early.tracker.finish()

    out["warnings"] = caught
    out["imported"] = sorted(m for m in ("tensorflow", "torch", "jax") if m in sys.modules)
    out["seconds"] = time.monotonic() - t0
    with open(os.path.join(out_dir, f"process{index}.json"), "w") as f:
        json.dump(out, f)
    print("done", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
