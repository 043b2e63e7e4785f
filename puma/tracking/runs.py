"""One pipeline run as MLflow runs: a parent run plus one nested run per DVC stage, logged after the fact.

The parent holds all of ``params.yaml`` flattened, the evaluation scores and ``metrics.json`` / report /
``params.yaml`` / ``dvc.lock`` / the git commit as artifacts; each nested run is built from ``dvc.lock``
(the params that stage read, its command, the hashes of its deps and outs) and from the logs the stage
wrote (``*.jsonl`` rows with a ``step`` become per-step metrics, a ``metrics.json`` final metrics).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puma.config import Settings
from puma.numerics import numerics_tags
from puma.tracking.checks import flat_numbers, read_metrics, step_rows
from puma.tracking.cost import pipeline_start, stage_cost, wall_seconds
from puma.tracking.lineage import git_commit, read_lock
from puma.tracking.store import PARENT_ENV, connect, log_metrics, log_params, log_steps, resolve_uri


def _stage_logs(root: Path, outs: list[dict[str, Any]]) -> tuple[list[Path], list[Path]]:
    """Training/eval logs among a stage's outs: (*.jsonl step logs, metrics.json files), top level only."""
    jsonl, metric_files = [], []
    for out in outs:
        path = root / out["path"]
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and f.suffix == ".jsonl":
                jsonl.append(f)
            elif f.is_file() and f.name.endswith("metrics.json"):
                metric_files.append(f)
    return jsonl, metric_files


def data_inputs(settings: Settings, lock: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The data the pipeline read, from ``dvc.lock``: (path, DVC md5, context) per (path, context).

    Context is ``evaluation`` for the ``evaluate`` stage and ``training`` for any other stage that reads
    ``data.root`` or ``data.nli_path``; the digest is the hash DVC recorded for that dependency. The
    context is part of the dataset name, since MLflow keeps one input per (name, digest) on a run.
    """
    paths = {Path(settings.data.root).as_posix(), Path(settings.data.nli_path).as_posix()}
    seen: dict[tuple[str, str], str] = {}
    for name, stage in lock.items():
        context = "evaluation" if name == "evaluate" else "training"
        for dep in stage.get("deps") or []:
            path = Path(str(dep.get("path", ""))).as_posix()
            if path in paths and dep.get("md5"):
                seen.setdefault((path, context), str(dep["md5"]).removesuffix(".dir"))
    return [(path, md5, context) for (path, context), md5 in seen.items()]


def log_datasets(client, run_id: str, settings: Settings, root: Path, lock: dict[str, dict[str, Any]]) -> None:
    """Log the training and evaluation data as MLflow dataset inputs (name, source, digest) of the run."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for path, md5, context in data_inputs(settings, lock):
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all are the local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source((root / path).resolve().as_uri())
        ds = MetaDataset(source=source, name=f"{settings.data.source}:{path} ({context})", digest=md5[:36])
        inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


@dataclass
class PipelineRun:
    """What :func:`log_pipeline` recorded."""

    run_id: str
    experiment_id: str
    stage_runs: dict[str, str]
    tracking_uri: str


def log_pipeline(
    settings: Settings,
    root: str | os.PathLike = ".",
    metrics_path: str | os.PathLike | None = None,
    artifacts: list[str | os.PathLike] = (),
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> PipelineRun:
    """Log one pipeline run: a parent run + one nested run per stage in ``dvc.lock``.

    ``parent_run_id`` (or ``$PUMA_MLFLOW_PARENT_RUN_ID``) reuses a run a caller opened; otherwise a new
    parent is created. Returns the ids; the parent is left FINISHED unless it was the caller's.
    """
    root = Path(root).resolve()
    _, client, exp_id = connect(settings, root)
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    sha, dirty = git_commit(root)
    own = parent_run_id is None
    if own:  # started when the pipeline did, if the caller said when: the UI's Duration is its wall time
        start = pipeline_start()
        parent = client.create_run(exp_id, start_time=None if start is None else int(start * 1000),
                                   run_name=run_name or f"pipeline-{sha[:8]}", tags={"puma.kind": "pipeline"})
        parent_run_id = parent.info.run_id
    client.set_tag(parent_run_id, "git.commit", sha)
    client.set_tag(parent_run_id, "git.dirty", str(dirty).lower())
    for key, value in numerics_tags().items():  # the same commit gives other numbers on another CPU
        client.set_tag(parent_run_id, key, value)
    log_params(client, parent_run_id, settings.flat())

    stage_runs: dict[str, str] = {}
    cost: dict[str, float] = {}
    lock = read_lock(root)
    log_datasets(client, parent_run_id, settings, root, lock)
    for name, stage in lock.items():
        child = client.create_run(exp_id, run_name=name, tags={
            "mlflow.parentRunId": parent_run_id, "puma.kind": "stage", "puma.stage": name,
            "dvc.cmd": str(stage.get("cmd", ""))[:5000], "git.commit": sha})
        cid = child.info.run_id
        stage_runs[name] = cid
        params = {k: v for f in (stage.get("params") or {}).values() for k, v in f.items()}
        if params:
            log_params(client, cid, params)
        for dep in stage.get("deps") or []:
            client.set_tag(cid, f"dep.{dep['path']}", dep.get("md5", ""))
        for out in stage.get("outs") or []:
            client.set_tag(cid, f"out.{out['path']}", out.get("md5", ""))
        jsonl, metric_files = _stage_logs(root, stage.get("outs") or [])
        rows: list[dict[str, float]] = []
        for f in jsonl:
            rows += (r := step_rows(f))
            log_steps(client, cid, r, prefix="" if len(jsonl) == 1 else f"{f.stem}.")
        stage_metrics: dict[str, float] = {}
        for f in metric_files:
            stage_metrics.update(m := flat_numbers(read_metrics(f)))
            log_metrics(client, cid, m)
        cost.update(stage_cost(name, rows, stage_metrics))
        client.set_terminated(cid, "FINISHED")

    if metrics_path is not None:
        scores = flat_numbers(read_metrics(metrics_path))
        log_metrics(client, parent_run_id, scores)
    wall = wall_seconds()
    if wall is not None:
        cost["pipeline.wall_s"] = wall
    if cost:
        log_metrics(client, parent_run_id, cost)
    extra = [Path(metrics_path)] if metrics_path is not None else []
    for item in [root / "params.yaml", root / "dvc.lock", *extra, *(Path(a) for a in artifacts)]:
        item = item if item.is_absolute() else root / item
        if item.is_dir():
            client.log_artifacts(parent_run_id, str(item), artifact_path=item.name)
        elif item.exists():
            client.log_artifact(parent_run_id, str(item))
    client.log_text(parent_run_id, f"{sha}{' (dirty)' if dirty else ''}\n", "git_commit.txt")
    if own:
        client.set_terminated(parent_run_id, "FINISHED")
    return PipelineRun(parent_run_id, exp_id, stage_runs, resolve_uri(settings.tracking.uri, root))
