"""Who writes under `tf.distribute`: the chief, and nobody else."""

from __future__ import annotations

import json
import os


def is_chief() -> bool:
    """True when this process is the one that writes the run directory.

    Reads `TF_CONFIG` (as `MultiWorkerMirroredStrategy` does), so it works
    whether or not the tracker is built inside `strategy.scope()`: the chief is
    the `chief` task, or task 0 of `worker` when the cluster has no chief.
    Without `TF_CONFIG` (one machine, `MirroredStrategy` included) it is True.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}. Received: {raw!r}") from e
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    task_type, task_id = task.get("type"), int(task.get("index", 0) or 0)
    if not task_type:
        return True
    if task_type == "chief":
        return True
    if task_type == "worker" and "chief" not in cluster:
        return task_id == 0
    return False
