"""What a finished pipeline run produced, and where: ``python -m flows.summary`` (the end of ``make run``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
METRICS = "artifacts/eval/metrics.json"
REPORT = "reports/report/report.md"
REGISTRY = "reports/registry.json"


def pipeline_summary(root: Path = REPO) -> dict[str, Any]:
    """Paths of the metrics, report and registry entry (whatever exists), headline scores, gate decision."""
    out: dict[str, Any] = {}
    for key, rel in [("metrics", METRICS), ("report", REPORT), ("registry", REGISTRY)]:
        if (root / rel).exists():
            out[key] = str(root / rel)
    if "metrics" in out:
        metrics = json.loads((root / METRICS).read_text())
        out["scores"] = {pool: {k: table.get(k) for k in ("avg", "single", "mixed", "multi")}
                         for pool, table in metrics.items() if isinstance(table, dict)}
    if "registry" in out:
        reg = json.loads((root / REGISTRY).read_text())
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
