"""One PyTorch DDP rank for tests/test_distribute_backends.py.

    python tests/workers/torch_ddp_worker.py RANK PORT RUN_DIR OUT_DIR

Both ranks run this script (torch.distributed with gloo on localhost:PORT,
KERAS_BACKEND=torch) and write OUT_DIR/process{RANK}.json (+ .npz). Each rank
trains on its own shard of the data, so the values it reads differ. Phases:

1. custom loop: the Keras model wrapped in `DistributedDataParallel` (its
   gradients averaged over the ranks), a torch optimizer, the validation loss
   of the rank's own shard; early stopping, `restore_best_weights`;
2. `fit()` run by each rank on its shard, `BestCheckpoint` with patience;
3. update() with a different epoch on each rank: a ValueError on both;
4. a callback built before `init_process_group()` (so both ranks took
   themselves for the chief): a ValueError on both.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import warnings

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from keras_best import BestCheckpoint, BestWeightsTracker  # noqa: E402
from tests.workers.shards import EPOCHS, build_model, shard  # noqa: E402


def main(rank: int, port: str, run_dir: str, out_dir: str) -> None:
    t0 = time.monotonic()
    out: dict = {"rank": rank, "pid": os.getpid()}
    caught: list[str] = []
    # Built before init_process_group: this rank cannot know it is not the chief.
    early = BestCheckpoint(os.path.join(run_dir, f"early{rank}", "e.weights.h5"), verbose=0)

    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    (x, y), (vx, vy) = shard(rank)

    # 1. Custom loop under DDP.
    print("phase 1", flush=True)  # where a hung run stopped
    model = build_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "loop", "best.weights.h5"), monitor="val_loss",
                                 patience=2, min_delta=0.05, restore_best_weights=True, verbose=1)
    out["chief"] = tracker._run.chief
    xt, yt, vxt, vyt = (torch.from_numpy(a) for a in (x, y, vx, vy))
    own: list[float] = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for epoch in range(EPOCHS):
            for i in range(0, len(xt), 32):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(ddp(xt[i:i + 32]), yt[i:i + 32])
                loss.backward()  # DDP averages the gradients over the ranks
                optimizer.step()
            with torch.no_grad():
                val_loss = torch.nn.functional.mse_loss(model(vxt), vyt)  # this rank's shard only
            own.append(float(keras.ops.convert_to_numpy(val_loss)))
            if tracker.update(epoch, {"val_loss": val_loss}).should_stop:
                break
        tracker.finish()
    caught += [str(m.message) for m in w if "differs by worker" in str(m.message)]
    out["loop"] = {"stop_epoch": epoch, "best_epoch": tracker.best_epoch, "best": tracker.best,
                   "history": [(h["epoch"], h["value"]) for h in tracker.history], "own": own}
    np.savez(os.path.join(out_dir, f"process{rank}.npz"), *model.get_weights())

    # 2. fit() on each rank's shard (no gradient sync: the ranks' models differ).
    print("phase 2", flush=True)  # where a hung run stopped
    model = build_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = BestCheckpoint(os.path.join(run_dir, "fit", "best.keras"), monitor="val_loss",
                              save_best_only=True, patience=2, min_delta=0.05, verbose=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        history = model.fit(x, y, validation_data=(vx, vy), epochs=EPOCHS, batch_size=32, verbose=0,
                            callbacks=[callback])
    caught += [str(m.message) for m in w if "differs by worker" in str(m.message)]
    out["fit"] = {"epochs": len(history.history["val_loss"]), "own": history.history["val_loss"],
                  "best_epoch": callback.tracker.best_epoch, "best": callback.tracker.best,
                  "decided": [h["value"] for h in callback.tracker.history]}

    # 3. The ranks disagree on the epoch: every rank raises, none hangs.
    print("phase 3", flush=True)  # where a hung run stopped
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "bad", "b.weights.h5"), verbose=0)
    try:
        tracker.update(rank, {"val_loss": 1.0})
        out["mismatch"] = None
    except ValueError as e:
        out["mismatch"] = str(e)
    tracker.finish()

    # 4. Both ranks built a callback before init_process_group: both raise.
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
    with open(os.path.join(out_dir, f"process{rank}.json"), "w") as f:
        json.dump(out, f)
    print("done", flush=True)
    # Both ranks reach the teardown together (a rank that destroys its process group while the
    # other still uses the store can hang it: pytorch/pytorch#75097).
    dist.barrier()
    dist.destroy_process_group()
    print("destroyed", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
