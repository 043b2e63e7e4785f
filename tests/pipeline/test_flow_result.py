"""The flow run's Prefect artifact: its markdown, built from the pipeline's files without any server."""

from __future__ import annotations

import json

import pytest
import yaml

from flows.result import mlflow_ui_links, result_markdown
from flows.summary import REPO, pipeline_outputs
from puma.data.columns import TABLE1_COLUMNS

# The pipeline's real output layout (from dvc.yaml), relocated under each test's tmp_path.
OUTPUTS = {k: p.relative_to(REPO) for k, p in pipeline_outputs(REPO).items()}
METRICS, REGISTRY = OUTPUTS["metrics"], OUTPUTS["registry"]


def _write(root, metrics=None, registry=None):
    if metrics is not None:
        (root / METRICS).parent.mkdir(parents=True, exist_ok=True)
        (root / METRICS).write_text(json.dumps(metrics) if not isinstance(metrics, str) else metrics)
    if registry is not None:
        (root / REGISTRY).parent.mkdir(parents=True, exist_ok=True)
        (root / REGISTRY).write_text(json.dumps(registry))


def _metrics(local: float, glob: float) -> dict:
    def pool(base):
        t = {c.name: base + i for i, c in enumerate(TABLE1_COLUMNS)}
        t.update(single=base + 1.25, mixed=base + 2.5, multi=base + 3.75, avg=base + 0.125)
        return t
    return {"local": pool(local), "global": pool(glob)}


REG = {"tracking_uri": "http://127.0.0.1:5123", "experiment_id": "7", "parent_run_id": "abc123",
       "model_name": "puma-retriever", "version": "3", "evaluation": "complete: 2 pools x 16 columns",
       "promotion": {"version": "3", "promoted": True, "reason": "promoted: global.avg 11.70 >= champion v2 9.1",
                     "champion_before": "2", "champion_after": "3"}}


def test_markdown_has_both_pools_the_decision_and_server_links(tmp_path):
    _write(tmp_path, _metrics(20.0, 10.0), REG)
    md = result_markdown(tmp_path, outputs=OUTPUTS, stages=[{"stage": "stage2", "seconds": 12.34, "skipped": False},
                                    {"stage": "tiny", "seconds": 0.5, "skipped": True}])
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith(("| local", "| global"))}
    assert set(rows) == {"local", "global"}
    cells = [c.strip() for c in rows["global"].strip("|").split("|")][1:]
    assert len(cells) == 16 + 4 and cells[0] == "10.0" and cells[15] == "25.0" and cells[-1] == "10.1"
    assert rows["local"].split("|")[2].strip() == "20.0"
    assert "**promoted**" in md and "promoted: global.avg 11.70 >= champion v2" in md and "v2 -> v3" in md
    assert "[abc123](http://127.0.0.1:5123/#/experiments/7/runs/abc123)" in md
    assert "[puma-retriever v3](http://127.0.0.1:5123/#/models/puma-retriever/versions/3)" in md
    # the runs table, not the GenAI overview MLflow 3.17's UI opens an experiment on by default
    assert "(http://127.0.0.1:5123/#/experiments/7?workflowType=machine_learning)" in md
    assert "| stage2 | 12.3 | yes |" in md and "| tiny | 0.5 | skipped |" in md


def test_sqlite_store_says_how_to_open_the_ui_and_rejection_is_shown(tmp_path):
    reg = {**REG, "tracking_uri": "sqlite:////repo/mlruns.db",
           "promotion": {**REG["promotion"], "promoted": False, "reason": "not promoted: global.avg 1.00 < champion",
                         "champion_after": "2"}}
    _write(tmp_path, _metrics(5.0, 1.0), reg)
    md = result_markdown(tmp_path, outputs=OUTPUTS)
    assert "**not promoted**" in md and "not promoted: global.avg 1.00 < champion" in md
    assert "](http" not in md  # no link to a server that does not exist
    assert "make mlflow-ui" in md and "mlflow ui --backend-store-uri sqlite:////repo/mlruns.db" in md
    assert "#/experiments/7/runs/abc123" in md and "## Stages" not in md


def test_missing_outputs_and_disabled_tracking_are_said_not_crashed(tmp_path):
    md = result_markdown(tmp_path, outputs=OUTPUTS)
    assert f"`{METRICS}` not found" in md and f"`{REGISTRY}` not found" in md
    _write(tmp_path, {"status": "partial", "local": {"avg": 1.0}}, {"tracking": "disabled"})
    md = result_markdown(tmp_path, outputs=OUTPUTS)
    assert "**partial**" in md and "Tracking disabled" in md and "| global" not in md


def test_bad_files_name_file_and_line(tmp_path):
    _write(tmp_path, "{\n  oops")
    with pytest.raises(Exception, match=r"metrics.json:2"):
        result_markdown(tmp_path, outputs=OUTPUTS)
    (tmp_path / METRICS).unlink()
    (tmp_path / REGISTRY).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / REGISTRY).write_text("[1,\n2,\n")
    with pytest.raises(ValueError, match=r"registry.json:3"):
        result_markdown(tmp_path, outputs=OUTPUTS)


def test_links_only_for_http_servers():
    assert mlflow_ui_links("sqlite:///x.db", "1", "r", "m", "1") == {}
    assert mlflow_ui_links("file:///tmp/mlruns", "1", "r", "m", "1") == {}
    links = mlflow_ui_links("https://mlflow.example/", "1", "r", "my model", "2")
    assert links == {"experiment": "https://mlflow.example/#/experiments/1?workflowType=machine_learning",
                     "run": "https://mlflow.example/#/experiments/1/runs/r",
                     "model_version": "https://mlflow.example/#/models/my%20model/versions/2"}


def test_gpu_stages_exist_and_every_stack_creates_the_gpu_limit():
    from pathlib import Path

    from flows.puma_flow import GPU_STAGES, GPU_TAG

    repo = Path(__file__).resolve().parents[2]
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert GPU_STAGES <= stages and {"stage1", "stage2"} <= GPU_STAGES
    for script in ("flows/prefect_local.sh", "infra/local_stack.sh", "infra/docker-compose.yml"):
        assert f"concurrency-limit create {GPU_TAG} " in (repo / script).read_text(), script


def test_a_pipeline_without_evaluate_or_register_has_fewer_outputs(tmp_path):
    """A toy dvc.yaml (one stage, as the slow flow test's): no KeyError, the result says what is absent."""
    from dvc.repo import Repo

    from flows.result import result_markdown

    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo hi > s.txt\n    outs:\n      - s.txt\n")
    assert pipeline_outputs(tmp_path) == {}
    md = result_markdown(tmp_path)
    assert "no evaluate stage" in md and "no register stage" in md
