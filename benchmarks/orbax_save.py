"""Model-parallel saves through Orbax: keras-best's BestCheckpoint against keras.callbacks.OrbaxCheckpoint.

JAX only. Each configuration runs in its own process with 4 CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`): `model.fit` on a
stack of Dense layers of `--size-mb` MB whose kernels a `LayoutMap` splits
over the "model" axis of a 1x4 `DeviceMesh` (`ModelParallel`: no device holds
a whole kernel), `--epochs` epochs of one step each, every epoch a new best
(a callback sets `val_loss` to 1/(epoch + 1)), back to back, so that the disk
falls behind (or, with `--epoch-s`, that long apart: "training", a sleep, as
the CPU is idle while an accelerator trains). Plain SGD: no optimizer slots.

Configurations:
- `kb`           `BestCheckpoint("<dir>/best-{epoch:03d}")` (save_format "orbax"):
                 the weights and the model's config, top-1 kept, each save an
                 Orbax directory (the previous best removed once the new one is
                 committed);
- `ocp_weights`  `OrbaxCheckpoint(dir, save_weights_only=True)` (max_to_keep=1):
                 the same weights, saved at every epoch (the like for like);
- `ocp`          `OrbaxCheckpoint(dir)`: its default, the whole state (weights,
                 optimizer and metrics variables, config).

Measured per process, as benchmarks/memory.py does: blocked time per save,
the mean over the epochs after the first of the time from a callback placed
before the checkpoint callback to one placed after it, at each epoch end;
"end", the same around `on_train_end` (both wait there for their last save);
extra memory, the peak RSS (VmHWM) minus the peak of the same script saving
nothing, in units of the model's size. `--runs` rounds, the configurations
interleaved; the median over rounds is shown, then keras-best / OrbaxCheckpoint.

    nice python benchmarks/orbax_save.py [--size-mb 200] [--epochs 8] [--runs 3] [--epoch-s 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = ["kb", "ocp_weights", "ocp"]
WIDTH = 4096
DEVICES = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _child(config: str, size_mb: float, epochs: int, epoch_s: float, directory: str) -> dict:
    import jax
    import keras
    import numpy as np

    mesh = keras.distribution.DeviceMesh((1, DEVICES), ("batch", "model"), devices=jax.devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*dense.*kernel"] = (None, "model")
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout_map,
                                                                         batch_dim_name="batch"))
    layers = max(1, round(size_mb * 1e6 / (WIDTH * WIDTH * 4)))
    model = keras.Sequential([keras.Input((WIDTH,))] + [keras.layers.Dense(WIDTH, use_bias=False)
                                                         for _ in range(layers)])
    model.compile(keras.optimizers.SGD(1e-6), "mse")
    model_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    assert "model" in str(model.weights[0].value.sharding), model.weights[0].value.sharding
    x = np.random.default_rng(0).normal(size=(1, WIDTH)).astype("float32")
    times: list[float] = []
    state: dict = {}

    class Start(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            time.sleep(epoch_s)

        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = 1.0 / (epoch + 1)  # every epoch a new best
            state["t"] = time.perf_counter()

        def on_train_end(self, logs=None):
            state["end_start"] = time.perf_counter()

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - state["t"])

        def on_train_end(self, logs=None):
            state["end"] = time.perf_counter()

    callbacks: list = []
    if config == "kb":
        from keras_best import BestCheckpoint

        callbacks.append(BestCheckpoint(os.path.join(directory, "best-{epoch:03d}"), keep_top_k=1, verbose=0))
    elif config.startswith("ocp"):
        callbacks.append(keras.callbacks.OrbaxCheckpoint(os.path.join(directory, "ocp"), max_to_keep=1,
                                                         save_weights_only=config == "ocp_weights"))
    model.fit(x, x, epochs=epochs, batch_size=1, verbose=0, callbacks=[Start(), *callbacks, Stop()])
    saves = times[1:] if len(times) > 1 else times  # the first epoch also builds what saving needs
    kept = sorted(os.listdir(directory))
    return {"config": config, "peak": _peak_rss(), "model_bytes": model_bytes, "kept": kept,
            "blocked_s": sum(saves) / max(1, len(saves)), "end_s": state["end"] - state["end_start"]}


def _run(config: str, args: argparse.Namespace) -> dict:
    directory = tempfile.mkdtemp(prefix="kb-orbax-", dir=args.dir)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    try:
        os.sync()
        out = subprocess.run([sys.executable, __file__, "--child", config, "--size-mb", str(args.size_mb),
                              "--epochs", str(args.epochs), "--epoch-s", str(args.epoch_s), "--dir", directory],
                             env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{config} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epoch-s", type=float, default=0.0, help="seconds of 'training' per epoch (a sleep)")
    parser.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--dir", default=None, help="where the runs write (default: the temp directory)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.size_mb, args.epochs, args.epoch_s, args.dir)))
        return
    results: dict[str, list[dict]] = {c: [] for c in ["base", *args.configs]}
    for _ in range(args.runs):
        for config in results:
            results[config].append(_run(config, args))
    base = statistics.median(r["peak"] for r in results["base"])
    size = results["base"][0]["model_bytes"]
    print(f"JAX ModelParallel 1x{DEVICES} CPU devices | {platform.machine()} {os.cpu_count()} CPUs | "
          f"{size / 1e6:.0f} MB model | {args.epochs} epochs of one step {args.epoch_s} s apart, each a new best | "
          f"median of {args.runs} runs")
    print(f"{'configuration':<13} {'blocked per save':>17} {'end':>8} {'extra (model sizes)':>20}   kept")
    med = {}
    for config in args.configs:
        runs = results[config]
        med[config] = {k: statistics.median(r[k] for r in runs) for k in ("blocked_s", "end_s", "peak")}
        m = med[config]
        per_run = " ".join(f"{r['blocked_s'] * 1e3:.0f}" for r in runs)
        print(f"{config:<13} {m['blocked_s'] * 1e3:>14.0f} ms {m['end_s'] * 1e3:>5.0f} ms "
              f"{(m['peak'] - base) / size:>19.2f}x   {runs[0]['kept']} (blocked per run, ms: {per_run})")
    if "kb" in med:
        for other in (c for c in med if c != "kb"):
            a, b = med["kb"], med[other]
            extra = (a["peak"] - base) / max(1, b["peak"] - base)
            print(f"kb / {other}: blocked {a['blocked_s'] / b['blocked_s']:.2f}, end {a['end_s'] / b['end_s']:.2f}, "
                  f"extra memory {extra:.2f}")


if __name__ == "__main__":
    main()
