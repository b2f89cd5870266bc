"""Host copies reused from one save to the next (`keras_best.storage.buffers`): an
array is handed out again only once every holder has released it, so no
saved file, training state or kept best weights is ever overwritten."""

from __future__ import annotations

import os

import h5py
import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_best import BestWeightsTracker, load_best
from keras_best.storage import manifest
from keras_best.storage.buffers import HostBuffers
from tests.conftest import make_model, perturb

SHAPES = [(3,), (2, 2), (4,)]


class _Var:
    """What `free_for` looks at: a shape and a dtype."""

    def __init__(self, shape, dtype="float32"):
        self.shape, self.dtype = shape, dtype


def test_a_released_array_is_reused_and_a_held_one_never():
    buffers = HostBuffers()
    buffers.allow(1 << 20)
    first = buffers.copies([np.zeros(3, "float32")])
    buffers.hold(first)  # a second holder
    buffers.release(first)
    assert buffers.free_for([_Var((3,))]) == [None]  # still held once
    buffers.release(first)
    assert buffers.free_for([_Var((3,))])[0] is first[0]
    assert buffers.free_for([_Var((3,))]) == [None]  # handed out once


def test_free_arrays_stay_within_the_limit_and_clear_drops_them():
    buffers = HostBuffers()
    buffers.allow(3 * 4)  # one float32 array of 3
    arrays = buffers.copies([np.zeros(3, "float32"), np.ones(3, "float32")])
    buffers.release(arrays)
    assert buffers.free_bytes == 12
    buffers.clear()
    assert buffers.free_bytes == 0 and buffers.free_for([_Var((3,))]) == [None]


def test_a_forgotten_array_is_never_reused():
    buffers = HostBuffers()
    buffers.allow(1 << 20)
    arrays = buffers.copies([np.zeros(3, "float32")])
    buffers.forget(arrays)  # handed to a backend that may alias it
    buffers.release(arrays)
    assert buffers.free_for([_Var((3,))]) == [None]


def test_views_and_unknown_arrays_are_never_kept():
    buffers = HostBuffers()
    buffers.allow(1 << 20)
    base = np.zeros(6, "float32")
    buffers.hold([base[:3]])  # a view: its base is someone else's
    buffers.release([base[:3], np.zeros(3, "float32")])  # and an array never held
    assert buffers.free_bytes == 0


# One operation on the pool: take copies of some variables, add a holder to
# a held set, or release one holder of a set.
OPS = st.lists(st.tuples(st.sampled_from(["take", "hold", "release"]), st.integers(0, 7),
                         st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, limit=st.sampled_from([0, 16, 64, 1 << 20]))
def test_no_held_array_is_ever_overwritten(ops, limit):
    """Every taken set is stamped with its own value; after any sequence of
    takes, holds and releases, every set someone still holds keeps its stamp,
    and the free arrays stay within the limit."""
    buffers = HostBuffers()
    buffers.allow(limit)
    sets: list[tuple[list[np.ndarray], float, int]] = []  # arrays, stamp, holders
    for stamp, (op, pick, shapes) in enumerate(ops):
        if op == "take" or not sets:
            arrays = buffers.copies([np.full(s, float(stamp), "float32") for s in shapes])
            sets.append((arrays, float(stamp), 1))
        else:
            i = pick % len(sets)
            arrays, value, holders = sets[i]
            if op == "hold":
                buffers.hold(arrays)
                sets[i] = (arrays, value, holders + 1)
            else:
                buffers.release(arrays)
                if holders == 1:
                    del sets[i]
                else:
                    sets[i] = (arrays, value, holders - 1)
        for arrays, value, _ in sets:
            assert all(np.all(a == value) for a in arrays)
        assert buffers.free_bytes <= limit
        held = {id(a) for arrays, _, _ in sets for a in arrays}
        assert not held & {id(a) for stack in buffers._free.values() for a in stack}


def _model_with_adam() -> keras.Model:
    model = make_model()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _state_of(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.weights + model.optimizer.variables]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.sampled_from([0.9, 0.5, 0.4, 0.3, 0.2, 0.6]), min_size=2, max_size=8),
       keep_top_k=st.sampled_from([1, 2]), save_best_only=st.booleans(), async_save=st.booleans(),
       flush_after=st.lists(st.booleans(), min_size=8, max_size=8))
def test_every_file_holds_its_own_moment_while_copies_are_reused(tmp_path_factory, values, keep_top_k,
                                                                 save_best_only, async_save, flush_after):
    """Updates back to back (the writer falls behind and merges) or flushed:
    each kept file, the training state and the restored best weights hold
    the values of their own epoch, while host copies go round."""
    directory = tmp_path_factory.mktemp("run")
    model = _model_with_adam()
    tracker = BestWeightsTracker(model, str(directory / "e{epoch}.weights.h5"), keep_top_k=keep_top_k,
                                 save_best_only=save_best_only, resume=True, restore_best_weights=True,
                                 patience=100, verbose=0, async_save=async_save)
    moments = {}
    for epoch, v in enumerate(values):
        perturb(model, 100 + epoch)
        for i, slot in enumerate(model.optimizer.variables):
            slot.assign(np.full(slot.shape, epoch * 10 + i, slot.dtype))
        moments[epoch] = _state_of(model)
        tracker.update(epoch, {"val_loss": v})
        if flush_after[epoch]:
            tracker.flush()
    tracker.flush()
    record = manifest.read(str(directory))
    for kept in record.kept:
        other = _model_with_adam()
        other.load_weights(os.path.join(str(directory), kept.path))
        assert all(np.array_equal(a, b) for a, b in zip(_state_of(other), moments[kept.epoch]))
    with h5py.File(os.path.join(str(directory), record.state.last["path"]), "r") as f:
        saved = [f["model"][str(i)][()] for i in range(f["model"].attrs["count"])]
        saved += [f["optimizer"][str(i)][()] for i in range(f["optimizer"].attrs["count"])]
    assert all(np.array_equal(a, b) for a, b in zip(saved, moments[len(values) - 1]))
    tracker.finish()
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), moments[tracker.best_epoch]
                                                    [:len(model.weights)]))
    fresh = _model_with_adam()
    assert load_best(fresh, str(directory)).epoch == tracker.best_epoch


def test_back_to_back_saves_reuse_host_copies(tmp_path):
    """The training thread copies into arrays already mapped: after the first
    few updates, each improving update reuses a whole set."""
    model = _model_with_adam()
    tracker = BestWeightsTracker(model, str(tmp_path / "best.weights.h5"), resume=True,
                                 restore_best_weights=True, verbose=0)
    for epoch in range(8):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": 1.0 / (epoch + 1)})
        if epoch % 3 == 2:
            tracker.flush()
    buffers = tracker._run.buffers
    one_set = sum(np.asarray(v).nbytes for v in model.weights + model.optimizer.variables)
    assert buffers.reused_bytes >= 4 * one_set
    tracker.finish()
    assert buffers.free_bytes == 0  # dropped at finish()
