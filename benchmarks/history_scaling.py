"""Per-update cost as a run grows: does update 20,000 cost what update 100 does?

Every update is recorded (keras_best.json and one history line), so a record
that carried the whole history made each write grow with the run (quadratic in
all). This drives one tracker through N updates (no improvement after the
first, so only the record and the history are written) and prints the median
cost of an update around each mark, in the training thread, for synchronous
and background saves, with the ratio last/first (goal: <= 1.3).

    python benchmarks/history_scaling.py                # 100, 1,000, 20,000
    python benchmarks/history_scaling.py --marks 100,1000,5000 --window 50
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def measure(marks: list[int], window: int, async_save: bool) -> dict[int, float]:
    import keras

    from keras_best import BestWeightsTracker

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    directory = tempfile.mkdtemp(prefix="kb-scaling-")
    try:
        tracker = BestWeightsTracker(model, os.path.join(directory, "best.weights.h5"), verbose=0,
                                     async_save=async_save)
        windows = {m: (m - window, m) for m in marks}
        spent: dict[int, list[float]] = {m: [] for m in marks}
        for i in range(max(marks)):
            metrics = {"val_loss": 0.1 if i == 0 else 1.0 + i, "val_acc": 0.5, "loss": 0.3}
            t0 = time.perf_counter()
            tracker.update(i, metrics)
            dt = time.perf_counter() - t0
            for m, (lo, hi) in windows.items():
                if lo <= i < hi:
                    spent[m].append(dt)
        tracker.finish()
        record_bytes = os.path.getsize(os.path.join(directory, "keras_best.json"))
        history = os.path.join(directory, "keras_best_history.jsonl")  # absent before schema 2
        history_bytes = os.path.getsize(history) if os.path.exists(history) else 0
        print(f"  ({'background' if async_save else 'synchronous'}: keras_best.json {record_bytes} bytes, "
              f"history {history_bytes / 1e6:.1f} MB after {max(marks)} updates)")
        return {m: statistics.median(spent[m]) for m in marks}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", default="100,1000,20000", help="update counts to measure at")
    parser.add_argument("--window", type=int, default=100, help="updates averaged before each mark")
    args = parser.parse_args()
    marks = sorted(int(m) for m in args.marks.split(","))
    if marks[0] < args.window:
        parser.error(f"the first mark ({marks[0]}) must be >= --window ({args.window})")
    print(f"median update() cost, in the training thread, over the {args.window} updates before each mark")
    rows = {}
    for async_save in (False, True):
        rows[async_save] = measure(marks, args.window, async_save)
    header = "saves        " + "".join(f"{m:>12,}" for m in marks) + "   last/first"
    print(header)
    for async_save, costs in rows.items():
        name = "background" if async_save else "synchronous"
        cells = "".join(f"{costs[m] * 1e3:>10.3f}ms" for m in marks)
        print(f"{name:<13}{cells}   {costs[marks[-1]] / costs[marks[0]]:>10.2f}")


if __name__ == "__main__":
    main()
