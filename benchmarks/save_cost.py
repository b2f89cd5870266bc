"""What a save costs the training loop, side by side in one run.

For Dense models of about 1, 34, 134 and 537 MB of float32 weights (and a
MobileNetV2, many small variables), each measured REPEATS times, interleaved,
median reported:

- snapshot      `[v.numpy() for v in model.weights]`: the host copy, the floor
                for a consistent snapshot.
- h5py          the same arrays written with plain h5py (`f[name] = array`)
                over the previous file (as a checkpoint overwrites the last
                best), and `h5py+fsync` with the file made durable: the floor
                for the file.
- kb file       keras-best's own file writer (`engines.weights_h5`, Keras's layout with
                plain h5py) on a snapshot, over the previous file, no fsync:
                compare with `h5py`.
- MC blocked    `keras.callbacks.ModelCheckpoint(save_best_only=True,
                save_weights_only=True).on_epoch_end` on an improvement: the
                training loop waits this long (it writes in place, no fsync).
- kb blocked    `BestWeightsTracker.update()` on an improvement (background
                writes): the training loop waits this long.
- kb write      the background write: from `update()`'s return until the
                file, renamed and recorded in keras_best.json, is fsynced
                (what `finish()` waits for). Compare with `h5py+fsync`.
- kb sync       `update()` with `async_save=False` (writes, fsyncs, records).

A second table, the same rounds, for whole-model files and Orbax:

- MC .keras     `ModelCheckpoint(save_best_only=True)` to a `.keras` file: the
                training loop waits this long (`model.save`, in place, no fsync).
- kb .keras     `BestWeightsTracker.update()` to a `.keras` file: blocked (config
                JSON and host copies) and the background write (the zip file,
                fsynced, renamed, recorded), as for kb blocked / kb write.
- orbax         `keras.callbacks.OrbaxCheckpoint(save_on_background=True,
                save_best_only=True)`, when `orbax-checkpoint` is installed and
                works on this backend (else the reason is printed): blocked in
                `on_epoch_end`, and the write until `wait_until_finished()`.

On the TensorFlow backend, a third table, SavedModel exports:

- kb export     `BestWeightsTracker(save_format="savedmodel").update()` on an
                improvement: `model.export` runs in the training thread
                (tracing needs the live model), plus the Keras weights beside it.
- kb at finish  `export_at_finish=True`: each update writes a `.weights.h5`
                in the background (blocked, as kb blocked), and `finish()`
                exports the best once (timed once, at the end).

Ratios: kb .keras blocked / snapshot, MC .keras / kb .keras blocked, h5py+fsync
/ kb .keras write, orbax blocked / snapshot, orbax blocked / kb blocked (the
`.weights.h5` row above), MC blocked (`.weights.h5`) / orbax blocked.

The models are compiled with plain SGD (no slot variables; OrbaxCheckpoint
needs an optimizer), so every file also holds the optimizer's two scalars.

Ratios: blocked/snapshot (target <= 1.5); h5py / kb file (the file writer
relative to raw h5py on a flat file: Keras's layout has a group per layer);
h5py+fsync / kb write (the durable write relative to raw h5py, target >= 0.8;
kb write also makes the record durable: two atomic writes of
keras_best.json and a rename, a few ms); and MC blocked / kb blocked.

A last table times a non-improving `update()` against reading the metric
alone (target: <= 1 ms more).

Usage: python benchmarks/save_cost.py [--sizes 1,34,134,537] [--repeats 7] [--no-mobilenet]
                                      [--drop-caches]
The disk and the CPU are shared: run it twice and compare before trusting a
single figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_best import BestWeightsTracker  # noqa: E402
from keras_best.engines.weights_h5 import WeightsWriter  # noqa: E402

SIZES = {1: (512, 1), 34: (2048, 2), 134: (4096, 2), 537: (4096, 8)}  # MB -> (width, layers)


def compiled(model: keras.Model) -> keras.Model:
    model.compile(keras.optimizers.SGD(), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def dense_model(mb: int) -> keras.Model:
    width, layers = SIZES[mb]
    return compiled(keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width, use_bias=False) for _ in range(layers)]
    ))


def mobilenet() -> keras.Model:
    return compiled(keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)))


def orbax_callback(directory: str) -> tuple[keras.callbacks.Callback | None, str]:
    """Keras's OrbaxCheckpoint saving in the background, or `None` and why not."""
    try:
        import orbax.checkpoint  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any reason: say it
        return None, f"orbax-checkpoint is not importable here ({e!r}); pip install orbax-checkpoint"
    try:
        return keras.callbacks.OrbaxCheckpoint(
            directory, monitor="val_loss", mode="min", save_best_only=True, save_on_background=True,
            max_to_keep=1), ""
    except Exception as e:  # noqa: BLE001
        return None, f"OrbaxCheckpoint does not work on the {keras.backend.backend()} backend: {e!r}"


DROP_CACHES = False


def settle() -> None:
    """Between two measurements: write dirty pages back; with --drop-caches
    also drop the page cache (root only), so each one starts from the same state."""
    os.sync()
    if DROP_CACHES:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")


def ms(seconds: float) -> float:
    return seconds * 1e3


def fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Case:
    """One model, every method, measured in interleaved rounds."""

    def __init__(self, name: str, model: keras.Model, root: str) -> None:
        self.name, self.model = name, model
        self.dir = tempfile.mkdtemp(dir=root)
        self.times: dict[str, list[float]] = {}
        self.epoch = 0
        self.mc = keras.callbacks.ModelCheckpoint(
            os.path.join(self.dir, "mc", "best.weights.h5"), monitor="val_loss", mode="min",
            save_best_only=True, save_weights_only=True, verbose=0,
        )
        os.makedirs(os.path.join(self.dir, "mc"))
        self.mc.set_model(model)
        self.kb = BestWeightsTracker(model, os.path.join(self.dir, "kb", "best.weights.h5"), verbose=0)
        self.kb_sync = BestWeightsTracker(model, os.path.join(self.dir, "sync", "best.weights.h5"), verbose=0,
                                          async_save=False)
        self.mc_keras = keras.callbacks.ModelCheckpoint(
            os.path.join(self.dir, "mc-keras", "best.keras"), monitor="val_loss", mode="min",
            save_best_only=True, verbose=0,
        )
        os.makedirs(os.path.join(self.dir, "mc-keras"))
        self.mc_keras.set_model(model)
        self.kb_keras = BestWeightsTracker(model, os.path.join(self.dir, "kb-keras", "best.keras"), verbose=0)
        self.exports = keras.backend.backend() == "tensorflow"
        if self.exports:
            self.kb_export = BestWeightsTracker(model, os.path.join(self.dir, "kb-export", "best"),
                                                save_format="savedmodel", verbose=0)
            self.kb_at_finish = BestWeightsTracker(model, os.path.join(self.dir, "kb-at-finish", "best"),
                                                   save_format="savedmodel", export_at_finish=True, verbose=0)
        self.orbax, self.orbax_missing = orbax_callback(os.path.join(self.dir, "orbax"))
        if self.orbax is not None:
            self.orbax.set_model(model)
        self.writer = WeightsWriter()
        self.nbytes = sum(v.numpy().nbytes for v in model.weights)
        for method in self.methods():  # warm-up: tracing, layout capture, first allocations
            try:
                method()
            except Exception as e:  # noqa: BLE001 - only Orbax is optional
                if method != self.orbax_save:
                    raise
                self.orbax, self.orbax_missing = None, f"OrbaxCheckpoint failed on the " \
                    f"{keras.backend.backend()} backend: {e!r}"
        self.times.clear()

    def value(self) -> float:
        self.epoch += 1
        return 1.0 / self.epoch  # every call improves

    def record(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)

    def methods(self):
        methods = [self.snapshot, self.raw, self.file, self.model_checkpoint, self.keras_best, self.keras_best_sync,
                   self.model_checkpoint_keras, self.keras_best_keras]
        methods += [self.keras_best_export, self.keras_best_at_finish] if self.exports else []
        return methods + ([self.orbax_save] if self.orbax is not None else [])

    def snapshot(self) -> None:
        self.arrays = None  # as the tracker's previous snapshot is gone by now
        t = time.perf_counter()
        arrays = [v.numpy() for v in self.model.weights]
        self.record("snapshot", time.perf_counter() - t)
        self.arrays = arrays
        settle()

    def raw(self) -> None:
        path = os.path.join(self.dir, "raw.h5")  # the previous round's file is overwritten
        t = time.perf_counter()
        with h5py.File(path, "w") as f:
            for i, a in enumerate(self.arrays):
                f[str(i)] = a
        t1 = time.perf_counter()
        fsync(path)
        t2 = time.perf_counter()
        self.record("h5py", t1 - t)
        self.record("h5py+fsync", t2 - t)
        settle()

    def file(self) -> None:
        path = os.path.join(self.dir, "kb-file.weights.h5")
        if os.path.exists(path):
            os.remove(path)  # new files only, as the tracker's fresh temp names are
        snapshot = self.writer.snapshot(self.model)
        t = time.perf_counter()
        snapshot.write(path)
        self.record("kb file", time.perf_counter() - t)
        del snapshot
        settle()

    def model_checkpoint(self) -> None:
        t = time.perf_counter()
        self.mc.on_epoch_end(self.epoch, {"val_loss": self.value()})
        self.record("MC blocked", time.perf_counter() - t)
        settle()

    def keras_best(self) -> None:
        t = time.perf_counter()
        decision = self.kb.update(self.epoch, {"val_loss": self.value()})
        t1 = time.perf_counter()
        # What finish() waits for (the write fsynced, renamed and recorded), without
        # releasing the run directory's lock: a training loop keeps it between epochs.
        self.kb.flush()
        t2 = time.perf_counter()
        assert decision.saved_path, decision
        self.record("kb blocked", t1 - t)
        self.record("kb write", t2 - t1)
        settle()

    def keras_best_sync(self) -> None:
        t = time.perf_counter()
        self.kb_sync.update(self.epoch, {"val_loss": self.value()})
        self.record("kb sync", time.perf_counter() - t)
        settle()

    def model_checkpoint_keras(self) -> None:
        t = time.perf_counter()
        self.mc_keras.on_epoch_end(self.epoch, {"val_loss": self.value()})
        self.record("MC .keras", time.perf_counter() - t)
        settle()

    def keras_best_keras(self) -> None:
        t = time.perf_counter()
        decision = self.kb_keras.update(self.epoch, {"val_loss": self.value()})
        t1 = time.perf_counter()
        self.kb_keras.flush()
        t2 = time.perf_counter()
        assert decision.saved_path, decision
        self.record("kb .keras blocked", t1 - t)
        self.record("kb .keras write", t2 - t1)
        settle()

    def keras_best_export(self) -> None:
        t = time.perf_counter()
        self.kb_export.update(self.epoch, {"val_loss": self.value()})
        t1 = time.perf_counter()
        self.kb_export.flush()
        self.record("kb export blocked", t1 - t)
        settle()

    def keras_best_at_finish(self) -> None:
        t = time.perf_counter()
        self.kb_at_finish.update(self.epoch, {"val_loss": self.value()})
        t1 = time.perf_counter()
        self.kb_at_finish.flush()
        self.record("kb at-finish blocked", t1 - t)
        settle()

    def finish_export(self) -> float:
        """The one export `finish()` makes with `export_at_finish=True`, in seconds."""
        t = time.perf_counter()
        self.kb_at_finish.finish()
        return time.perf_counter() - t

    def orbax_save(self) -> None:
        t = time.perf_counter()
        self.orbax.on_epoch_end(self.epoch, {"val_loss": self.value()})  # the epoch is its step
        t1 = time.perf_counter()
        self.orbax.wait_until_finished()
        t2 = time.perf_counter()
        self.record("orbax blocked", t1 - t)
        self.record("orbax write", t2 - t1)
        settle()

    def median(self, key: str) -> float:
        return statistics.median(self.times[key])

    def close(self) -> None:
        self.kb.finish()
        self.kb_sync.finish()
        self.kb_keras.finish()
        if self.exports:
            self.kb_export.finish()
        if self.orbax is not None:
            self.orbax.on_train_end()
        shutil.rmtree(self.dir, ignore_errors=True)


def non_improving_cost(root: str, repeats: int) -> tuple[float, float]:
    """Median time of a non-improving update() and of reading its metric alone (ms)."""
    model = dense_model(34)
    metric = keras.metrics.Mean(name="val_loss")
    metric.update_state(1.0)
    tracker = BestWeightsTracker(model, os.path.join(root, "nonimp", "best.weights.h5"), verbose=0)
    tracker.update(0, {"val_loss": 0.1})  # the best, saved once
    tracker.finish()
    read, update = [], []
    for epoch in range(1, 1 + 20 * repeats):
        t = time.perf_counter()
        float(metric.result())
        t1 = time.perf_counter()
        tracker.update(epoch, {"val_loss": metric})  # 1.0: worse than 0.1
        t2 = time.perf_counter()
        read.append(t1 - t)
        update.append(t2 - t1)
    tracker.finish()
    return ms(statistics.median(update)), ms(statistics.median(read))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,34,134,537", help="comma-separated model sizes in MB (1,34,134,537)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-mobilenet", action="store_true")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the page cache between measurements (root; affects the whole machine)")
    args = parser.parse_args()
    global DROP_CACHES
    DROP_CACHES = args.drop_caches
    sizes = [int(s) for s in args.sizes.split(",") if s]
    root = tempfile.mkdtemp(prefix="kb-bench-", dir=args.dir)
    print(f"keras-best save cost | {platform.machine()} {os.cpu_count()} CPUs | Keras {keras.__version__} "
          f"| backend {keras.backend.backend()} | h5py {h5py.__version__} | {args.repeats} rounds, medians"
          f"{' | page cache dropped between measurements' if DROP_CACHES else ''}")
    print(f"writing into {root}")
    builders = [(f"dense {mb} MB", lambda mb=mb: dense_model(mb)) for mb in sizes]
    if not args.no_mobilenet:
        builders.append(("MobileNetV2", mobilenet))
    header = (f"{'model':<14}{'MB':>7}{'vars':>6}{'snapshot':>10}{'h5py':>8}{'kb file':>8}{'h5py+fs':>9}"
              f"{'MC blk':>8}{'kb blk':>8}{'kb write':>9}{'kb sync':>9} |{'blk/snap':>9}{'h5py/file':>10}"
              f"{'raw/write':>10}{'MC/kb':>7}")
    header2 = (f"{'model':<14}{'MB':>7}{'snapshot':>10}{'MC .keras':>10}{'kb .keras':>10}{'kb write':>9}"
               f"{'orbax blk':>10}{'orbax wr':>9} |{'blk/snap':>9}{'MC/kb':>7}{'raw/write':>10}"
               f"{'orbax/snap':>11}{'orbax/kb':>9}{'MC/orbax':>9}")
    header3 = (f"{'model':<14}{'MB':>7}{'snapshot':>10}{'kb export':>10}{'at-finish':>10}"
               f"{'finish export':>14} |{'export/snap':>12}{'at-finish/snap':>15}")
    rows, rows2, rows3, notes = [], [], [], []
    try:
        for name, build in builders:
            model = build()
            case = Case(name, model, root)
            rounds = args.repeats * (4 if case.nbytes < 10e6 else 1)  # small: noisy, cheap
            for r in range(rounds):
                # Rotate the order every round: a method measured right after a
                # big save (its freed memory, its page cache) runs slower here.
                methods = case.methods()
                for method in methods[r % len(methods):] + methods[:r % len(methods)]:
                    method()
            m = case.median
            rows.append(
                f"{name:<14}{case.nbytes / 1e6:>7.1f}{len(model.weights):>6}{ms(m('snapshot')):>10.1f}"
                f"{ms(m('h5py')):>8.1f}{ms(m('kb file')):>8.1f}{ms(m('h5py+fsync')):>9.1f}"
                f"{ms(m('MC blocked')):>8.1f}{ms(m('kb blocked')):>8.1f}{ms(m('kb write')):>9.1f}"
                f"{ms(m('kb sync')):>9.1f} |{m('kb blocked') / m('snapshot'):>9.2f}"
                f"{m('h5py') / m('kb file'):>10.2f}{m('h5py+fsync') / m('kb write'):>10.2f}"
                f"{m('MC blocked') / m('kb blocked'):>7.1f}"
            )
            print("\n".join(["", "times in ms", header] + rows) if len(rows) == 1 else rows[-1], flush=True)
            orbax = case.orbax is not None
            o = m if orbax else (lambda key: float("nan"))
            rows2.append(
                f"{name:<14}{case.nbytes / 1e6:>7.1f}{ms(m('snapshot')):>10.1f}{ms(m('MC .keras')):>10.1f}"
                f"{ms(m('kb .keras blocked')):>10.1f}{ms(m('kb .keras write')):>9.1f}"
                f"{ms(o('orbax blocked')):>10.1f}{ms(o('orbax write')):>9.1f} |"
                f"{m('kb .keras blocked') / m('snapshot'):>9.2f}{m('MC .keras') / m('kb .keras blocked'):>7.1f}"
                f"{m('h5py+fsync') / m('kb .keras write'):>10.2f}{o('orbax blocked') / m('snapshot'):>11.2f}"
                f"{o('orbax blocked') / m('kb blocked'):>9.2f}{m('MC blocked') / o('orbax blocked'):>9.1f}"
            )
            if case.exports:
                rows3.append(
                    f"{name:<14}{case.nbytes / 1e6:>7.1f}{ms(m('snapshot')):>10.1f}{ms(m('kb export blocked')):>10.1f}"
                    f"{ms(m('kb at-finish blocked')):>10.1f}{ms(case.finish_export()):>14.1f} |"
                    f"{m('kb export blocked') / m('snapshot'):>12.1f}{m('kb at-finish blocked') / m('snapshot'):>15.2f}"
                )
            if not orbax and case.orbax_missing not in notes:
                notes.append(case.orbax_missing)
            case.close()
            del model, case
            keras.backend.clear_session()
        print("\n".join(["", ".keras files and Orbax, same rounds, times in ms", header2] + rows2), flush=True)
        for note in notes:
            print(f"orbax: {note}")
        if rows3:
            print("\n".join(["", "SavedModel exports (TensorFlow), same rounds, times in ms", header3] + rows3),
                  flush=True)
        update_ms, read_ms = non_improving_cost(root, args.repeats)
        print(f"\nnon-improving update(): {update_ms:.3f} ms median, of which reading the metric "
              f"{read_ms:.3f} ms: {update_ms - read_ms:.3f} ms beyond it (target <= 1 ms)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
