"""Crash safety with real kills: SIGKILL (and Ctrl-C) at random instants of a real
training process, many of them during saves; the best on disk must always be
exactly the weights of the epoch the record names, and resume must work."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from keras_best import load_best
from keras_best.storage import files, manifest
from tests.conftest import run_json
from tests.workers.crash_worker import build, pattern

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "crash_worker.py")
KILLS = 20


class Worker:
    def __init__(self, run_dir: str, epochs: int, how: str) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, run_dir, str(epochs), how],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("READY"):
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 120) -> int:
        assert self._ready.wait(timeout), "worker did not start"
        ready = [x for x in self.lines if x.startswith("READY")]
        assert ready, f"worker failed: {self.proc.stderr.read()}"
        return int(ready[0].split()[1])

    def stop(self, sig: int) -> bool:
        """Send `sig`; return whether it landed inside update() (a save)."""
        during = bool(self.lines) and self.lines[-1].startswith("BEGIN")
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        return during


def check_run(run_dir: str) -> list[str]:
    """Every problem found in the run directory (empty list: all good)."""
    if not files.exists(manifest.manifest_path(run_dir)):
        return []
    problems = []
    data = run_json(run_dir)
    model = build()
    if data.get("best"):
        rec = load_best(model, run_dir)
        for got, want in zip(model.get_weights(), pattern(model, rec.epoch), strict=True):
            if not np.array_equal(got, want):
                problems.append(f"load_best says epoch {rec.epoch} but loaded other weights")
                break
    for kept in data["kept"]:
        path = manifest.read(run_dir).effective_path(run_dir, kept["path"])
        if not os.path.exists(path):
            problems.append(f"kept file {kept['path']} is missing")
            continue
        files.load_weights(model, path)  # a pending set: through its temp names
        if not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), pattern(model, kept["epoch"]))):
            problems.append(f"{kept['path']} does not hold epoch {kept['epoch']}")
    return problems


def _tmp_files(run_dir: str) -> list[str]:
    return [n for n in os.listdir(run_dir) if files.is_tmp_name(n)] if os.path.isdir(run_dir) else []


@pytest.mark.slow
# sync: the journaled file protocol alone, the same code on every backend (CI: TensorFlow);
# async: host copies into reused buffers while the writer thread writes, on every backend.
# sharded: `.weights.json` sets renamed as one unit (the same file protocol: CI's TensorFlow stage only).
@pytest.mark.parametrize("how", [pytest.param("sync", marks=pytest.mark.backend_neutral), "async",
                                 pytest.param("sharded", marks=pytest.mark.backend_neutral)])
def test_random_kills_never_break_the_best_and_resume_works(tmp_path, how):
    if how == "async":
        import inspect

        from keras_best import BestWeightsTracker

        if "async_save" not in inspect.signature(BestWeightsTracker).parameters:
            pytest.skip("async_save not available")
    run_dir = str(tmp_path / "run")
    rng = random.Random(20261122 + ["sync", "async", "sharded"].index(how))
    stats = {"kills": 0, "sigint": 0, "during_save": 0, "problems": 0, "tmp_left_by_crash": 0, "resumed_at": []}
    problems: list[str] = []
    for i in range({"sync": KILLS, "async": KILLS // 2, "sharded": KILLS // 3}[how]):
        worker = Worker(run_dir, epochs=1_000_000, how=how)
        stats["resumed_at"].append(worker.wait_ready())
        time.sleep(rng.uniform(0.05, 1.2))
        sig = signal.SIGINT if i % 4 == 3 else signal.SIGKILL
        stats["during_save"] += worker.stop(sig)
        stats["kills"] += 1
        stats["sigint"] += sig == signal.SIGINT
        stats["tmp_left_by_crash"] += bool(_tmp_files(run_dir))
        found = check_run(run_dir)
        problems += [f"kill {i}: {p}" for p in found]
    stats["problems"] = len(problems)
    last_epoch = run_json(run_dir)["last"]["epoch"]
    final = Worker(run_dir, epochs=last_epoch + 4, how=how)
    assert final.wait_ready() == last_epoch + 1, "resume must continue after the last saved epoch"
    assert final.proc.wait(timeout=120) == 0, final.proc.stderr.read()
    assert "DONE" in final.lines
    assert _tmp_files(run_dir) == [], "temp files left by crashes must be cleaned up"
    assert check_run(run_dir) == []
    print(f"\ncrash stats ({how}): {json.dumps(stats)}")
    assert problems == []
    assert stats["during_save"] >= 3, f"too few kills landed during a save: {stats}"
