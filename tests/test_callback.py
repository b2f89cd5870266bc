"""BestCheckpoint: the tracker behind `fit()`, a drop-in for ModelCheckpoint."""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from tests.conftest import BACKEND, make_model, perturb, run_json


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith((".weights.h5", ".keras")))


def _drive_callback(cb, model, values, monitor="val_loss"):
    """What fit() does, by hand: returns the epochs at which it asked to stop."""
    cb.set_model(model)
    cb.set_params({"epochs": len(values), "verbose": 0, "steps": 1})
    cb.on_train_begin()
    stops = []
    for epoch, v in enumerate(values):
        model.stop_training = False
        cb.on_epoch_begin(epoch)
        perturb(model, 100 + epoch)
        cb.on_epoch_end(epoch, {"loss": 1.0, monitor: v})
        if model.stop_training:
            stops.append(epoch)
    cb.on_train_end()
    return stops


def _drive_tracker(tracker, model, values, monitor="val_loss"):
    stops = []
    for epoch, v in enumerate(values):
        perturb(model, 100 + epoch)
        if tracker.update(epoch, {"loss": 1.0, monitor: v}).should_stop:
            stops.append(epoch)
    tracker.finish()
    return stops


def _record(directory):
    data = run_json(directory)
    return data["best"], [k["path"] for k in data["kept"]], [h["improved"] for h in data["history"]]


SEQUENCES = [
    [0.5, 0.4, 0.45, 0.3, 0.35, 0.36, 0.37],
    [0.9, float("nan"), 0.8, 0.8, 0.85, 0.7],
    [0.25, 0.5, 0.75, 1.0, 0.125],
]
OPTIONS = [
    dict(save_best_only=True),
    dict(save_best_only=True, min_delta=0.06, patience=2),
    dict(save_best_only=True, mode="max", patience=1),
    dict(save_best_only=True, initial_value_threshold=0.42, keep_top_k=2),
    dict(save_best_only=False, keep_top_k=None),
    dict(save_best_only=True, keep_top_k=3, patience=3, start_from_epoch=2),
]


@pytest.mark.parametrize("values", SEQUENCES)
@pytest.mark.parametrize("options", OPTIONS)
def test_callback_and_tracker_decide_the_same(tmp_path, values, options):
    name = "e{epoch:02d}-{val_loss:.3f}.weights.h5"
    cb_dir, tr_dir = tmp_path / "cb", tmp_path / "tr"
    cb_model, tr_model = make_model(), make_model()
    cb = BestCheckpoint(str(cb_dir / name), monitor="val_loss", save_weights_only=True, **options)
    tracker_options = dict(options)
    tracker_options["baseline"] = tracker_options.pop("initial_value_threshold", None)
    tracker_options.setdefault("keep_top_k", None)  # ModelCheckpoint keeps every file it saves
    tracker = BestWeightsTracker(
        tr_model, str(tr_dir / name), monitor="val_loss", verbose=0, **tracker_options
    )
    assert _drive_callback(cb, cb_model, values) == _drive_tracker(tracker, tr_model, values)
    assert _files(cb_dir) == _files(tr_dir)
    assert _record(cb_dir) == _record(tr_dir)
    assert (cb.best, cb.tracker.best_epoch) == (tracker.best, tracker.best_epoch)
    a, b = make_model(seed=1), make_model(seed=2)
    for f in _files(cb_dir):
        a.load_weights(str(cb_dir / f))
        b.load_weights(str(tr_dir / f))
        assert _same(a.get_weights(), b.get_weights())


# ---------------------------------------------------------------- real fit()
@pytest.fixture
def fit_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x[:, :1] + 0.7 * rng.normal(size=(96, 1)) > 0).astype("float32")
    return x[:64], y[:64], x[64:], y[64:]


def _compiled(metrics=()):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.8), loss="binary_crossentropy", metrics=list(metrics))
    return model


def _weights_recorder(model, store):
    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: store.append(model.get_weights()))


def test_fit_keeps_the_best_epoch(tmp_path, fit_data):
    x, y, vx, vy = fit_data
    model = _compiled()
    weights = []
    cb = BestCheckpoint(
        str(tmp_path / "{epoch:02d}-{val_loss:.4f}.weights.h5"),
        monitor="val_loss",
        save_best_only=True,
        save_weights_only=True,
        keep_top_k=1,
    )
    history = model.fit(
        x,
        y,
        validation_data=(vx, vy),
        epochs=8,
        batch_size=16,
        verbose=0,
        callbacks=[_weights_recorder(model, weights), cb],
    ).history
    best_epoch = int(np.argmin(history["val_loss"]))
    assert 0 < best_epoch < 7  # it got worse afterwards: the test means something
    assert cb.tracker.best_epoch == best_epoch and cb.best == pytest.approx(history["val_loss"][best_epoch])
    assert _files(tmp_path) == [f"{best_epoch + 1:02d}-{history['val_loss'][best_epoch]:.4f}.weights.h5"]
    fresh = _compiled()
    fresh.load_weights(str(tmp_path / _files(tmp_path)[0]))  # stock Keras
    assert _same(fresh.get_weights(), weights[best_epoch])
    fresh = _compiled()
    rec = load_best(fresh, str(tmp_path))
    assert rec.epoch == best_epoch and _same(fresh.get_weights(), weights[best_epoch])
    # Replaying fit's logs through a tracker gives the same decisions.
    tracker = BestWeightsTracker(make_model(), str(tmp_path / "replay" / "b.weights.h5"), verbose=0)
    replay = [tracker.update(e, {"val_loss": v}).improved for e, v in enumerate(history["val_loss"])]
    assert replay == [h["improved"] for h in cb.tracker.history]


def test_fit_early_stopping_and_restore(tmp_path, fit_data):
    x, y, vx, vy = fit_data
    model = _compiled()
    weights = []
    cb = BestCheckpoint(
        str(tmp_path / "best.keras"), save_best_only=True, patience=2, restore_best_weights=True
    )
    history = model.fit(
        x,
        y,
        validation_data=(vx, vy),
        epochs=30,
        batch_size=16,
        verbose=0,
        callbacks=[_weights_recorder(model, weights), cb],
    ).history
    ran = len(history["val_loss"])
    best_epoch = int(np.argmin(history["val_loss"]))
    assert ran < 30 and ran == best_epoch + 3  # model.stop_training was set
    assert model.stop_training is True
    assert _same(model.get_weights(), weights[best_epoch])  # restored at the end of fit
    loaded = keras.models.load_model(str(tmp_path / "best.keras"))  # stock Keras
    assert _same(loaded.get_weights(), weights[best_epoch])


@pytest.mark.slow  # two fit() runs of ~13 epochs
def test_fit_matches_keras_early_stopping(tmp_path, fit_data):
    x, y, vx, vy = fit_data
    ours = _compiled()
    ours.fit(
        x,
        y,
        validation_data=(vx, vy),
        epochs=30,
        batch_size=32,
        verbose=0,
        callbacks=[
            BestCheckpoint(str(tmp_path / "b.weights.h5"), save_best_only=True, patience=2, min_delta=0.001)
        ],
    )
    theirs = _compiled()
    h = theirs.fit(
        x,
        y,
        validation_data=(vx, vy),
        epochs=30,
        batch_size=32,
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=2, min_delta=0.001)],
    )
    assert len(ours.history.history["loss"]) == len(h.history["loss"]) < 30


def test_fit_mode_from_compiled_metric_direction(tmp_path, fit_data):
    x, y, vx, vy = fit_data
    model = _compiled(metrics=[keras.metrics.CosineSimilarity(name="cos")])
    cb = BestCheckpoint(str(tmp_path / "b.weights.h5"), monitor="val_cos", save_best_only=True)
    history = model.fit(
        x, y, validation_data=(vx, vy), epochs=4, batch_size=16, verbose=0, callbacks=[cb]
    ).history
    assert cb.tracker.mode == "max"
    assert cb.tracker.best_epoch == int(np.argmax(history["val_cos"]))


def test_fit_with_save_freq_and_batch_in_name_matches_model_checkpoint(tmp_path, fit_data):
    x, y, _, _ = fit_data
    name = "e{epoch}-b{batch}.weights.h5"
    model = _compiled()
    ours = BestCheckpoint(str(tmp_path / "ours" / name), save_weights_only=True, save_freq=3)
    theirs = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "keras" / name), save_weights_only=True, save_freq=3
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[ours, theirs])  # 4 batches per epoch
    assert (
        _files(tmp_path / "ours")
        == _files(tmp_path / "keras")
        == [
            "e1-b3.weights.h5",
            "e2-b2.weights.h5",
        ]
    )
    a, b = _compiled(), _compiled()
    for f in _files(tmp_path / "ours"):
        a.load_weights(str(tmp_path / "ours" / f))
        b.load_weights(str(tmp_path / "keras" / f))
        assert _same(a.get_weights(), b.get_weights())


def test_save_freq_without_validation_data_records_no_value_not_nan(tmp_path, fit_data):
    # issue 25: each missing val_loss was recorded as NaN, and inspect said "NaN or infinite at every epoch".
    from keras_best.summary import format_table, summarize

    x, y, _, _ = fit_data
    name = "e{epoch}-b{batch}.weights.h5"
    ours = BestCheckpoint(str(tmp_path / "ours" / name), save_weights_only=True, save_freq=3)
    theirs = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras" / name), save_weights_only=True, save_freq=3)
    _compiled().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[ours, theirs])
    assert _files(tmp_path / "ours") == _files(tmp_path / "keras") != []  # still saved, as ModelCheckpoint
    entries = ours.tracker.history
    assert entries and all(h["validated"] is False and h["wait"] == 0 and not h["improved"] for h in entries)
    assert ours.best is None
    summary = summarize(str(tmp_path / "ours"))
    assert "no validation values" in summary["no_best"] and "NaN" not in summary["no_best"]
    assert " nan " not in format_table(summary)  # the kept files' value: "-"


@pytest.mark.skipif(BACKEND == "torch", reason="Keras refuses steps_per_execution > 1 on the PyTorch backend")
def test_fit_with_save_freq_counts_batches_as_model_checkpoint_with_steps_per_execution(tmp_path, fit_data):
    x, y, _, _ = fit_data
    name = "e{epoch}-b{batch}.weights.h5"
    model = _compiled()
    model.compile(optimizer=keras.optimizers.SGD(0.8), loss="binary_crossentropy", steps_per_execution=2)
    ours = BestCheckpoint(str(tmp_path / "ours" / name), save_weights_only=True, save_freq=3)
    theirs = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras" / name), save_weights_only=True, save_freq=3)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[ours, theirs])  # 8 batches, seen 2 by 2
    assert _files(tmp_path / "ours") == _files(tmp_path / "keras") != []


def test_front_ends_touch_no_private_attribute_of_another_object():
    import ast
    import pathlib

    import keras_best.frontends

    found = []
    for path in sorted(pathlib.Path(keras_best.frontends.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr") and (
                    len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                    and str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__")):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert found == []


def test_fit_save_best_only_with_save_freq(tmp_path, fit_data):
    # ModelCheckpoint raises TypeError here (Keras 3.15); we save the best batch.
    x, y, _, _ = fit_data
    model = _compiled()
    cb = BestCheckpoint(
        str(tmp_path / "b{batch}.weights.h5"),
        monitor="loss",
        save_best_only=True,
        save_weights_only=True,
        save_freq=1,
        keep_top_k=1,
    )
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])
    steps = [h["step"] for h in cb.tracker.history]
    assert steps == [0, 1, 2, 3]
    best = min(cb.tracker.history, key=lambda h: h["value"])
    assert _files(tmp_path) == [f"b{best['step'] + 1}.weights.h5"]


def test_fit_save_best_only_false_saves_every_epoch_like_model_checkpoint(tmp_path, fit_data):
    x, y, vx, vy = fit_data
    model = _compiled()
    name = "m{epoch}.keras"
    ours = BestCheckpoint(str(tmp_path / "ours" / name))
    theirs = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras" / name))
    model.fit(x, y, validation_data=(vx, vy), epochs=3, batch_size=32, verbose=0, callbacks=[ours, theirs])
    assert _files(tmp_path / "ours") == _files(tmp_path / "keras") == ["m1.keras", "m2.keras", "m3.keras"]
    for f in _files(tmp_path / "ours"):
        a = keras.models.load_model(str(tmp_path / "ours" / f))
        b = keras.models.load_model(str(tmp_path / "keras" / f))
        assert _same(a.get_weights(), b.get_weights())


# ------------------------------------------------------- ModelCheckpoint parity
def _keras_error(**kwargs):
    with pytest.raises(ValueError) as info:
        keras.callbacks.ModelCheckpoint(**kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filepath="best.keras", save_weights_only=True),
        dict(filepath="best.h5", save_weights_only=True),
        dict(filepath="best", save_weights_only=True),
        dict(filepath="best"),
        dict(filepath="best.txt"),
        dict(filepath="best.keras", save_freq="batch"),
        dict(filepath="best.keras", save_freq=2.5),
        dict(filepath="best.keras", save_freq=None),
    ],
)
def test_same_errors_as_model_checkpoint(tmp_path, kwargs):
    if kwargs["filepath"] == "best" and keras.backend.backend() == "jax":
        pytest.skip("on JAX a name without a file extension is an Orbax checkpoint directory (test_orbax.py)")
    kwargs = dict(kwargs, filepath=str(tmp_path / kwargs["filepath"]))
    message = _keras_error(**kwargs)
    with pytest.raises(ValueError) as info:
        BestCheckpoint(**kwargs)
    assert str(info.value) == message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("save_freq", [0, -1, True])
def test_save_freq_must_be_positive(tmp_path, save_freq):
    with pytest.raises(ValueError, match=rf"Unrecognized save_freq: {save_freq}"):
        BestCheckpoint(str(tmp_path / "b.keras"), save_freq=save_freq)


def test_batch_placeholder_needs_an_int_save_freq(tmp_path):
    with pytest.raises(ValueError, match=r"uses \{batch\}, but with save_freq='epoch'"):
        BestCheckpoint(str(tmp_path / "b-{epoch}-{batch:04d}.weights.h5"))
    assert os.listdir(tmp_path) == []  # refused before anything was created
    BestCheckpoint(str(tmp_path / "b-{epoch}-{batch:04d}.weights.h5"), save_freq=5)
    BestCheckpoint(str(tmp_path / "b-{epoch}-{batch_loss:.2f}.weights.h5"))  # a metric, not {batch}


def test_unknown_mode_raises_where_keras_only_warns(tmp_path):
    with pytest.warns(UserWarning, match="mode 'maximum' is unknown"):
        keras.callbacks.ModelCheckpoint(str(tmp_path / "k.keras"), mode="maximum")
    with pytest.raises(
        ValueError, match=r'`mode` must be one of "min", "max" or "auto". Received: mode=\'maximum\''
    ):
        BestCheckpoint(str(tmp_path / "b.keras"), mode="maximum")


@pytest.mark.parametrize("options", [dict(save_best_only=True), dict(save_best_only=False)])
def test_same_verbose_lines_as_model_checkpoint(tmp_path, capsys, options):
    values = [0.312, 0.2981, 0.4, 0.1]
    logs = [{"loss": 1.0, "val_loss": v} for v in values]
    path = str(tmp_path / "k" / "best.keras")
    keras_cb = keras.callbacks.ModelCheckpoint(path, verbose=1, initial_value_threshold=0.35, **options)
    keras_cb.set_model(make_model())
    for epoch, log in enumerate(logs):
        keras_cb.on_epoch_end(epoch, log)
    keras_lines = [line for line in capsys.readouterr().out.splitlines() if line]
    path = str(tmp_path / "b" / "best.keras")
    ours = BestCheckpoint(path, verbose=1, initial_value_threshold=0.35, async_save=False, **options)
    ours.set_model(make_model())
    ours.on_train_begin()
    for epoch, log in enumerate(logs):
        ours.on_epoch_end(epoch, log)
    our_lines = [line.replace("/b/", "/k/") for line in capsys.readouterr().out.splitlines() if line]
    # The same lines, except that Keras also announces each finished save, and
    # that with save_best_only=False ModelCheckpoint writes epoch 3 (worse) over
    # the best file: one fixed name is one file here, the best, never overwritten
    # by a worse epoch.
    expected = [line for line in keras_lines if "finished saving" not in line]
    if not options["save_best_only"]:
        expected[2] = "Epoch 3: val_loss did not improve from 0.29810"
    assert our_lines == expected
    assert len(our_lines) == 4


def test_model_checkpoint_attributes(tmp_path):
    path = str(tmp_path / "b.keras")
    cb = BestCheckpoint(path, monitor="val_auc", initial_value_threshold=0.5)
    assert (cb.filepath, cb.monitor, cb.best, cb.save_freq) == (path, "val_auc", None, "epoch")
    assert isinstance(cb, keras.callbacks.Callback)


def test_initial_value_threshold(tmp_path):
    cb = BestCheckpoint(
        str(tmp_path / "e{epoch}.weights.h5"), save_best_only=True, initial_value_threshold=0.5
    )
    _drive_callback(cb, make_model(), [0.6, 0.5, 0.45, 0.55])
    assert _files(tmp_path) == ["e3.weights.h5"]


def test_path_like_and_keras_h5(tmp_path):
    cb = BestCheckpoint(tmp_path / "model.h5", save_best_only=True)
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "HDF5 file ... legacy"
        _drive_callback(cb, model, [0.5])
        loaded = keras.models.load_model(str(tmp_path / "model.h5"), compile=False)
    assert _same(loaded.get_weights(), model.get_weights())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(keep_top_k=0), r"`keep_top_k` must be an int >= 1, or None"),
        (dict(patience=-2), r"`patience` must be an int >= 0 or None. Received: patience=-2"),
        (dict(keep_top_k=2), r"keep_top_k=2 keeps several files, so `filepath` needs a placeholder"),
        (dict(save_format="savedmodel"), r'save_format="savedmodel" writes a directory'),
    ],
)
def test_tracker_options_are_checked_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BestCheckpoint(str(tmp_path / "b.weights.h5"), save_weights_only=True, **kwargs)
    assert os.listdir(tmp_path) == []


def test_fit_without_validation_data_records_every_epoch_and_warns_at_the_end(tmp_path, fit_data):
    x, y, _, _ = fit_data
    model = _compiled()
    cb = BestCheckpoint(str(tmp_path / "b.keras"), monitor="val_loss", save_best_only=True)
    with pytest.warns(UserWarning, match=r"The monitored 'val_loss' was never among the metrics: no update "
                                         r"held validation values.*validation_data= or validation_split="):
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    assert _files(tmp_path) == [] and cb.best is None
    assert [(h["epoch"], h.get("validated")) for h in cb.tracker.history] == [(0, False), (1, False)]


@pytest.mark.parametrize("async_save", [True, False])
def test_fit_with_validation_freq_decides_only_at_validated_epochs(tmp_path, fit_data, async_save):
    # keras issue 16734, tensorflow 33163/44107/41632: ModelCheckpoint + validation_freq.
    x, y, vx, vy = fit_data
    model = _compiled()
    cb = BestCheckpoint(str(tmp_path / "e{epoch}.weights.h5"), monitor="val_loss", save_best_only=True,
                        keep_top_k=None, patience=2, resume=True, async_save=async_save)
    history = model.fit(x, y, validation_data=(vx, vy), validation_freq=2, epochs=6, batch_size=16,
                        verbose=0, callbacks=[cb]).history
    entries = cb.tracker.history
    assert [h["epoch"] for h in entries] == list(range(len(history["loss"])))
    validated = [h["epoch"] for h in entries if h.get("validated", True)]
    assert validated == [e for e in range(len(entries)) if (e + 1) % 2 == 0]
    assert all(not h["improved"] and h["saved"] is None for h in entries if not h.get("validated", True))
    # Unvalidated epochs do not count towards patience: the counter moves at validated ones only.
    waits = [h["wait"] for h in entries if h.get("validated", True)]
    assert waits[0] == 0 and all(b - a <= 1 for a, b in zip(waits, waits[1:]))
    best = min((h for h in entries if h.get("validated", True)), key=lambda h: h["value"])
    assert (cb.tracker.best_epoch, cb.best) == (best["epoch"], best["value"])
    assert run_json(tmp_path)["last"]["epoch"] == len(entries) - 1  # the state is written every epoch


def test_a_monitor_typo_in_fit_names_the_logs(tmp_path, fit_data):
    x, y, vx, vy = fit_data
    cb = BestCheckpoint(str(tmp_path / "b.keras"), monitor="val_los", save_best_only=True)
    with pytest.raises(ValueError, match=r"BestCheckpoint monitors 'val_los', which is not among the fit\(\) "
                                         r"logs: \['loss', 'val_loss'\]"):
        _compiled().fit(x, y, validation_data=(vx, vy), epochs=1, batch_size=32, verbose=0, callbacks=[cb])


def test_best_epoch_and_best_path_as_the_tracker_has_them(tmp_path, data):
    x, y = data
    model = make_model()
    model.compile(optimizer="adam", loss="mse")
    cb = BestCheckpoint(str(tmp_path / "{epoch:02d}.weights.h5"), save_best_only=True)
    assert cb.best_epoch is None and cb.best_path is None
    model.fit(x, y, validation_data=(x, y), epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    record = run_json(tmp_path)
    assert cb.best_epoch == record["best"]["epoch"] and cb.best == record["best"]["value"]
    assert cb.best_path == str(tmp_path / record["best"]["path"])


def test_resuming_a_complete_fit_says_it_is_complete(tmp_path, fit_data, capsys):
    # issue 25: "Resuming ... at epoch 3" for a run whose epochs were all trained.
    x, y, vx, vy = fit_data
    path = str(tmp_path / "best.weights.h5")
    for _ in range(2):
        _compiled().fit(x, y, validation_data=(vx, vy), epochs=2, batch_size=32, verbose=0,
                        callbacks=[BestCheckpoint(path, resume=True, verbose=1, save_best_only=True)])
    out = capsys.readouterr().out
    assert "val_loss improved from inf to " in out
    assert f"Resuming {tmp_path}: the run is complete (all 2 epochs trained), nothing left to train" in out
    assert "at epoch 3" not in out


class _EpochEnds(keras.callbacks.Callback):  # counts the batches trained
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


class _TruePositives(keras.metrics.Metric):  # the Keras guide's custom metric: no direction hint
    def __init__(self, name="categorical_true_positives", **kwargs):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(shape=(), initializer="zeros", name="tp")

    def update_state(self, y_true, y_pred, sample_weight=None):
        hits = keras.ops.cast(keras.ops.equal(keras.ops.cast(y_pred > 0.5, "float32"), y_true), "float32")
        self.true_positives.assign_add(keras.ops.sum(hits))

    def result(self):
        return self.true_positives.value

    def reset_state(self):
        self.true_positives.assign(0.0)


def test_an_unknown_metric_direction_fails_at_train_begin_with_the_custom_loop_message(tmp_path, fit_data):
    # issue 25: "Cannot infer whether ... minimised or maximised" came after the first epoch.
    x, y, vx, vy = fit_data
    model = _compiled(metrics=[_TruePositives()])
    ends = _EpochEnds()
    cb = BestCheckpoint(str(tmp_path / "fit" / "b.weights.h5"), monitor="val_categorical_true_positives")
    with pytest.raises(ValueError) as fit_error:
        model.fit(x, y, validation_data=(vx, vy), epochs=2, batch_size=32, verbose=0, callbacks=[cb, ends])
    assert ends.count == 0
    tracker = BestWeightsTracker(_compiled(), str(tmp_path / "loop" / "b.weights.h5"),
                                 monitor="val_categorical_true_positives")
    with pytest.raises(ValueError) as loop_error:
        tracker.update(0, {"val_categorical_true_positives": _TruePositives()})
    assert str(fit_error.value) == str(loop_error.value)
    assert "Cannot infer whether `val_categorical_true_positives` should be minimised or maximised" in str(
        fit_error.value)
    # A compiled metric with a direction still resolves "auto" at train begin.
    ok = BestCheckpoint(str(tmp_path / "auc" / "b.weights.h5"), monitor="val_my_auc")
    _compiled(metrics=[keras.metrics.AUC(name="my_auc")]).fit(x, y, validation_data=(vx, vy), epochs=1,
                                                              batch_size=32, verbose=0, callbacks=[ok])
    assert ok.tracker.mode == "max"


class _NoCall(keras.Model):  # as the Keras guide's GAN: its weights in sub-models, no call(), never built
    def __init__(self):
        super().__init__()
        self.inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])

    def train_step(self, data):
        return {"loss": 0.5}

    def test_step(self, data):
        return {"loss": 0.4}


@pytest.mark.skipif(BACKEND != "tensorflow", reason="on JAX and torch, Keras's fit() itself refuses it at once")
def test_a_model_with_its_weights_but_not_built_fails_at_train_begin(tmp_path, fit_data):
    x, y, vx, vy = fit_data
    model, ends = _NoCall(), _EpochEnds()
    model.compile()
    assert model.weights and not model.built
    cb = BestCheckpoint(str(tmp_path / "b.weights.h5"))
    with pytest.raises(ValueError, match=r"_NoCall has its weights but is not built .*`self\.built = True`"):
        model.fit(x, y, validation_data=(vx, vy), epochs=2, batch_size=32, verbose=0, callbacks=[cb, ends])
    assert ends.count == 0
    model.built = True  # the fix the message names
    model.fit(x, y, validation_data=(vx, vy), epochs=1, batch_size=32, verbose=0,
              callbacks=[BestCheckpoint(str(tmp_path / "b.weights.h5"))])
    assert _files(tmp_path) == ["b.weights.h5"]
