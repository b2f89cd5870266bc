"""Host memory bounded by one save (`keras_best.runner.memory`): back-pressure
when the disk falls behind, `restore_best_weights` read back from the best's
file, and `max_host_memory=0`, which streams each variable and writes the
same files as the host-copy path."""

from __future__ import annotations

import os
import threading
import time

import h5py
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best import BestCheckpoint, BestWeightsTracker, SaveError
from keras_best.core.options import Options
from keras_best.runner.memory import one_save_bytes
from keras_best.storage import files
from tests.conftest import make_model, perturb
from tests.test_async_writer import WAIT, slow_disk


def _model_with_adam() -> keras.Model:
    model = make_model()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _mark_optimizer(model, epoch):
    for i, slot in enumerate(model.optimizer.variables):
        slot.assign(np.full(slot.shape, epoch * 10 + i, slot.dtype))


class Peak:
    """The most host memory the run's pool accounts for (held + free),
    sampled in a thread while the block runs, and after each update."""

    def __init__(self, buffers):
        self.buffers, self.peak = buffers, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def sample(self):
        self.peak = max(self.peak, self.buffers.held_bytes + self.buffers.free_bytes)

    def _sample(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.0005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture
def slow_writes(monkeypatch):
    """Every file takes a while to write: updates back to back find the disk behind."""
    real = files.write_h5

    def write(path, fill):
        time.sleep(0.02)
        real(path, fill)

    monkeypatch.setattr(files, "write_h5", write)


# ----------------------------------------------------------- the bound
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(keep_top_k=st.sampled_from([1, 3]), save_last=st.booleans(), suffix=st.sampled_from([".weights.h5", ".keras"]),
       values=st.lists(st.sampled_from([0.9, 0.5, 0.4, 0.3, 0.2, 0.6]), min_size=3, max_size=8))
def test_the_host_never_holds_more_than_one_save(tmp_path_factory, slow_writes, keep_top_k, save_last, suffix,
                                                  values):
    """Updates back to back with a slow disk: the pool (arrays held for the
    writer, plus free ones) never holds more than one save's copies."""
    directory = tmp_path_factory.mktemp("run")
    model = _model_with_adam()
    one = one_save_bytes(model, model.optimizer)
    tracker = BestWeightsTracker(model, str(directory / f"e{{epoch}}{suffix}"), keep_top_k=keep_top_k,
                                 save_last=save_last, save_best_only=False, patience=100, verbose=0)
    with Peak(tracker._run.buffers) as peak:
        for epoch, v in enumerate(values):
            perturb(model, epoch)
            tracker.update(epoch, {"val_loss": v})
            peak.sample()
        tracker.flush()
    assert 0 < peak.peak <= one
    tracker.finish()


def test_an_update_waits_for_the_disk_rather_than_take_a_second_set(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.h5"), verbose=0)
    done = threading.Event()

    def train():
        for epoch, value in enumerate([1.0, 0.9]):
            perturb(model, epoch)
            tracker.update(epoch, {"val_loss": value})
        done.set()

    with slow_disk(tracker):
        thread = threading.Thread(target=train)
        thread.start()
        # epoch 0's copies wait behind the slow disk: epoch 1 waits for them to be written
        assert not done.wait(0.3)
        assert tracker._run.buffers.held_bytes == one_save_bytes(model, None)
    thread.join(WAIT)
    assert done.is_set()
    tracker.finish()
    assert sorted(os.listdir(tmp_path)) == ["02.weights.h5", "keras_best.json", "keras_best_history.jsonl"]


def test_a_larger_budget_lets_updates_run_ahead_of_the_disk(tmp_path):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "{epoch:02d}.weights.h5"), verbose=0,
                                 max_host_memory=1 << 30)
    with slow_disk(tracker) as gate:
        for epoch, value in enumerate([1.0, 0.9, 0.8]):
            perturb(model, epoch)
            tracker.update(epoch, {"val_loss": value})
        assert not gate.is_set()
    tracker.finish()


def test_one_save_counts_every_optimizer_the_state_holds(tmp_path, slow_writes):
    """A second optimizer (a GAN's, here through `state=`) is part of one save:
    a budget between the save without it and with it streams (no copy over the
    budget), and the default budget fits the copies of both."""
    model = _model_with_adam()
    other = keras.optimizers.Adam(0.02)
    other.build(model.trainable_variables)
    alone = one_save_bytes(model, model.optimizer)
    parts = [type("Part", (), {"variables": other.variables})()]
    both = one_save_bytes(model, model.optimizer, parts)
    assert both - alone == sum(v.numpy().nbytes for v in other.variables)
    for budget, streams in ((None, False), ((alone + both) // 2, True)):
        tracker = BestWeightsTracker(model, str(tmp_path / f"{budget}" / "e{epoch}.weights.h5"), verbose=0,
                                     keep_top_k=1, save_last=True, save_random_state=False,
                                     state={"other": other}, max_host_memory=budget)
        with Peak(tracker._run.buffers) as peak:
            for epoch, value in enumerate([1.0, 0.5, 0.4]):
                perturb(model, epoch)
                tracker.update(epoch, {"val_loss": value})
                peak.sample()
            tracker.flush()
        tracker.finish()
        assert (peak.peak == 0) if streams else (alone < peak.peak <= both)


# ------------------------------------------------- restore_best_weights
def test_restore_best_weights_reads_the_best_file_and_leaves_the_optimizer(tmp_path):
    model = _model_with_adam()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), verbose=0, restore_best_weights=True)
    weights = {}
    for epoch, value in enumerate([1.0, 0.5, 0.7]):
        perturb(model, epoch)
        _mark_optimizer(model, epoch)
        weights[epoch] = model.get_weights()
        tracker.update(epoch, {"val_loss": value})
    assert tracker._run.best_weights is None  # no host copy of the best is kept
    optimizer = [v.numpy() for v in model.optimizer.variables]
    tracker.flush()
    keras_model = make_model()
    perturb(keras_model, 42)
    keras_model.save_weights(str(tmp_path / "other.weights.h5"))
    os.replace(tmp_path / "other.weights.h5", tmp_path / "best.weights.h5")  # it is read from the file
    tracker.finish()
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), keras_model.get_weights()))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(optimizer, model.optimizer.variables))


def test_restore_best_weights_after_a_failed_write_restores_the_previous_best(tmp_path, monkeypatch):
    model = make_model()
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), verbose=0,
                                 restore_best_weights=True)
    perturb(model, 0)
    best = model.get_weights()
    tracker.update(0, {"val_loss": 1.0})
    tracker.flush()
    real = files.write_h5

    def write(path, fill):
        if "e2.weights.h5" in path:  # epoch 1 (named as Keras does, from 1)
            raise OSError(28, "No space left on device")
        real(path, fill)

    monkeypatch.setattr(files, "write_h5", write)
    perturb(model, 1)
    tracker.update(1, {"val_loss": 0.5})
    perturb(model, 2)
    with pytest.raises(SaveError, match="previous best .*intact"):
        tracker.finish()
    assert tracker._run.best_weights is None and tracker.best_epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), best))


def test_restore_best_weights_after_resume_restores_the_recorded_best(tmp_path):
    model = _model_with_adam()
    options = dict(resume=True, restore_best_weights=True, verbose=0, optimizer=model.optimizer)
    tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), **options)
    weights = {}
    for epoch, value in enumerate([1.0, 0.5, 0.7]):
        perturb(model, epoch)
        weights[epoch] = model.get_weights()
        tracker.update(epoch, {"val_loss": value})
    tracker.close()  # as if the process ended
    resumed = _model_with_adam()
    tracker = BestWeightsTracker(resumed, str(tmp_path / "e{epoch}.weights.h5"),
                                 **dict(options, optimizer=resumed.optimizer))
    assert tracker.initial_epoch == 3 and tracker._run.best_weights is None
    for epoch in (3, 4):
        perturb(resumed, epoch)
        tracker.update(epoch, {"val_loss": 0.9})
    tracker.finish()
    assert all(np.array_equal(a, b) for a, b in zip(resumed.get_weights(), weights[1]))


# ---------------------------------------------------- max_host_memory=0
def _tree(path):
    """Every group's attributes and every dataset of an HDF5 file."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: str(v) for k, v in obj.attrs.items() if k != "name"}  # layers' own names differ
            out[name] = (attrs, obj[()].tobytes() if isinstance(obj, h5py.Dataset) else None)
        f.visititems(visit)
        out[""] = ({k: str(v) for k, v in f.attrs.items()}, None)
    return out


def _train(directory, suffix, **options):
    model = _model_with_adam()
    tracker = BestWeightsTracker(model, str(directory / f"e{{epoch}}{suffix}"), keep_top_k=2, save_last=True,
                                 save_random_state=False, verbose=0, **options)
    with Peak(tracker._run.buffers) as peak:
        for epoch, value in enumerate([1.0, 0.5, 0.7, 0.4]):
            perturb(model, epoch)
            _mark_optimizer(model, epoch)
            tracker.update(epoch, {"val_loss": value})
            peak.sample()
        tracker.flush()
    buffers = tracker._run.buffers
    tracker.finish()
    return model, peak.peak, buffers.reused_bytes


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_streaming_writes_the_files_of_the_host_copy_path_and_takes_no_copy(tmp_path, suffix):
    copied, copied_peak, _ = _train(tmp_path / "copied", suffix)
    model = _model_with_adam()
    one = one_save_bytes(model, model.optimizer)
    names = sorted(n for n in os.listdir(tmp_path / "copied") if n.endswith(suffix))
    assert len(names) == 2
    for budget in (0, one - 1):  # below one save: as 0
        streamed, peak, reused = _train(tmp_path / f"streamed{budget}", suffix, max_host_memory=budget)
        assert copied_peak > 0 and peak == 0 and reused == 0  # no host copy, no pool
        assert sorted(n for n in os.listdir(tmp_path / f"streamed{budget}") if n.endswith(suffix)) == names
        for name in names:
            loaded = []
            for directory in ("copied", f"streamed{budget}"):
                model = _model_with_adam()
                model.load_weights(str(tmp_path / directory / name))  # the stock loader
                loaded.append([v.numpy() for v in model.weights + model.optimizer.variables])
            assert all(np.array_equal(a, b) for a, b in zip(*loaded, strict=True))
            if suffix == ".weights.h5":
                assert _tree(tmp_path / "copied" / name) == _tree(tmp_path / f"streamed{budget}" / name)
        assert _tree(tmp_path / "copied" / "keras_best_last.h5") == _tree(
            tmp_path / f"streamed{budget}" / "keras_best_last.h5")


# ------------------------------------------------------------- the option
@pytest.mark.parametrize("value", [-1, 1.5, "1 gig", "-1GB", True])
def test_max_host_memory_is_validated_at_construction(tmp_path, value):
    message = r"`max_host_memory` must be a number of bytes >= 0 .* Received: max_host_memory="
    with pytest.raises(ValueError, match=message):
        Options(max_host_memory=value)
    with pytest.raises(ValueError, match=message):
        BestWeightsTracker(make_model(), str(tmp_path / "b.weights.h5"), max_host_memory=value)
    with pytest.raises(ValueError, match=message):
        BestCheckpoint(str(tmp_path / "b.weights.h5"), max_host_memory=value)
    assert Options(max_host_memory=np.int64(5)).max_host_memory == 5
    assert [Options(max_host_memory=v).max_host_memory for v in ("2GB", "1.5GiB", "0MB", 0)] == [
        2 * 10**9, 3 * 2**29, 0, 0]  # sizes as max_disk= takes them


def test_the_write_back_check_samples_the_variables_it_compares():
    """runner/stale.py compares a few trainable variables at each update: a
    sample of each (at most 4 values along an axis), never a copy of a kernel
    (in a model without biases, the smallest variables are whole kernels)."""
    from keras_best.runner.stale import fingerprint

    model = keras.Sequential([keras.Input((1024,))] + [keras.layers.Dense(1024, use_bias=False) for _ in range(3)])
    sample = fingerprint(model)
    assert len(sample) == 3 and all(a.size <= 1024 for a in sample)
    model.layers[0].kernel.assign(np.zeros((1024, 1024), "float32"))
    assert any(not np.array_equal(a, b) for a, b in zip(sample, fingerprint(model)))
