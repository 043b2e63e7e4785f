"""MLflow tracking, the model registry and the promotion gate: the only part of ``puma`` that imports mlflow.

``mlflow`` is imported inside the functions that need it, so ``import puma.tracking`` is cheap and the
rest of the library never pulls it in. One pipeline run becomes one MLflow *parent* run with one
*nested* run per DVC stage, logged after the stages ran (:mod:`.runs`), which keeps tracking out of the
training code and gives the same record whether the stages ran under ``dvc repro`` or the Prefect flow;
training can also log live, through the step loggers the CLI hands the loop (:mod:`.steps`).

Modules: :mod:`.checks` (is a ``metrics.json`` complete; log parsing; no mlflow), :mod:`.lineage`
(``dvc.lock``, git commit), :mod:`.store` (URI resolution and the one MLflow connection),
:mod:`.runs` (the pipeline run), :mod:`.registry` (register, promotion gate, download), :mod:`.pyfunc` (the
MLflow pyfunc model; imported only by the registry), :mod:`.cost` (efficiency figures; no mlflow),
:mod:`.steps` (live step logging). Everything public is re-exported here: use ``puma.tracking.X``.
"""

from __future__ import annotations

from puma.tracking.checks import EvalCheck, TrackingError, check_evaluation, read_metrics, step_rows
from puma.tracking.lineage import git_commit, read_lock
from puma.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_METRIC,
    Decision,
    decision_dict,
    download_model,
    load_retriever,
    model_versions,
    promote,
    register_model,
    version_model_id,
)
from puma.tracking.runs import PipelineRun, log_pipeline
from puma.tracking.steps import MlflowStepLogger, step_loggers
from puma.tracking.store import (
    PARENT_ENV,
    connect,
    resolve_artifact_location,
    resolve_uri,
    ui_command,
    ui_links,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "GATE_METRIC",
    "PARENT_ENV",
    "Decision",
    "EvalCheck",
    "MlflowStepLogger",
    "PipelineRun",
    "TrackingError",
    "check_evaluation",
    "connect",
    "decision_dict",
    "download_model",
    "git_commit",
    "load_retriever",
    "log_pipeline",
    "model_versions",
    "promote",
    "read_lock",
    "read_metrics",
    "register_model",
    "resolve_artifact_location",
    "resolve_uri",
    "step_loggers",
    "step_rows",
    "ui_command",
    "ui_links",
    "version_model_id",
]
