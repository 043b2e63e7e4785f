"""The MLflow store: one resolution of ``tracking.uri`` / ``tracking.artifact_location``, one connection.

Every MLflow call of the project goes through :func:`connect`, so the post-hoc pipeline log, the
registry and the live step loggers all find the same store from any working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from puma.config import Settings

PARENT_ENV = "PUMA_MLFLOW_PARENT_RUN_ID"  # set by a caller (e.g. the Prefect flow) to reuse its run
_MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
_MAX_METRICS_PER_BATCH = 1000


def resolve_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///file.db`` absolute against ``root`` (so any cwd finds one store)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((Path(root) / uri[len("sqlite:///") :]).resolve())
    return uri


def resolve_artifact_location(location: str, root: Path) -> str:
    """A relative artifact folder is relative to the repository, as a file URI; a URI is kept."""
    if "://" in location:
        return location
    return (Path(root) / location).resolve().as_uri()


def connect(settings: Settings, root: Path):
    """Import mlflow, point it at the configured store and return (mlflow, client, experiment id)."""
    import mlflow
    from mlflow import MlflowClient

    uri = resolve_uri(settings.tracking.uri, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name(settings.tracking.experiment)
    if exp is None:
        art = resolve_artifact_location(settings.tracking.artifact_location, root)
        exp_id = client.create_experiment(settings.tracking.experiment, artifact_location=art)
    else:
        exp_id = exp.experiment_id
    return mlflow, client, exp_id


def ui_command(settings: Settings, root: Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for the configured local store (``make mlflow-ui``)."""
    return ["mlflow", "ui", "--backend-store-uri", resolve_uri(settings.tracking.uri, root),
            "--default-artifact-root", resolve_artifact_location(settings.tracking.artifact_location, root),
            "--host", host, "--port", str(port)]


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])


def log_metrics(client, run_id: str, values: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    items = [Metric(k, v, now, step) for k, v in values.items()]
    for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH])


def log_steps(client, run_id: str, rows: list[dict[str, float]], prefix: str) -> int:
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    items = [Metric(f"{prefix}{k}", v, now, int(r["step"])) for r in rows for k, v in r.items() if k != "step"]
    for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH])
    return len(items)
