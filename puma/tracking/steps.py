"""Live per-step logging from inside training, for the loggers the CLI hands the training loop.

The training loop (:func:`puma.train.loop.run_training`) never imports this module: ``puma train``
builds the loggers with :func:`step_loggers` and passes them in. A logger has ``log_params(dict)``,
``log_metrics(dict, step)`` and ``close()`` (:class:`puma.train.loop.StepLogger`). Live logging is on
when ``tracking.enabled`` and ``tracking.live`` (``PUMA_TRACKING__LIVE=0`` turns it off, as the DVC
training stages do: there the ``register`` stage logs ``train_log.jsonl`` after the stage instead).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from puma.config import Settings
from puma.tracking.store import PARENT_ENV, connect


class MlflowStepLogger:
    """One MLflow run per training stage (nested under ``$PUMA_MLFLOW_PARENT_RUN_ID`` when set)."""

    def __init__(self, settings: Settings, stage: str, root: str | os.PathLike = "."):
        mlflow, _, exp_id = connect(settings, Path(root).resolve())
        self._mlflow = mlflow
        parent = os.environ.get(PARENT_ENV)
        if parent:
            self._run = mlflow.start_run(experiment_id=exp_id, run_name=stage, nested=True, parent_run_id=parent)
        else:
            self._run = mlflow.start_run(experiment_id=exp_id, run_name=stage)

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self._mlflow.end_run()


def step_loggers(settings: Settings, root: str | os.PathLike = ".") -> list[Callable[[str, Path], MlflowStepLogger]]:
    """The live step-logger factories the settings ask for (none when tracking or live logging is off).

    Each is a :data:`puma.train.loop.StepLoggerFactory`: ``(stage name, run directory) -> logger``.
    """
    if not (settings.tracking.enabled and settings.tracking.live):
        return []

    def mlflow_step_logger(stage: str, out: Path) -> MlflowStepLogger:
        return MlflowStepLogger(settings, stage, root)

    return [mlflow_step_logger]
