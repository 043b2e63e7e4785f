"""The cut-down rehearsal (slow): the whole DVC pipeline on the random Qwen2-VL-2B at its real dimensions.

``bench/rehearsal.py --cut quick``: profile ``rehearsal-2b`` (k 12, bf16, LoRA r 128, the paper's image
budget, fp32 compute on CPU) with one training step per stage, 8 NLI rows and MBEIR-mini at scale 0.05, in
a separate workspace. About 40 minutes on 2 cores (the embed stage's ~110 items dominate), ~25 GB of disk,
~10 GB of RAM at its peak (the full-depth fp32 teacher).
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
STAGES = ["random-2b", "tiny", "mbeir", "nli", "pretrain", "prune", "teacher_cache", "stage1", "stage2", "embed", "evaluate",
          "report", "register"]


@pytest.mark.slow
def test_quick_rehearsal_runs_every_stage_at_2b_dims(tmp_path):
    src_params = (REPO / "params.yaml").read_bytes()
    report = tmp_path / "rehearsal"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rehearsal.py"), "--cut", "quick",
                           "--work", str(tmp_path / "ws"), "--report", str(report)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=3600, check=False)
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
    # No tiny model, so nothing to pretrain: the random 2B is the base as it is.
    assert [p.name for p in (ws / "artifacts/pretrained").iterdir()] == ["NOT_BUILT.json"]
    from puma.config import load_settings

    nbytes = {"float32": 4, "bfloat16": 2}[load_settings(ws / "params.yaml").model.dtype]
    full, pruned_b = 2_208_985_600 * nbytes, 1_460_220_416 * nbytes  # weights of the 2B, full and at k 12
    assert 0.95 * pruned_b < rows["prune"]["outs_bytes"] < 1.05 * pruned_b
    # Hard-linked DVC cache: a multi-GB out is on disk once, not once in the workspace and again in the cache.
    for stage in ("prune", "stage1", "stage2"):
        assert rows[stage]["disk_written"]["workspace_total"] < 1.15 * rows[stage]["outs_bytes"], stage
    # MLflow stores the merged model once, at register, and no stage before it stores any.
    assert all(rows[s]["disk_written"]["mlflow_artifacts"] < 1e6 for s in STAGES[:-1])
    assert 0.9 * rows["stage2"]["outs_bytes"] < rows["register"]["disk_written"]["mlflow_artifacts"] \
        < 1.15 * rows["stage2"]["outs_bytes"]
    # The teacher-cache stage holds the full-depth teacher; stage 1 reads the cache and holds only the
    # pruned student (+ LoRA, AdamW, activations), never both models.
    mb = 2**20
    assert rows["teacher_cache"]["peak_rss_mb"] > 0.9 * full / mb
    assert 0.9 * pruned_b / mb < rows["stage1"]["peak_rss_mb"] < (full + pruned_b) / mb - 1000
    metrics = json.loads((ws / "artifacts/eval/metrics.json").read_text())
    assert set(metrics) >= {"local", "global"}
    assert json.loads((ws / "reports/registry.json").read_text())
