"""Reading a metric value from Metric objects, tensors, numpy and numbers."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_best.core.monitor import infer_mode
from keras_best.frontends.metrics import read_all, read_value
from keras_best.keras_adapter.fit import metric_direction as direction_of


def test_metric_object_is_read_and_not_reset():
    m = keras.metrics.Mean()
    m.update_state([1.0, 2.0, 6.0])
    assert read_value("val_loss", m) == pytest.approx(3.0)
    assert read_value("val_loss", m) == pytest.approx(3.0)
    m.update_state([5.0])  # still accumulating: nothing was reset by reading
    assert read_value("val_loss", m) == pytest.approx(3.5)


def test_stateful_accuracy_metric():
    m = keras.metrics.BinaryAccuracy()
    m.update_state([[1.0], [0.0], [1.0], [1.0]], [[0.9], [0.2], [0.1], [0.8]])
    assert read_value("val_acc", m) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "value,expected",
    [
        (0.25, 0.25),
        (3, 3.0),
        (np.float32(0.5), 0.5),
        (np.float64(0.125), 0.125),
        (np.int64(4), 4.0),
        (np.array(0.75, dtype="float32"), 0.75),
        (np.array([0.5]), 0.5),
        (float("nan"), float("nan")),
        (float("inf"), float("inf")),
    ],
)
def test_numbers_and_numpy(value, expected):
    result = read_value("val_loss", value)
    assert type(result) is float
    assert result == expected or (np.isnan(result) and np.isnan(expected))


@pytest.mark.parametrize(
    "make",
    [
        lambda: tf.constant(0.5),
        lambda: tf.constant(0.5, dtype=tf.float64),
        lambda: tf.Variable(0.5),
        lambda: keras.ops.convert_to_tensor(0.5),
        lambda: keras.ops.mean(keras.ops.convert_to_tensor([0.25, 0.75])),
    ],
)
def test_tensors(make):
    result = read_value("val_loss", make())
    assert type(result) is float and result == 0.5


def test_tensor_inside_tf_function_result():
    @tf.function
    def compute():
        return tf.reduce_mean(tf.constant([1.0, 2.0]))

    assert read_value("val_loss", compute()) == 1.5


@pytest.mark.parametrize("value", ["0.5", b"0.5"])
def test_string_is_an_error(value):
    with pytest.raises(ValueError, match=r"Metric 'val_loss' must be a number.*Received a string"):
        read_value("val_loss", value)


@pytest.mark.parametrize("value", [True, np.bool_(False), tf.constant(True), np.array(True)])
def test_bool_is_an_error(value):
    with pytest.raises(ValueError, match="Metric 'val_acc' must be a number, not a bool"):
        read_value("val_acc", value)


@pytest.mark.parametrize(
    "value,shape",
    [
        (np.array([0.1, 0.2]), r"\(2,\)"),
        (tf.constant([[0.1, 0.2], [0.3, 0.4]]), r"\(2, 2\)"),
        ([0.1, 0.2, 0.3], r"\(3,\)"),
        (np.zeros((0,)), r"\(0,\)"),
    ],
)
def test_non_scalar_is_an_error(value, shape):
    with pytest.raises(
        ValueError, match=rf"Metric 'val_loss' must be a scalar number.*shape {shape}.*take the mean"
    ):
        read_value("val_loss", value)


def test_non_numeric_is_an_error():
    with pytest.raises(ValueError, match=r"Metric 'val_loss' must be a scalar number.*dtype complex"):
        read_value("val_loss", 1 + 2j)
    with pytest.raises(ValueError, match=r"Metric 'val_loss' is None. Pass a number"):
        read_value("val_loss", None)
    with pytest.raises(ValueError, match=r"Metric 'val_loss' is too large to be a float. Received an int of 1329 bits"):
        read_value("val_loss", 10**400)


@pytest.mark.parametrize("metric", [keras.metrics.Mean(), keras.metrics.BinaryAccuracy(),
                                    keras.metrics.MeanSquaredError()])
def test_a_mean_metric_that_saw_nothing_is_an_error_not_a_best(metric):
    metric.reset_state()
    with pytest.raises(ValueError, match=rf"Metric 'val_x' \({type(metric).__name__}\) has accumulated no "
                                         r"values since its last reset_state\(\), so it reads 0.0"):
        read_value("val_x", metric)
    if type(metric) is keras.metrics.Mean:
        metric.update_state(2.0)
    else:
        metric.update_state([1.0], [1.0])
    assert read_value("val_x", metric) == pytest.approx(float(metric.result()))


def test_dict_result_is_an_error():
    with pytest.raises(ValueError, match=r"Metric 'val_f1' returned a dict \(\['a', 'b'\]\)"):
        read_value("val_f1", {"a": 1.0, "b": 2.0})


def test_read_all():
    m = keras.metrics.Mean()
    m.update_state([2.0])
    assert read_all({"val_loss": m, "acc": np.float32(0.5), "lr": 1e-3}) == {
        "val_loss": 2.0,
        "acc": 0.5,
        "lr": 1e-3,
    }


def test_read_all_needs_a_mapping():
    with pytest.raises(TypeError, match=r"`metrics` must be a dict of name -> value.*Received: list"):
        read_all([0.5])


# ------------------------------------------------------------------- direction
# Keras 3 keeps a metric's direction in the private `_direction` attribute;
# these tests pin it, so a Keras upgrade that renames it fails here.
@pytest.mark.parametrize(
    "metric,direction",
    [
        (keras.metrics.AUC(), "up"),
        (keras.metrics.BinaryAccuracy(), "up"),
        (keras.metrics.Precision(), "up"),
        (keras.metrics.Recall(), "up"),
        (keras.metrics.CosineSimilarity(), "up"),
        (keras.metrics.R2Score(), "up"),
        (keras.metrics.MeanSquaredError(), "down"),
        (keras.metrics.MeanAbsoluteError(), "down"),
        (keras.metrics.BinaryCrossentropy(), "down"),
        (keras.metrics.LogCoshError(), "down"),
        (keras.metrics.Mean(), None),
        (keras.metrics.Sum(), None),
    ],
)
def test_direction_of_real_keras_metrics(metric, direction):
    assert getattr(metric, "_direction", None) == direction
    assert direction_of(metric) == direction


def test_direction_of_non_metrics():
    assert direction_of(0.5) is None
    assert direction_of(tf.constant(0.5)) is None


def test_direction_decides_mode_when_the_name_gives_no_clue():
    with pytest.raises(ValueError, match="Cannot infer"):
        infer_mode("val_cos")
    assert infer_mode("val_cos", direction_of(keras.metrics.CosineSimilarity())) == "max"
    assert infer_mode("val_kl", direction_of(keras.metrics.KLDivergence())) == "min"
