"""The MLflow store: one resolution of ``tracking.uri`` / ``tracking.artifact_location``, one connection.

Every MLflow call of the project goes through :func:`connect`, so the post-hoc pipeline log, the
registry and the live step loggers all find the same store from any working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from puma.config import Settings

PARENT_ENV = "PUMA_MLFLOW_PARENT_RUN_ID"  # set by a caller (e.g. the Prefect flow) to reuse its run
_MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
_MAX_METRICS_PER_BATCH = 1000
# The tag the MLflow 3 UI reads to open an experiment on its runs ("Machine learning") rather than on
# the GenAI traces overview (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI has a sidebar switch "GenAI | Model training" that overrides that tag: it is read from
# the address (?workflowType=...) or the browser's storage, and defaults to GenAI, so a first visit to
# #/experiments/<id> lands on the empty traces overview. Links to an experiment carry the query instead.
UI_WORKFLOW = "workflowType=machine_learning"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (which owns the artifact store) rather than a local store."""
    return uri.startswith(("http://", "https://"))


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


def experiment_artifact_location(uri: str, location: str, root: Path) -> str | None:
    """Where a new experiment keeps its artifacts: ``None`` (the server decides) for an http(s) tracking
    server unless ``location`` is a URI; otherwise :func:`resolve_artifact_location`.

    A relative folder means "next to the local store": on a server it would become a folder on the
    *client's* disk, bypassing the server's artifact store.
    """
    if is_server(uri) and "://" not in location:
        return None
    return resolve_artifact_location(location, root)


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
        art = experiment_artifact_location(uri, settings.tracking.artifact_location, root)
        from mlflow.exceptions import MlflowException

        try:
            exp_id = client.create_experiment(settings.tracking.experiment, artifact_location=art,
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as e:  # another process created it first
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
            exp_id = client.get_experiment_by_name(settings.tracking.experiment).experiment_id
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment made before the tag was set
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return mlflow, client, exp_id


def ui_links(base: str, experiment_id: str | None = None, run_id: str | None = None,
             model_name: str | None = None, version: str | None = None) -> dict[str, str]:
    """MLflow UI addresses on an ``http(s)`` server or UI at ``base``: ``experiment`` (its runs table),
    ``run``, ``model_version``, as far as the ids are given; ``{}`` when ``base`` is not a server."""
    if not is_server(base):
        return {}
    base = base.rstrip("/")
    links = {}
    if experiment_id:
        links["experiment"] = f"{base}/#/experiments/{experiment_id}?{UI_WORKFLOW}"
        if run_id:
            links["run"] = f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    if model_name and version:
        links["model_version"] = f"{base}/#/models/{quote(model_name, safe='')}/versions/{version}"
    return links


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
