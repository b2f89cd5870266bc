"""Extra host memory and blocked time of checkpointing a big model, by configuration.

Each configuration runs in its own process: `model.fit` on a stack of Dense
layers of `--size-gb` GB, `--epochs` epochs of one step each, every epoch a
new best (a callback sets `val_loss` to 1/(epoch + 1)), back to back so that
the disk falls behind. Extra memory is the process's peak RSS (VmHWM) minus
the peak of the same script saving nothing (with the same optimizer), in
units of the model's size; blocked time is the mean time the checkpoint
callbacks take at an epoch's end, and "end" the time of `on_train_end`
(keras-best waits for its writes there and restores the best).

    python benchmarks/memory.py                    # 0.5 GB, every configuration
    python benchmarks/memory.py --size-gb 2 --configs mc kb_weights

Configurations: `mc` ModelCheckpoint(.weights.h5, best only); `mc_bar` the
same plus BackupAndRestore; `mc_keras` ModelCheckpoint(.keras); `kb_weights`
BestCheckpoint(.weights.h5); `kb_keras` BestCheckpoint(.keras); `kb_resume`
BestCheckpoint(.weights.h5, resume=True, restore_best_weights=True) with SGD
momentum; `kb_stream` BestCheckpoint(.weights.h5, max_host_memory=0);
`kb_resume_stream` kb_resume with max_host_memory=0; `kb_resume_3x` kb_resume
with room for three saves (max_host_memory=3 * (weights + momentum)). JAX only (Orbax needs JAX):
`oc` Keras's OrbaxCheckpoint(save_best_only=True, save_weights_only=True), `oc_full` the same with the
optimizer (save_weights_only=False, SGD momentum: compare with kb_resume), `kb_orbax`
BestCheckpoint(save_format="orbax"), `kb_orbax_resume` the same with resume=True, restore_best_weights=True
(the training state through Orbax too; SGD momentum). The `mc_bar`, `kb_resume*`, `oc_full` configurations (and their
baseline) train with SGD momentum, the others with plain SGD.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CONFIGS = ["mc", "mc_bar", "mc_keras", "kb_weights", "kb_keras", "kb_resume", "kb_resume_3x", "kb_stream",
           "kb_resume_stream", "oc", "oc_full", "kb_orbax", "kb_orbax_resume"]
MOMENTUM = {"mc_bar", "kb_resume", "kb_resume_3x", "kb_resume_stream", "oc_full", "kb_orbax_resume", "base_momentum"}
ORBAX = {"oc", "oc_full", "kb_orbax", "kb_orbax_resume"}
WIDTH = 4096


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(config: str, size_gb: float, epochs: int, directory: str) -> dict:
    import keras
    import numpy as np

    layers = max(1, round(size_gb * 1e9 / (WIDTH * WIDTH * 4)))
    model = keras.Sequential([keras.Input((WIDTH,))] + [keras.layers.Dense(WIDTH, use_bias=False)
                                                         for _ in range(layers)])
    model.compile(keras.optimizers.SGD(1e-6, momentum=0.9 if config in MOMENTUM else 0.0), "mse")
    model_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    x = np.zeros((1, WIDTH), "float32")
    times: list[float] = []
    state = {}

    class Start(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = 1.0 / (epoch + 1)  # every epoch a new best
            state["t"] = time.perf_counter()

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - state["t"])

        def on_train_end(self, logs=None):
            state["end"] = time.perf_counter()

    class EndStart(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            state["end_start"] = time.perf_counter()

    path = os.path.join(directory, "run")
    callbacks: list = []
    if config in ("mc", "mc_bar"):
        callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join(directory, "best.weights.h5"),
                                                         save_best_only=True, save_weights_only=True))
    if config == "mc_bar":
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")))
    if config == "mc_keras":
        callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join(directory, "best.keras"), save_best_only=True))
    if config in ("oc", "oc_full"):
        callbacks.append(keras.callbacks.OrbaxCheckpoint(os.path.join(directory, "orbax"), save_best_only=True,
                                                         save_weights_only=config == "oc"))
    if config.startswith("kb_"):
        from keras_best import BestCheckpoint

        options = {"verbose": 0}
        if config in ("kb_resume", "kb_resume_3x", "kb_resume_stream", "kb_orbax_resume"):
            options.update(resume=True, restore_best_weights=True)
        if config == "kb_resume_3x":  # room for three saves (weights and momentum): runs ahead of the disk
            options["max_host_memory"] = 3 * 2 * model_bytes
        if config.endswith("stream"):
            options["max_host_memory"] = 0
        if config.startswith("kb_orbax"):
            callbacks.append(BestCheckpoint(path, save_format="orbax", **options))
        else:
            suffix = ".keras" if config == "kb_keras" else ".weights.h5"
            callbacks.append(BestCheckpoint(os.path.join(path, "best" + suffix), **options))
    model.fit(x, x, epochs=epochs, batch_size=1, verbose=0, callbacks=[EndStart(), Start(), *callbacks, Stop()])
    saves = times[1:] if len(times) > 1 else times  # the first epoch also builds what saving needs
    return {"config": config, "peak": _peak_rss(), "model_bytes": model_bytes,
            "blocked_s": sum(saves) / max(1, len(saves)), "end_s": state["end"] - state["end_start"]}


def _run(config: str, args: argparse.Namespace) -> dict:
    directory = tempfile.mkdtemp(prefix="kb-memory-", dir=args.dir)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", config, "--size-gb", str(args.size_gb),
                              "--epochs", str(args.epochs), "--dir", directory],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--dir", default=None, help="where the runs write (default: the temp directory)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.size_gb, args.epochs, args.dir)))
        return
    import keras

    base = {kind: _run(kind, args)["peak"] for kind in ("base_plain", "base_momentum")}
    print(f"backend {keras.backend.backend()}, {args.size_gb} GB model, {args.epochs} epochs, each a new best")
    print(f"{'configuration':<18} {'extra (model sizes)':>20} {'blocked per save':>17} {'end':>8}")
    for config in args.configs:
        if config in ORBAX and keras.backend.backend() != "jax":
            continue  # Orbax saves need the JAX backend
        r = _run(config, args)
        extra = (r["peak"] - base["base_momentum" if config in MOMENTUM else "base_plain"]) / r["model_bytes"]
        print(f"{config:<18} {extra:>19.2f}x {r['blocked_s']:>16.2f}s {r['end_s']:>7.2f}s", flush=True)


if __name__ == "__main__":
    main()
