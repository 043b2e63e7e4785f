"""The cut-down rehearsal (slow): the whole DVC pipeline on the random Qwen2-VL-2B at its real dimensions.

``bench/rehearsal.py --cut quick``: profile ``rehearsal-2b`` (k 12, bf16, LoRA r 128, the paper's image
budget) with one training step per stage, 8 NLI rows and MBEIR-mini at scale 0.05, in a separate
workspace. About 10-15 minutes on 2 busy cores, ~15 GB of disk, ~7 GB of RAM at its peak (prune).
The full rehearsal is ``make rehearsal``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["random-2b", "tiny", "mbeir", "nli", "prune", "teacher_cache", "stage1", "stage2", "embed", "evaluate",
          "report", "register"]


@pytest.mark.slow
def test_quick_rehearsal_runs_every_stage_at_2b_dims(tmp_path):
    src_params = (REPO / "params.yaml").read_bytes()
    report = tmp_path / "rehearsal"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rehearsal.py"), "--cut", "quick",
                           "--work", str(tmp_path / "ws"), "--report", str(report)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (REPO / "params.yaml").read_bytes() == src_params  # this checkout is untouched
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["ok"] and [r["stage"] for r in result["stages"]] == STAGES
    rows = {r["stage"]: r for r in result["stages"]}
    ws = Path(result["workspace"])
    # The real dimensions: the random base and the pruned model.
    base = json.loads((ws / "artifacts/random-2b/config.json").read_text())
    pruned = json.loads((ws / "artifacts/pruned/config.json").read_text())
    text = pruned.get("text_config", pruned)
    assert text["num_hidden_layers"] == 12 and text["hidden_size"] == 1536
    assert base.get("text_config", base)["num_hidden_layers"] == 28
    assert (ws / "artifacts/tiny/NOT_BUILT.json").is_file() and rows["tiny"]["wall_s"] < 60
    # bf16 weights of the pruned 2B: 1.46B params x 2 bytes.
    assert 2.7e9 < rows["prune"]["outs_bytes"] < 3.3e9
    # Hard-linked DVC cache: a multi-GB out is on disk once, not once in the workspace and again in the cache.
    for stage in ("prune", "stage1", "stage2"):
        assert rows[stage]["disk_written"]["workspace_total"] < 1.15 * rows[stage]["outs_bytes"], stage
    # MLflow stores the merged model once, at register, and no stage before it stores any.
    assert all(rows[s]["disk_written"]["mlflow_artifacts"] < 1e6 for s in STAGES[:-1])
    assert 0.9 * rows["stage2"]["outs_bytes"] < rows["register"]["disk_written"]["mlflow_artifacts"] \
        < 1.15 * rows["stage2"]["outs_bytes"]
    # The teacher cache stage holds the full-depth teacher (4.4 GB bf16); stage 1 with the cache holds
    # only the pruned student (2.9 GB), never both.
    assert rows["teacher_cache"]["peak_rss_mb"] > 4000
    assert rows["stage1"]["peak_rss_mb"] < rows["teacher_cache"]["peak_rss_mb"] + 1500
    metrics = json.loads((ws / "artifacts/eval/metrics.json").read_text())
    assert set(metrics) >= {"local", "global"}
    assert json.loads((ws / "reports/registry.json").read_text())
