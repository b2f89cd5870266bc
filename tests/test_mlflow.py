"""keras_best.mlflow against a real `mlflow server` on 127.0.0.1 (SQLite store, local artifact root).

The server is started once for the module and stopped at its end; without
MLflow, or when the server cannot start, every test here skips saying why.
What is checked is what MLflow holds afterwards: each best's metrics at its
epoch, the best file as the run's artifact (downloaded back and loaded with
stock Keras), and the registered model version.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from keras_best import BestCheckpoint, BestWeightsTracker
from tests.conftest import make_model, perturb

mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed (pip install mlflow, or the `mlflow` extra)")
from keras_best.mlflow import MlflowLogger  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.backend_neutral]
START_TIMEOUT_S = 180  # a cold start on a busy 2-core runner (the SQLite schema is created first)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The tracking URI of a fresh `mlflow server`, stopped after the module's tests."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "w")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "art")]
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        pytest.skip(f"the MLflow server cannot start: {e}")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                tail = (root / "server.log").read_text()[-800:]
                pytest.skip(f"the MLflow server did not start on {url} (exit code {process.poll()}): {tail}")
            time.sleep(0.25)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    try:
        yield url
    finally:
        mlflow.set_tracking_uri(previous)
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _history(client, run_id, key) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_each_best_logged_at_its_epoch_and_the_best_file_registered(server, tmp_path):
    model = make_model()
    logger = MlflowLogger(register_as="kb-classifier")
    weights = {}
    with mlflow.start_run() as run:
        tracker = BestWeightsTracker(model, str(tmp_path / "e{epoch}.weights.h5"), verbose=0, loggers=[logger])
        for epoch, loss in enumerate([0.5, 0.25, 0.375, 0.125, 0.25]):
            perturb(model, epoch)
            weights[epoch] = model.get_weights()
            tracker.update(epoch, {"val_loss": loss, "val_acc": 1 - loss})
        tracker.finish()
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    assert logger.run_id == run_id
    assert _history(client, run_id, "best_val_loss") == [(0, 0.5), (1, 0.25), (3, 0.125)]
    assert _history(client, run_id, "best_val_acc") == [(0, 0.5), (1, 0.75), (3, 0.875)]
    assert _history(client, run_id, "best_epoch") == [(0, 0.0), (1, 1.0), (3, 3.0)]
    assert [a.path for a in client.list_artifacts(run_id, "best")] == ["best/e4.weights.h5"]
    tags = client.get_run(run_id).data.tags
    assert (tags["keras_best.best_file"], tags["keras_best.best_epoch"]) == ("e4.weights.h5", "3")
    # The artifact is the best file: stock Keras loads it back.
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="best/e4.weights.h5",
                                                dst_path=str(tmp_path / "down"))
    fresh = make_model(seed=9)
    fresh.load_weights(local)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), weights[3]))
    version = logger.model_version
    assert version is not None and version.run_id == run_id and version.source.endswith("/best")
    assert client.get_model_version("kb-classifier", version.version).run_id == run_id


def test_fit_sharded_set_and_a_run_the_logger_starts(server, tmp_path, data):
    x, y = data
    model = make_model()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    logger = MlflowLogger(register_as="kb-sharded", artifact_path="model/best")
    assert mlflow.active_run() is None
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[
        BestCheckpoint(str(tmp_path / "best.weights.json"), save_weights_only=True, max_shard_size=0.00000013,
                       loggers=[logger])])
    assert mlflow.active_run() is None  # the run the logger started is ended
    client = mlflow.MlflowClient()
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    names = sorted(a.path for a in client.list_artifacts(logger.run_id, "model/best"))
    assert names == sorted(f"model/best/{n}" for n in os.listdir(tmp_path) if n.startswith("best"))
    assert len(names) > 2  # shards and their index
    down = mlflow.artifacts.download_artifacts(run_id=logger.run_id, artifact_path="model/best",
                                               dst_path=str(tmp_path / "down"))
    fresh = make_model(seed=9)
    fresh.load_weights(os.path.join(down, "best.weights.json"))
    from keras_best import load_best

    again = make_model(seed=9)
    load_best(again, str(tmp_path))
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), again.get_weights()))
    assert str(logger.model_version.version) == "1"


def test_a_run_without_a_best_logs_no_file(server, tmp_path):
    model = make_model()
    logger = MlflowLogger(register_as="kb-none")
    with mlflow.start_run() as run:
        tracker = BestWeightsTracker(model, str(tmp_path / "b.weights.h5"), verbose=0, loggers=logger)
        tracker.update(0, {"val_loss": float("nan")})
        tracker.finish()
    client = mlflow.MlflowClient()
    assert client.list_artifacts(run.info.run_id) == []
    assert client.get_metric_history(run.info.run_id, "best_val_loss") == []
    assert logger.model_version is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"register_as": ""}, r"`register_as` must be a non-empty string or None"),
        ({"artifact_path": "/"}, r"`artifact_path` must be a non-empty string"),
        ({"prefix": 3}, r"`prefix` must be a string"),
    ],
)
def test_options_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MlflowLogger(**kwargs)
