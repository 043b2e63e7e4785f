"""The markdown a flow run publishes as its Prefect artifact: Table-1 scores, registry decision, MLflow links.

Built here from the files the pipeline wrote (``artifacts/eval/metrics.json``, ``reports/registry.json``),
so it is testable without a Prefect or MLflow server; ``flows/puma_flow.py`` only publishes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.summary import pipeline_outputs
from puma.report import table1_markdown
from puma.tracking import read_metrics, ui_links
from puma.tracking.store import UI_WORKFLOW

ARTIFACT_KEY = "puma-result"  # Prefect keys: lowercase letters, digits and dashes


def mlflow_ui_links(tracking_uri: str, experiment_id: str | None, run_id: str | None,
                    model_name: str | None, version: str | None) -> dict[str, str]:
    """UI addresses of the experiment, the run and the model version on an ``http(s)`` tracking server;
    ``{}`` otherwise (:func:`puma.tracking.ui_links`, the one owner)."""
    return ui_links(tracking_uri, experiment_id, run_id, model_name, version)


def _registry(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise TypeError(f"{path}:1: expected a JSON object, got {type(data).__name__}")
    return data


def _mlflow_section(reg: dict[str, Any]) -> list[str]:
    uri = str(reg.get("tracking_uri") or "")
    run_id, exp_id = reg.get("parent_run_id"), reg.get("experiment_id")
    name, version = reg.get("model_name"), reg.get("version")
    links = mlflow_ui_links(uri, exp_id, run_id, name, version)
    lines = ["## MLflow", ""]
    if links:
        if "experiment" in links:
            lines.append(f"- experiment: [{exp_id}: all runs]({links['experiment']})")
        if "run" in links:
            lines.append(f"- run: [{run_id}]({links['run']})")
        if "model_version" in links:
            lines.append(f"- model: [{name} v{version}]({links['model_version']})")
    else:
        lines.append(f"- run: `{run_id}` (experiment {exp_id})")
        lines.append(f"- model: `{name}` v{version}")
        if uri.startswith("sqlite:"):
            lines += ["", (f"The store `{uri}` is a local file, not a server: open its UI with `make mlflow-ui` "
                           f"(`mlflow ui --backend-store-uri {uri}`), then on http://127.0.0.1:5000 "
                           f"`#/experiments/{exp_id}/runs/{run_id}` and `#/models/{name}/versions/{version}` "
                           f"(the runs table: `#/experiments/{exp_id}?{UI_WORKFLOW}`).")]
        else:
            lines += ["", f"Tracking URI: `{uri}`."]
    lines.append(f"- load it: `mlflow.artifacts.download_artifacts('models:/{name}/{version}')` or "
                 f"`puma.tracking.load_retriever(settings, 'models:/{name}/{version}')`")
    return lines


def result_markdown(root: str | Path, stages: list[dict[str, Any]] | None = None,
                    outputs: dict[str, Path] | None = None) -> str:
    """The artifact's markdown for the pipeline outputs under ``root`` (whatever of them exists).

    ``stages`` are the flow's per-stage results (``stage``, ``seconds``, ``skipped``), listed when given.
    ``outputs``: ``metrics`` / ``registry`` -> path relative to ``root``; by default the files the
    pipeline of ``root/dvc.yaml`` writes (:func:`flows.summary.pipeline_outputs`, the one owner).
    """
    root = Path(root)
    if outputs is None:
        outputs = {k: p.relative_to(root) for k, p in pipeline_outputs(root).items()}
    # A pipeline without an evaluate / register stage (a toy dvc.yaml) reports those sections as absent.
    METRICS, REGISTRY = outputs.get("metrics", Path("(no evaluate stage)")), outputs.get("registry", Path("(no register stage)"))
    lines = ["# PUMA pipeline result", ""]
    metrics_path = root / METRICS
    if "metrics" in outputs and metrics_path.exists():
        metrics = read_metrics(metrics_path)
        pools = {pool: metrics[pool] for pool in ("local", "global") if isinstance(metrics.get(pool), dict)}
        status = metrics.get("status", "complete")
        lines += ["## Table 1: Recall@k (%)", "", f"Evaluation status: **{status}** (`{METRICS}`)", ""]
        lines += [table1_markdown(pools) if pools else "_no local or global pool in metrics.json_", ""]
    else:
        lines += [f"_No evaluation yet: `{METRICS}` not found._", ""]

    reg = _registry(root / REGISTRY) if "registry" in outputs else None
    lines += ["## Registry decision", ""]
    if reg is None:
        lines += [f"_Nothing registered: `{REGISTRY}` not found._", ""]
    elif reg.get("tracking") == "disabled":
        lines += ["_Tracking disabled (`tracking.enabled: false`): nothing logged or registered._", ""]
    else:
        promo = reg.get("promotion") or {}
        decision = ("**promoted**" if promo.get("promoted") else "**not promoted**") if promo else "gate not run"
        lines.append(f"- `{reg.get('model_name')}` v{reg.get('version')}: {decision}")
        if promo:
            lines.append(f"- reason: {promo.get('reason')}")
            lines.append(f"- champion: v{promo.get('champion_before') or '-'} -> v{promo.get('champion_after') or '-'}")
        if reg.get("evaluation"):
            lines.append(f"- evaluation: {reg['evaluation']}")
        lines += ["", *_mlflow_section(reg), ""]

    if stages:
        lines += ["## Stages", "", "| stage | seconds | ran |", "|---|---:|---|"]
        lines += [f"| {s['stage']} | {s['seconds']:.1f} | {'skipped' if s['skipped'] else 'yes'} |" for s in stages]
        lines.append("")
    return "\n".join(lines)
