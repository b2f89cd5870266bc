"""fit() resumed in the middle of an epoch continues at the next batch, bit-identical
to an uninterrupted run (weights, optimizer, the last epoch's logs: the metrics'
states), for each data source of the backend; a source that cannot be positioned
warns once and trains the epoch again from its start."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_best import BestCheckpoint, Preempted
from keras_best.keras_adapter import fit as fit_internals
from tests.conftest import run_json
from tests.workers import fit_resume_worker as worker
from tests.workers.fit_resume_worker import EPOCHS, SOURCES, STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "fit_resume_worker.py")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Each source's uninterrupted run."""
    return {s: worker.results(*worker.train(str(tmp_path_factory.mktemp(s)), s, signals=None)) for s in SOURCES}


def assert_identical(got, want, where):
    assert sorted(got) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key]), f"{key} differs after {where}"


@pytest.mark.parametrize("source", SOURCES)
def test_a_preempted_fit_continues_at_the_next_batch_bit_identically(tmp_path, references, source):
    at = (1, 2)  # the middle of epoch 2
    with pytest.raises(Preempted):
        worker.train(str(tmp_path), source, at=at, signals=["SIGUSR1"])
    assert (run_json(tmp_path)["last"]["epoch"], run_json(tmp_path)["last"]["step"]) == at
    got = worker.results(*worker.train(str(tmp_path), source, signals=["SIGUSR1"]))
    assert_identical(got, references[source], f"a preemption at {at} ({source})")
    assert [h["epoch"] for h in run_json(tmp_path)["history"] if h.get("validated", True)] == list(range(EPOCHS))


def test_a_state_at_an_epochs_last_batch_trains_none_of_it_again(tmp_path, references):
    with pytest.raises(Preempted):
        worker.train(str(tmp_path), "shuffled", at=(0, STEPS - 1), signals=["SIGUSR1"])
    assert_identical(worker.results(*worker.train(str(tmp_path), "shuffled", signals=["SIGUSR1"])),
                     references["shuffled"], "a preemption at the last batch")


def test_the_message_says_the_batch_and_the_train_function_comes_back(tmp_path, capsys):
    with pytest.raises(Preempted):
        worker.train(str(tmp_path), "arrays", at=(1, 3), signals=["SIGUSR1"])
    model = worker.build()
    x, y = worker.arrays()
    cb = BestCheckpoint(str(tmp_path / "best.weights.h5"), save_best_only=True, resume=True, verbose=1)
    model.fit(x, y, validation_data=(x, y), batch_size=worker.BATCH, epochs=EPOCHS, verbose=0, callbacks=[cb])
    assert f"Resuming {tmp_path} at epoch 2, batch 5 (" in capsys.readouterr().out
    assert getattr(model.train_function, "__name__", "") != "skip"  # fit()'s own train function is back
    before = model.optimizer.iterations.numpy() if hasattr(model.optimizer.iterations, "numpy") else None
    model.fit(x, y, batch_size=worker.BATCH, epochs=1, verbose=0)  # a later fit() trains every batch
    if before is not None:
        assert model.optimizer.iterations.numpy() == before + STEPS


def test_a_generator_cannot_be_positioned_warns_once_and_trains_the_epoch_again(tmp_path):
    with pytest.raises(Preempted):
        worker.train(str(tmp_path), "arrays", at=(1, 2), signals=["SIGUSR1"])
    x, y = worker.arrays()

    def batches():
        while True:
            for i in range(STEPS):
                yield x[i * worker.BATCH:(i + 1) * worker.BATCH], y[i * worker.BATCH:(i + 1) * worker.BATCH]

    model = worker.build()
    cb = BestCheckpoint(str(tmp_path / "best.weights.h5"), save_best_only=True, resume=True)
    seen = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    with pytest.warns(UserWarning, match=r"cannot continue at batch 4 of epoch 2: .*generator.* Epoch 2 is "
                                         r"trained again from its start") as caught:
        model.fit(batches(), steps_per_epoch=STEPS, validation_data=(x, y), epochs=EPOCHS, verbose=0,
                  callbacks=[counter, cb])
    assert sum("cannot continue" in str(w.message) for w in caught) == 1
    assert seen[:STEPS] == list(range(STEPS))  # epoch 2 trained from its first batch


def test_a_state_without_the_fit_part_resumes_at_the_epoch_start(tmp_path):
    """A training state of an older keras-best (no "fit" group) still resumes."""
    import h5py

    with pytest.raises(Preempted):
        worker.train(str(tmp_path), "arrays", at=(1, 2), signals=["SIGUSR1"])
    with h5py.File(tmp_path / run_json(tmp_path)["last"]["path"], "a") as f:
        del f["fit"]
    with pytest.warns(UserWarning, match="holds no batch position for fit"):
        model, history = worker.train(str(tmp_path), "arrays", signals=["SIGUSR1"])
    assert len(history.history["loss"]) == EPOCHS - 1


def test_the_keras_internals_are_where_the_adapter_expects_them():
    """Pins what keras_adapter/fit.py relies on: fit()'s local `epoch_iterator`
    (with `data_adapter`), `model.train_function` called once per batch, and
    `model.metrics_variables`."""
    x, y = worker.arrays()
    found, calls = [], []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            found.append(fit_internals.running_fit_data())
            self.raw = self.model  # no JAX state sync in the middle of a batch

        def on_train_batch_begin(self, batch, logs=None):
            model, train = self.raw, self.raw.train_function

            def counted(*args):
                calls.append(batch)
                model.train_function = train
                return train(*args)

            model.train_function = counted

    model = worker.build()
    model.fit(x, y, batch_size=worker.BATCH, epochs=1, verbose=0, callbacks=[Probe()])
    assert type(found[0].data_adapter).__name__ == "ArrayDataAdapter" and fit_internals.unpositionable(found[0]) is None
    assert calls == list(range(STEPS))
    assert len(fit_internals.metric_variables(model)) == 4  # loss and mae: total, count


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("source", ["shuffled"] + SOURCES[3:])  # the backend's own source too
def test_sigterm_at_a_random_batch_of_a_real_process_resumes_bit_identically(tmp_path, references, source):
    _stop_and_resume(tmp_path, references[source], source, signal.SIGTERM, every=None, seed=hash(source) % 1000)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_after_a_periodic_state_resumes_bit_identically(tmp_path, references):
    _stop_and_resume(tmp_path, references["shuffled"], "shuffled", signal.SIGKILL, every=2, seed=1)


def _stop_and_resume(tmp_path, want, source, signum, every, seed):
    rng = random.Random(seed)
    after = rng.randrange(STEPS + 1, EPOCHS * STEPS - 2)  # past epoch 1: a batch of a later epoch
    run, out = tmp_path / "run", tmp_path / "out.npz"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    args = [sys.executable, WORKER, str(run), str(out), source] + ([str(every)] if every else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = 0
    for line in proc.stdout:
        seen += line.startswith("BATCH")
        if seen > after:
            proc.send_signal(signum)
            break
    proc.stdout.read()
    rc = proc.wait(timeout=120)
    assert rc == (128 + signum if signum == signal.SIGTERM else -signum), proc.stderr.read()[-3000:]
    last = run_json(run)["last"]
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cannot continue" not in again.stderr
    with np.load(out) as f:
        assert_identical({k: f[k] for k in f.files}, want, f"{signal.Signals(signum).name} at {last}")
