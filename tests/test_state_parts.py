"""The training state is a list of named parts (`keras_best.training_state`):
each takes host copies, writes its group, reads and checks it, then assigns.
Loading checks every part before it assigns any; 0.2's state files load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_best.storage import files
from keras_best.storage.buffers import HostBuffers
from keras_best.training_state import parts, rng, state
from tests.conftest import make_model

h5py = pytest.importorskip("h5py")


class _Holder:
    def __init__(self, value: int) -> None:
        self.value = value


class _Counter:
    """A part of one's own: an integer held outside any model."""

    name = "counter"

    def __init__(self, holder: _Holder, fail: str | None = None) -> None:
        self.holder, self.fail, self.assigned = holder, fail, False

    def copies(self, buffers, reuse):
        return {"value": np.array(self.holder.value, np.int64)}

    def write(self, group, copies):
        group.create_dataset("value", data=copies["value"])

    def read(self, group, where):
        if self.fail:
            raise ValueError(f"Cannot resume: {where} {self.fail}")
        if group is None:
            raise ValueError(f"Cannot resume: {where} holds no counter.")
        return int(group["value"][()])

    def assign(self, value):
        self.assigned = True
        self.holder.value = value


def _trained(seed: int = 0) -> keras.Model:
    model = make_model(seed=seed)
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    for i, v in enumerate(model.optimizer.variables):
        v.assign(np.full(v.shape, seed * 100 + i, v.dtype))
    return model


def _values(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.weights + model.optimizer.variables]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _save(path, state_parts, epoch=3, step=None) -> None:
    state.snapshot(state_parts, HostBuffers(), None, epoch, step).write(str(path))


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_part_that_does_not_fit_leaves_every_variable_unassigned(tmp_path, where):
    saved = _trained(seed=1)
    _save(tmp_path / "s.h5", [*parts.for_model(saved, saved.optimizer), _Counter(_Holder(7))])
    model, holder = _trained(seed=2), _Holder(0)
    before = _values(model)
    failing = _Counter(holder, fail="holds a counter of another kind.")
    ordered = [failing, *parts.for_model(model, model.optimizer)]
    with pytest.raises(ValueError, match="counter of another kind"):
        state.load(str(tmp_path / "s.h5"), ordered if where == "first" else ordered[1:] + ordered[:1])
    assert _same(_values(model), before)
    assert not failing.assigned and holder.value == 0


def test_a_shape_mismatch_leaves_the_other_parts_unassigned(tmp_path):
    saved = _trained(seed=1)
    _save(tmp_path / "s.h5", [*parts.for_model(saved, saved.optimizer), _Counter(_Holder(7))])
    other = make_model(units=5, seed=3)
    other.compile(keras.optimizers.Adam(), "mse")
    holder = _Holder(0)
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in other.weights]
    with pytest.raises(ValueError, match=r"model variable 0 .*has shape \(4, 5\) but .* holds \(4, 8\)"):
        state.load(str(tmp_path / "s.h5"), [_Counter(holder), *parts.for_model(other, other.optimizer)])
    assert holder.value == 0
    assert _same([keras.ops.convert_to_numpy(v.value) for v in other.weights], before)


def test_a_custom_part_round_trips(tmp_path):
    saved = _trained(seed=1)
    _save(tmp_path / "s.h5", [*parts.for_model(saved, saved.optimizer), _Counter(_Holder(41))], epoch=5, step=2)
    model, holder = _trained(seed=2), _Holder(0)
    assert state.load(str(tmp_path / "s.h5"), [*parts.for_model(model, model.optimizer), _Counter(holder)]) == (5, 2)
    assert holder.value == 41
    assert _same(_values(model), _values(saved))
    assert state.resume(str(tmp_path / "s.h5"), [_Counter(holder)]) == (5, 3)  # the next batch


def test_a_missing_part_is_a_clear_error_and_assigns_nothing(tmp_path):
    saved = _trained(seed=1)
    _save(tmp_path / "s.h5", parts.for_model(saved, saved.optimizer))
    model = _trained(seed=2)
    before = _values(model)
    with pytest.raises(ValueError, match=r"s\.h5 holds no counter"):
        state.load(str(tmp_path / "s.h5"), [*parts.for_model(model, model.optimizer), _Counter(_Holder(0))])
    assert _same(_values(model), before)


def test_parts_need_distinct_names(tmp_path):
    with pytest.raises(ValueError, match=r"distinct names. Received: \['counter', 'counter'\]"):
        state.snapshot([_Counter(_Holder(1)), _Counter(_Holder(2))], HostBuffers(), None, 0, None)


def test_swapped_pairs_trade_places_in_the_state_only(tmp_path):
    model = _trained(seed=1)
    a, b = model.weights[-1], model.optimizer.variables[-1]  # the last bias and one of its slots
    assert tuple(a.shape) == tuple(b.shape)
    va, vb = keras.ops.convert_to_numpy(a.value).copy(), keras.ops.convert_to_numpy(b.value).copy()
    _save(tmp_path / "s.h5", parts.for_model(model, model.optimizer, swapped=[(a, b)]))
    assert np.array_equal(keras.ops.convert_to_numpy(a.value), va)  # the live values stay
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert np.array_equal(f["model"][str(len(model.weights) - 1)][()], vb)
        assert np.array_equal(f["optimizer"][str(len(model.optimizer.variables) - 1)][()], va)


# ------------------------------------------------------------- 0.2's layout
def _fill_0_2(f, model_arrays, optimizer_arrays, epoch, step, random):
    """`keras_best/state.py`'s `_fill` in 0.2 (commit 6c6c1e7), as it was."""
    f.attrs["epoch"] = epoch
    f.attrs["step"] = -1 if step is None else step
    for group_name, arrays in (("model", model_arrays), ("optimizer", optimizer_arrays)):
        group = f.create_group(group_name)
        group.attrs["count"] = len(arrays)
        for i, a in enumerate(arrays):
            group.create_dataset(str(i), data=a)
    if random:
        group = f.create_group("random")
        for name, a in random.items():
            group.create_dataset(name, data=a)


def _write_0_2(path, model, epoch, step, random):
    arrays = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
    slots = [keras.ops.convert_to_numpy(v.value) for v in model.optimizer.variables]
    files.write_h5(str(path), lambda f: _fill_0_2(f, arrays, slots, epoch, step, random))


@pytest.mark.parametrize("step", [None, 4])
def test_a_state_file_written_by_0_2_loads(tmp_path, step):
    saved = _trained(seed=1)
    np.random.seed(5)
    random_state = rng.capture(saved)
    _write_0_2(tmp_path / "keras_best_last.h5", saved, 2, step, random_state)
    expected_draw = np.random.normal()
    np.random.seed(9)
    model = _trained(seed=2)
    assert state.load(str(tmp_path / "keras_best_last.h5"), parts.for_model(model, model.optimizer)) == (2, step)
    assert _same(_values(model), _values(saved))
    assert np.random.normal() == expected_draw  # the random group came back too


def test_the_state_file_is_written_in_0_2s_layout_byte_for_byte(tmp_path):
    model = _trained(seed=1)
    random_state = rng.capture(model)
    _write_0_2(tmp_path / "old.h5", model, 7, 3, random_state)
    taken = state.snapshot(parts.for_model(model, model.optimizer), HostBuffers(), None, 7, 3)
    # the same random state as 0.2's file (capture reads the live streams)
    taken = state.StateSnapshot(tuple((p, random_state if p.name == "random" else c) for p, c in taken.parts),
                                7, 3, taken.buffers)
    taken.write(str(tmp_path / "new.h5"))
    assert (tmp_path / "new.h5").read_bytes() == (tmp_path / "old.h5").read_bytes()


def test_a_0_2_state_without_random_state_loads(tmp_path):
    saved = _trained(seed=1)
    _write_0_2(tmp_path / "s.h5", saved, 0, None, None)
    model = _trained(seed=2)
    assert state.load(str(tmp_path / "s.h5"), parts.for_model(model, model.optimizer)) == (0, None)
    assert _same(_values(model), _values(saved))
