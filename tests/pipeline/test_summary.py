"""flows.summary finds the pipeline's outputs where dvc.yaml puts them and shows the summary keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flows.summary import format_summary, pipeline_summary
from puma.metrics import SUMMARY_KEYS

REPO = Path(__file__).resolve().parents[2]


def test_summary_reads_the_outputs_dvc_yaml_declares(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".dvc").mkdir()  # a DVC repository root (no SCM)
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    assert pipeline_summary(tmp_path) == {}
    table = {"visualnews_task0": 10.0, **{k: float(i) for i, k in enumerate(SUMMARY_KEYS)}}
    (tmp_path / "artifacts" / "eval").mkdir(parents=True)
    (tmp_path / "artifacts" / "eval" / "metrics.json").write_text(json.dumps({"local": table, "global": table}))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "registry.json").write_text(json.dumps(
        {"tracking_uri": "sqlite:////x/mlruns.db", "parent_run_id": "abc", "model_name": "m", "version": "3",
         "promotion": {"reason": "promoted: no champion yet"}}))
    s = pipeline_summary(tmp_path)
    assert s["metrics"] == str(tmp_path / "artifacts" / "eval" / "metrics.json") and "report" not in s
    assert s["scores"]["global"] == {"avg": 0.0, "single": 1.0, "mixed": 2.0, "multi": 3.0}
    assert s["mlflow"]["model"] == "m v3" and s["mlflow"]["tracking_uri"] == "sqlite:////x/mlruns.db"
    text = format_summary(s)
    assert "global  Recall@k (%): avg 0.00  single 1.00  mixed 2.00  multi 3.00" in text
    assert "registry  m v3: promoted: no champion yet" in text
