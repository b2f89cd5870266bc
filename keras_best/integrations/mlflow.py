"""MLflow: log each new best, and the best file, to the MLflow run.

`MlflowLogger` is a run logger (`loggers=` of `BestWeightsTracker` and
`BestCheckpoint`, see `keras_best.runner.loggers`):

- each new best: its metrics, prefixed (`best_val_loss`...), with `step=` its
  epoch (0-based, as in `keras_best.json`), plus `best_epoch`;
- at the end of the run, once every file is on disk: the best file (a sharded
  set: all its files; a SavedModel: its directory) as artifacts under
  `artifact_path` of the MLflow run, the tags `keras_best.best_file`,
  `keras_best.best_epoch` and `keras_best.run_directory`, and, with
  `register_as="name"`, a new version of that registered model (created when
  missing) whose source is those artifacts.

```python
import mlflow
from keras_best import BestCheckpoint
from keras_best.mlflow import MlflowLogger

with mlflow.start_run():
    model.fit(x, y, validation_data=(vx, vy), epochs=20, callbacks=[
        BestCheckpoint("runs/exp1/best.weights.h5", loggers=[MlflowLogger(register_as="classifier")]),
    ])
```

The MLflow run is the one given (`run_id=`), else the active run when the
first best is logged, else a new run that the logger starts and ends at the
end. The logger talks to the tracking server MLflow is set up for
(`MLFLOW_TRACKING_URI`, `mlflow.set_tracking_uri`), or to `tracking_uri=`.
Its calls are made in the training thread (one request per new best).
"""

from __future__ import annotations

import os
import time
from typing import Any

from keras_best.core.extras import install_hint

try:
    import mlflow  # the package (absolute import), not this module
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"keras_best.integrations.mlflow needs MLflow: {install_hint('mlflow', 'mlflow')}") from e
from keras_best.runner.loggers import BestEvent
from keras_best.storage import files


class MlflowLogger:
    """Logs a keras-best run's bests to MLflow (see the module docstring).

    Args:
        register_as: the name of a registered model (Model Registry) to add
            the best file to as a new version at the end; `None` (default):
            no registration.
        artifact_path: where the best's files go among the run's artifacts.
        prefix: put before each metric name (`"best_"`: `best_val_loss`).
        run_id: the MLflow run to log to; `None`: the active run (or a new one).
        tracking_uri: the tracking server; `None`: MLflow's current one.

    Attributes:
        run_id: the MLflow run logged to (once the first best is logged).
        model_version: the `ModelVersion` registered at the end, or `None`.
    """

    def __init__(self, register_as: str | None = None, artifact_path: str = "best", prefix: str = "best_",
                 run_id: str | None = None, tracking_uri: str | None = None) -> None:
        for name, value in (("register_as", register_as), ("run_id", run_id), ("tracking_uri", tracking_uri)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"`{name}` must be a non-empty string or None. Received: {name}={value!r}")
        if not isinstance(artifact_path, str) or not artifact_path.strip("/"):
            raise ValueError(f"`artifact_path` must be a non-empty string. Received: artifact_path={artifact_path!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"`prefix` must be a string. Received: prefix={prefix!r}")
        self.register_as, self.artifact_path, self.prefix = register_as, artifact_path.strip("/"), prefix
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.model_version: Any = None
        self._started = False  # whether the logger started the MLflow run (then it ends it)
        self._client: Any = None

    def client(self) -> Any:
        """The `MlflowClient` the logger uses (made on first use)."""
        if self._client is None:
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _run(self) -> str:
        if self.run_id is None:
            active = mlflow.active_run()
            if active is None:
                active, self._started = mlflow.start_run(), True
            self.run_id = active.info.run_id
        return self.run_id

    def on_best(self, event: BestEvent) -> None:
        """Log the new best's metrics (and `best_epoch`) with `step=` its epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {**{f"{self.prefix}{k}": float(v) for k, v in event.metrics.items()},
                  f"{self.prefix}epoch": float(event.epoch)}
        self.client().log_batch(self._run(), metrics=[Metric(k, v, now, event.epoch) for k, v in values.items()])

    def on_finish(self, event: BestEvent | None) -> None:
        """Log the best's files as artifacts, tag the run, register a version if asked."""
        try:
            if event is not None and event.files:
                self._log_best(event)
        finally:
            if self._started:
                mlflow.end_run()
                self._started = False

    def _log_best(self, event: BestEvent) -> None:
        client, run_id = self.client(), self._run()
        for path in event.files:
            with files.local_copy(path) as local:
                if os.path.isdir(local):  # a SavedModel export
                    client.log_artifacts(run_id, local, f"{self.artifact_path}/{files.basename(path)}")
                else:
                    client.log_artifact(run_id, local, self.artifact_path)
        for key, value in (("best_file", event.path), ("best_epoch", event.epoch),
                           ("run_directory", event.directory)):
            client.set_tag(run_id, f"keras_best.{key}", str(value))
        if self.register_as is not None:
            if not client.search_registered_models(filter_string=f"name = '{self.register_as}'"):
                client.create_registered_model(self.register_as)
            source = f"{client.get_run(run_id).info.artifact_uri}/{self.artifact_path}"
            self.model_version = client.create_model_version(self.register_as, source=source, run_id=run_id)


__all__ = ["MlflowLogger"]
