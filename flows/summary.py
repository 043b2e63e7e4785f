"""What a finished pipeline run produced, and where: ``python -m flows.summary`` (the end of ``make run``).

Nothing here restates a path: the output folders are the outs ``dvc.yaml`` declares for the
``evaluate``, ``report`` and ``register`` stages (read through DVC), inside which ``puma evaluate``
writes ``metrics.json`` and ``puma report`` writes ``report.md``; the MLflow store and run come from
``registry.json``, which the ``register`` stage writes from ``params.yaml: tracking`` (resolved by
:mod:`puma.tracking`). The headline scores are the summary keys :data:`puma.metrics.SUMMARY_KEYS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from puma.metrics import SUMMARY_KEYS

REPO = Path(__file__).resolve().parent.parent


def pipeline_outputs(root: Path = REPO) -> dict[str, Path]:
    """``metrics`` / ``report`` / ``registry`` -> the file the pipeline of ``root/dvc.yaml`` writes there (if it has that stage)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = {s.name: [Path(o.def_path) for o in s.outs] for s in repo.index.stages if getattr(s, "name", None)}
    # A pipeline without some of these stages (a toy dvc.yaml, a partial one) simply has fewer outputs.
    files = {"metrics": ("evaluate", "metrics.json"), "report": ("report", "report.md"), "registry": ("register", None)}
    return {key: root / outs[stage][0] / name if name else root / outs[stage][0]
            for key, (stage, name) in files.items() if outs.get(stage)}


def pipeline_summary(root: Path = REPO) -> dict[str, Any]:
    """Paths of the metrics, report and registry entry (whatever exists), headline scores, gate decision."""
    paths = pipeline_outputs(root)
    out: dict[str, Any] = {key: str(path) for key, path in paths.items() if path.exists()}
    if "metrics" in out:
        metrics = json.loads(paths["metrics"].read_text())
        out["scores"] = {pool: {k: table.get(k) for k in SUMMARY_KEYS}
                         for pool, table in metrics.items() if isinstance(table, dict)}
    if "registry" in out:
        reg = json.loads(paths["registry"].read_text())
        out["mlflow"] = {"tracking_uri": reg.get("tracking_uri"), "parent_run_id": reg.get("parent_run_id"),
                         "model": f"{reg.get('model_name')} v{reg.get('version')}",
                         "promotion": (reg.get("promotion") or {}).get("reason")}
    return out


def format_summary(s: dict[str, Any]) -> str:
    lines = ["", "PUMA pipeline finished."]
    for pool, row in (s.get("scores") or {}).items():
        cells = "  ".join(f"{k} {v:.2f}" for k, v in row.items() if v is not None)
        lines.append(f"  {pool:<7} Recall@k (%): {cells}")
    if "metrics" in s:
        lines.append(f"  metrics   {s['metrics']}   (dvc metrics show / dvc metrics diff)")
    if "report" in s:
        lines.append(f"  report    {s['report']}   (plots: dvc plots show)")
    ml = s.get("mlflow")
    if ml:
        lines.append(f"  MLflow    run {ml['parent_run_id']} in {ml['tracking_uri']}   (make mlflow-ui)")
        lines.append(f"  registry  {ml['model']}: {ml['promotion']}")
    if len(lines) == 2:
        lines.append("  no results yet (run `dvc repro`)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_summary(pipeline_summary()))
