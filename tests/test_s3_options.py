"""`storage_options=` (fsspec's) for s3:// run directories, against a real S3
server (tests/s3server.py) while the environment holds NO endpoint nor
credentials: the tracker, `BestCheckpoint` in `fit()`, `load_best`, the
command line's `--storage-option`, `StudyBest`. And the errors that come at
construction, before training, with the fix: no credentials, a missing
bucket, a missing package, options for a local path. Files are read back
with boto3 and Keras's stock loader."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from keras_best import BestCheckpoint, BestWeightsTracker, load_best
from keras_best.cli import commands as cli
from keras_best.core.options import Options
from keras_best.storage import files, fs
from tests.conftest import make_model, perturb, weights_equal

pytestmark = pytest.mark.backend_neutral
SECRET = "kb-secret-never-written"
VALUES = [3.0, 1.0, 2.0, 4.0]  # best at epoch 1


@pytest.fixture(autouse=True)
def no_options(monkeypatch):
    """Nothing configured: each test starts as a new process would."""
    monkeypatch.setattr(fs, "_OPTIONS", {})


@pytest.fixture
def bare_env(s3, monkeypatch):
    """No S3 endpoint nor credentials in the environment, nowhere else for
    botocore to look, no file system built before, no option configured:
    only `storage_options` can reach the server."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a file system built from the environment of other tests
    return {"endpoint_url": s3.endpoint, "key": "kb-test-key", "secret": SECRET}


def _objects(s3, url: str) -> dict[str, int]:
    return s3.objects(url[len("s3://"):].split("/", 1)[0])


def _stock_load(s3, url: str, local_dir) -> object:
    """A model with the weights of the object `url`, read by boto3 and Keras's own `load_weights`."""
    bucket, key = url[len("s3://"):].split("/", 1)
    local = os.path.join(local_dir, os.path.basename(key))
    s3.client.download_file(bucket, key, local)
    model = make_model()
    model.load_weights(local)
    return model


def _train(tracker, model) -> list:
    """`VALUES` as the validation losses of 4 epochs; returns each epoch's weights."""
    weights = []
    for epoch in tracker.epochs(len(VALUES)):
        perturb(model, epoch)
        weights.append(model.get_weights())
        tracker.update(epoch, {"val_loss": VALUES[epoch]})
    tracker.finish()
    return weights


def test_the_tracker_reaches_s3_through_its_storage_options(s3, s3_bucket, bare_env, tmp_path):
    run = f"{s3_bucket}/run"
    with pytest.raises(ValueError, match=r"No credentials for s3://.*AWS_ACCESS_KEY_ID"):
        BestWeightsTracker(make_model(), f"{run}/best.weights.h5")  # the environment alone reaches nothing
    model = make_model()
    tracker = BestWeightsTracker(model, f"{run}/best.weights.h5", storage_options=bare_env, keep_top_k=1)
    weights = _train(tracker, model)
    assert tracker.best_epoch == 1 and tracker.best_path == f"{run}/best.weights.h5"
    stored = _objects(s3, run)
    assert {"run/best.weights.h5", "run/keras_best.json"} <= set(stored)
    expected = make_model()
    expected.set_weights(weights[1])
    assert weights_equal(_stock_load(s3, tracker.best_path, tmp_path), expected)
    # The credentials are never written, nor shown.
    bucket = run[len("s3://"):].split("/", 1)[0]
    for key in stored:
        assert SECRET.encode() not in s3.client.get_object(Bucket=bucket, Key=key)["Body"].read(), key
    assert SECRET not in repr(tracker.options)


def test_best_checkpoint_in_fit_and_load_best(s3, s3_bucket, bare_env, data, tmp_path, monkeypatch):
    run = f"{s3_bucket}/fit"
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = data
    callback = BestCheckpoint(f"{run}/e{{epoch}}.weights.h5", save_best_only=True, keep_top_k=2,
                              storage_options=bare_env)
    model.fit(x, y, validation_data=(x[:16], y[:16]), epochs=3, batch_size=16, verbose=0, callbacks=[callback])
    best = callback.best_path
    assert best is not None and best.startswith(run + "/e") and best[len(s3_bucket) + 1:] in _objects(s3, run)

    monkeypatch.setattr(fs, "_OPTIONS", {})  # a new process: nothing configured
    with pytest.raises(ValueError, match=r"No credentials for s3://.*storage_options"):
        load_best(make_model(), run)
    loaded = make_model()
    record = load_best(loaded, run, storage_options=bare_env)
    assert record.path == best and record.epoch == callback.best_epoch
    assert weights_equal(loaded, _stock_load(s3, best, tmp_path))


def test_the_command_line_takes_storage_options(s3, s3_bucket, bare_env):
    run = f"{s3_bucket}/cli"
    model = make_model()
    _train(BestWeightsTracker(model, f"{run}/best.weights.h5", storage_options=bare_env, verbose=0), model)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_DEFAULT_REGION"}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_CONFIG_FILE=os.devnull, PYTHONPATH=os.getcwd())
    command = [sys.executable, "-m", "keras_best", "inspect", run, "--json"]
    flags = [f"--storage-option=endpoint_url={s3.endpoint}", "--storage-option", "key=kb-test-key",
             "--storage-option", f"secret={SECRET}"]
    out = subprocess.run(command + flags, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["best"]["epoch"] == 1 and shown["best"]["path"] == "best.weights.h5"
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and "No credentials for s3://" in out.stderr and "storage_options" in out.stderr
    for args in (["compare", run, run], ["plot", run, "-o", os.devnull], ["average", run, "-o", os.devnull]):
        assert cli._parser().parse_args(args + flags).storage_option[-1] == f"secret={SECRET}"


def test_storage_option_values():
    assert cli.storage_options(["anon=true", "config_kwargs={\"connect_timeout\": 5}", "key=\"123\"", "a=b=c"]) == {
        "anon": True, "config_kwargs": {"connect_timeout": 5}, "key": "123", "a": "b=c"}
    with pytest.raises(ValueError, match="--storage-option takes KEY=VALUE"):
        cli.storage_options(["endpoint_url"])


def test_no_credentials_is_an_error_at_construction(s3, s3_bucket, bare_env, data):
    bare = {"endpoint_url": s3.endpoint, "skip_instance_cache": True}  # the server, and no credentials
    run = f"{s3_bucket}/run"
    with pytest.raises(ValueError, match=r"No credentials for s3://.*NoCredentialsError.*storage_options=\{'key'"):
        BestWeightsTracker(make_model(), f"{run}/best.weights.h5", storage_options=bare)
    with pytest.raises(ValueError, match=r"No credentials for s3://"):
        BestCheckpoint(f"{run}/best.weights.h5", storage_options=bare)  # before fit()
    assert _objects(s3, run) == {}


def test_a_missing_bucket_is_an_error_at_construction_and_is_not_created(s3, bare_env):
    run = "s3://kb-no-such-bucket/run"
    for make in (lambda: BestWeightsTracker(make_model(), f"{run}/best.weights.h5", storage_options=bare_env),
                 lambda: BestCheckpoint(f"{run}/best.weights.h5", storage_options=bare_env),
                 lambda: load_best(make_model(), run, storage_options=bare_env)):
        with pytest.raises(ValueError, match=r"The bucket 'kb-no-such-bucket' of s3://kb-no-such-bucket/run does not "
                                             r"exist .* Create it first"):
            make()
    assert "kb-no-such-bucket" not in [b["Name"] for b in s3.client.list_buckets()["Buckets"]]


def test_the_check_at_construction_is_one_request(s3, s3_bucket, bare_env):
    import fsspec

    requests = []
    store, _ = fsspec.core.url_to_fs(s3_bucket, **bare_env)  # the instance keras-best gets (fsspec caches it)
    store.connect()
    store.s3.meta.events.register("before-send.s3", lambda request, **kwargs: requests.append(request.method))
    files.prepare_directory(f"{s3_bucket}/run", bare_env)
    assert requests == ["HEAD"]  # HeadBucket


def test_options_for_a_local_path_are_refused(tmp_path, capsys):
    options = {"endpoint_url": "http://127.0.0.1:9000"}
    with pytest.raises(ValueError, match=r"`storage_options` are for remote URLs.*Received: '.*run'"):
        BestWeightsTracker(make_model(), str(tmp_path / "run" / "best.weights.h5"), storage_options=options)
    with pytest.raises(ValueError, match=r"`storage_options` are for remote URLs"):
        load_best(make_model(), str(tmp_path), storage_options=options)
    assert cli.main(["inspect", str(tmp_path), "--storage-option", "profile=ml"]) == 1
    assert "`storage_options` are for remote URLs" in capsys.readouterr().err
    if importlib.util.find_spec("optuna") is not None:
        from keras_best.integrations.optuna import StudyBest

        with pytest.raises(ValueError, match=r"`storage_options` are for remote URLs"):
            StudyBest(str(tmp_path / "study"), storage_options=options)
    if importlib.util.find_spec("keras_tuner") is not None:
        import keras_tuner

        from keras_best.integrations.keras_tuner import SearchBest

        tuner = keras_tuner.RandomSearch(lambda hp: make_model(), objective="val_loss", max_trials=1,
                                         directory=str(tmp_path), project_name="p")
        with pytest.raises(ValueError, match=r"`storage_options` are for remote URLs"):  # before any trial
            SearchBest(storage_options=options).wrap(tuner)


def test_storage_options_are_checked_and_never_shown():
    with pytest.raises(ValueError, match=r"`storage_options` must be a dict .* Received: a str$"):
        Options(storage_options=f"secret={SECRET}")
    with pytest.raises(ValueError, match=r"its keys must be non-empty strings. Received the key 1"):
        Options(storage_options={1: SECRET})
    options = Options(storage_options={"secret": SECRET})
    assert options.storage_options == {"secret": SECRET} and SECRET not in repr(options)
    assert Options(storage_options={}).storage_options is None
    assert "storage_options" not in Options().recorded()


def test_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    registry = importlib.import_module("fsspec.registry")._registry  # (`fsspec.registry` is its mapping)
    monkeypatch.delitem(registry, "s3", raising=False)  # and not imported yet  # and not imported yet
    with pytest.raises(ValueError, match=r"install s3fs for s3:// paths: pip install s3fs"):
        BestWeightsTracker(make_model(), "s3://bucket/run/best.weights.h5")
    with pytest.raises(ValueError, match=r"`storage_options` .* there is none here: .*pip install s3fs"):
        load_best(make_model(), "s3://bucket/run", storage_options={"profile": "ml"})
    if importlib.util.find_spec("gcsfs") is None:
        with pytest.raises(ValueError, match=r"install gcsfs for gs:// paths: pip install gcsfs"):
            BestCheckpoint("gs://bucket/run/best.weights.h5", storage_options={"token": "anon"})


def test_an_unknown_scheme_is_an_error_at_construction():
    with pytest.raises(ValueError, match=r"'nosuchfs://'"):
        BestWeightsTracker(make_model(), "nosuchfs://bucket/run/best.weights.h5")
    with pytest.raises(ValueError, match=r"`storage_options` .* nosuchfs:// .* there is none here"):
        BestCheckpoint("nosuchfs://bucket/run/best.weights.h5", storage_options={"key": "k"})
