"""MLflow tracking, registry and the promotion gate on a local SQLite store (no server)."""

from __future__ import annotations

import json

import pytest

from puma import tracking
from puma.config import load_settings

COLUMNS = ["visualnews_task0", "mscoco_task0", "webqa_task1"]


def _metrics(avg: float, status: str = "complete", drop: str | None = None) -> dict:
    table = {c: avg for c in COLUMNS if c != drop}
    table["avg"] = avg
    return {"status": status, "local": dict(table), "global": dict(table)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A repo-like folder: params.yaml pointing at a fresh SQLite store, a model, a dvc.lock, logs."""
    root = tmp_path_factory.mktemp("repo")
    (root / "params.yaml").write_text(
        "tracking:\n  uri: sqlite:///mlruns.db\n  artifact_location: mlartifacts\n  experiment: t\n"
        "model:\n  prune_layers: 3\nmac:\n  lambda: 0.5\n"
    )
    model = root / "artifacts" / "stage2" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (root / "artifacts" / "stage2" / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1), "lr": 0.1, "samples_per_s": 10.0 + s}) + "\n"
                for s in range(5))
    )
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n"
        "  stage2:\n    cmd: puma train stage2\n"
        "    deps:\n    - path: data/mbeir\n      md5: 0123abcd.dir\n"
        "    params:\n      params.yaml:\n        mac.lambda: 0.5\n        stage2.lr: 0.002\n"
        "    outs:\n    - path: artifacts/stage2\n      md5: abc.dir\n"
        "  evaluate:\n    cmd: puma evaluate\n    deps:\n    - path: data/mbeir\n      md5: 0123abcd.dir\n    outs:\n    - path: reports/metrics.json\n      md5: def\n"
    )
    (root / "reports").mkdir()
    return root


def _register(store, monkeypatch, name, metrics, promote=True):
    monkeypatch.chdir(store)
    monkeypatch.setenv("PUMA_TRACKING__MODEL_NAME", name)
    settings = load_settings(store / "params.yaml")
    (store / "reports" / "metrics.json").write_text(json.dumps(metrics))
    check = tracking.check_evaluation(metrics, ["local", "global"], COLUMNS)
    run = tracking.log_pipeline(settings, store, metrics_path=store / "reports" / "metrics.json")
    version = tracking.register_model(settings, run.run_id, store / "artifacts" / "stage2" / "model", check, store)
    decision = tracking.promote(settings, version, store) if promote else None
    return settings, run, version, decision


def test_check_evaluation_names_what_is_missing():
    ok = tracking.check_evaluation(_metrics(50.0), ["local", "global"], COLUMNS)
    assert ok.complete and ok.scores["global.avg"] == 50.0 and len(ok.scores) == 8
    partial = tracking.check_evaluation(_metrics(50.0, drop="mscoco_task0"), ["local", "global"], COLUMNS)
    assert not partial.complete and "local.mscoco_task0" in partial.reason
    failed = tracking.check_evaluation(_metrics(50.0, status="failed"), ["local", "global"], COLUMNS)
    assert not failed.complete and "failed" in failed.reason
    nan = _metrics(50.0)
    nan["global"]["avg"] = float("nan")
    assert not tracking.check_evaluation(nan, ["local", "global"], COLUMNS).complete
    assert not tracking.check_evaluation({"local": _metrics(1.0)["local"]}, ["local", "global"], COLUMNS).complete


def test_parent_and_nested_runs(store, monkeypatch):
    import mlflow
    import torch

    settings, run, version, _ = _register(store, monkeypatch, "runs-model", _metrics(40.0))
    client = mlflow.MlflowClient(run.tracking_uri)
    parent = client.get_run(run.run_id)
    assert parent.data.params["mac.lambda"] == "0.5" and parent.data.params["model.prune_layers"] == "3"
    assert parent.data.metrics["global.avg"] == 40.0 and parent.data.tags["git.commit"]
    assert parent.data.tags["numerics.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(run.stage_runs) == {"stage2", "evaluate"}
    child = client.get_run(run.stage_runs["stage2"])
    assert child.data.tags["mlflow.parentRunId"] == run.run_id
    assert child.data.params == {"mac.lambda": "0.5", "stage2.lr": "0.002"}
    history = client.get_metric_history(child.info.run_id, "loss")
    assert [m.step for m in history] == list(range(5)) and history[-1].value == pytest.approx(0.2)
    arts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"params.yaml", "dvc.lock", "metrics.json", "git_commit.txt"} <= arts  # the model: a LoggedModel
    mv = client.get_model_version_by_alias("runs-model", "challenger")
    assert str(mv.version) == version and mv.tags["k"] == "3" and mv.tags["lambda"] == "0.5"
    # MLflow 3: the model is a LoggedModel of the parent run, the scores are its metrics (not tags).
    model_id = tracking.version_model_id(mv)
    assert model_id and not any(t.startswith("score.") for t in mv.tags) and len(mv.tags) <= 10
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run.run_id
    model_metrics = {m.key: m.value for m in logged.metrics}
    assert model_metrics["global.avg"] == 40.0
    assert {f"{p}.{c}" for p in ("local", "global") for c in [*COLUMNS, "avg"]} <= set(model_metrics)
    assert client.get_experiment(run.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # Data as dataset inputs (digest from dvc.lock), cost next to recall on the run.
    inputs = {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in parent.inputs.dataset_inputs}
    assert inputs == {("synth:data/mbeir (training)", "0123abcd", "training"),
                      ("synth:data/mbeir (evaluation)", "0123abcd", "evaluation")}
    after = client.get_run(run.run_id).data.metrics
    assert after["stage2.samples_per_s"] == pytest.approx(12.0) and after["flops.per_sample"] > 0
    local = tracking.download_model(settings, root=store)  # champion: the first complete version
    assert json.loads((local / "config.json").read_text())["model_type"] == "qwen2_vl"


def test_pipeline_wall_time_is_a_run_metric_when_the_start_is_known(store, monkeypatch):
    import time

    import mlflow

    from puma.tracking.cost import START_ENV

    start = time.time() - 12.5
    monkeypatch.setenv(START_ENV, f"{start:.3f}")  # as the flow and `make run` set it
    _, run, _, _ = _register(store, monkeypatch, "wall-model", _metrics(40.0), promote=False)
    parent = mlflow.MlflowClient(run.tracking_uri).get_run(run.run_id)
    assert 12.5 <= parent.data.metrics["pipeline.wall_s"] < 12.5 + 120
    assert parent.info.start_time == int(float(f"{start:.3f}") * 1000)  # the UI's Duration: the wall time
    monkeypatch.delenv(START_ENV)
    _, run, _, _ = _register(store, monkeypatch, "wall-model", _metrics(40.0), promote=False)
    assert "pipeline.wall_s" not in mlflow.MlflowClient(run.tracking_uri).get_run(run.run_id).data.metrics


def test_gate_does_not_promote_a_worse_challenger(store, monkeypatch):
    _, _, v1, d1 = _register(store, monkeypatch, "gate-model", _metrics(50.0))
    assert d1.promoted and "no champion" in d1.reason
    _, _, v2, d2 = _register(store, monkeypatch, "gate-model", _metrics(49.5))
    assert not d2.promoted and d2.champion_after == v1 and "49.50 < champion" in d2.reason
    settings, _, v3, d3 = _register(store, monkeypatch, "gate-model", _metrics(50.0))  # a tie promotes
    assert d3.promoted and d3.champion_before == v1 and d3.champion_after == v3
    rows = {r["version"]: r for r in tracking.model_versions(settings, store)}
    assert set(rows[v3]["aliases"]) == {"champion", "challenger"} and rows[v1]["aliases"] == []
    assert rows[v2]["promotion"].startswith("not promoted")


def test_gate_never_promotes_partial_or_failed_evaluation(store, monkeypatch):
    _, _, v1, _ = _register(store, monkeypatch, "partial-model", _metrics(10.0))
    _, _, _, d2 = _register(store, monkeypatch, "partial-model", _metrics(90.0, drop="webqa_task1"))
    assert not d2.promoted and d2.champion_after == v1 and "partial" in d2.reason
    _, _, _, d3 = _register(store, monkeypatch, "partial-model", _metrics(90.0, status="failed"))
    assert not d3.promoted and d3.champion_after == v1
    # Even with no champion at all, an incomplete evaluation is not promoted.
    _, _, _, d4 = _register(store, monkeypatch, "partial-only", _metrics(90.0, status="partial"))
    assert not d4.promoted and d4.champion_after is None


def test_gate_refuses_scores_on_different_data(store, monkeypatch):
    _register(store, monkeypatch, "data-model", _metrics(10.0))
    monkeypatch.setenv("PUMA_DATA__SOURCE", "hub")
    _, _, _, d = _register(store, monkeypatch, "data-model", _metrics(90.0))
    assert not d.promoted and "not comparable" in d.reason


def test_bad_metrics_file_names_it(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text('{"local": \n  oops}')
    with pytest.raises(tracking.TrackingError, match=r"metrics.json:2: not valid JSON"):
        tracking.read_metrics(bad)
    with pytest.raises(tracking.TrackingError, match="not found"):
        tracking.read_metrics(tmp_path / "missing.json")


def test_default_columns_are_the_16_of_table1():
    from puma.data.columns import TABLE1_COLUMNS

    names = [c.name for c in TABLE1_COLUMNS]
    full = {"local": {**dict.fromkeys(names, 1.0), "avg": 1.0}, "global": {**dict.fromkeys(names, 2.0), "avg": 2.0}}
    ok = tracking.check_evaluation(full, ["local", "global"])
    assert ok.complete and len(ok.scores) == 2 * 17
    del full["global"][names[-1]]  # e.g. `puma evaluate --column ...` on a subset
    bad = tracking.check_evaluation(full, ["local", "global"])
    assert not bad.complete and f"global.{names[-1]}" in bad.reason


def test_champion_loads_as_a_working_retriever(tmp_path, monkeypatch, tiny_dir):
    """models:/puma-retriever@champion -> PumaRetriever that embeds queries and documents."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("tracking:\n  uri: sqlite:///mlruns.db\n")
    settings = load_settings(tmp_path / "params.yaml")
    metrics = _metrics(30.0)
    check = tracking.check_evaluation(metrics, ["local", "global"], COLUMNS)
    run = tracking.log_pipeline(settings, tmp_path)
    version = tracking.register_model(settings, run.run_id, tiny_dir, check, tmp_path)
    assert tracking.promote(settings, version, tmp_path).promoted
    retriever = tracking.load_retriever(settings, root=tmp_path)
    q = retriever.encode_query([{"text": "a red car", "instruction": "Find a caption."}])
    d = retriever.encode_document(["a red car", "a blue boat"])
    assert q.shape == (1, 64) and d.shape == (2, 64)
    assert abs(float((q**2).sum()) - 1.0) < 1e-4  # normalised


def test_registry_cli_register_show_promote(store, monkeypatch):
    from typer.testing import CliRunner

    from puma.cli import app

    monkeypatch.chdir(store)
    monkeypatch.setenv("PUMA_TRACKING__MODEL_NAME", "cli-model")
    from puma.data.columns import TABLE1_COLUMNS

    names = [c.name for c in TABLE1_COLUMNS]
    full = {p: {**dict.fromkeys(names, 20.0), "avg": 20.0} for p in ("local", "global")}
    (store / "reports" / "metrics.json").write_text(json.dumps(full))
    runner = CliRunner()
    args = ["registry", "register", "--model", "artifacts/stage2/model", "--metrics", "reports/metrics.json",
            "--out", "reports/registry.json", "--params", "params.yaml"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((store / "reports" / "registry.json").read_text())
    assert summary["promotion"]["promoted"] and summary["global.avg"] == 20.0
    del full["local"][names[0]]  # partial evaluation: registered, tagged, never promoted
    (store / "reports" / "metrics.json").write_text(json.dumps(full))
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "not promoted: evaluation failed or partial" in res.output
    shown = runner.invoke(app, ["registry", "show", "--params", "params.yaml"])
    assert "v2" in shown.output and "v1" in shown.output and "champion" in shown.output
    again = runner.invoke(app, ["registry", "promote", "--version", "2", "--params", "params.yaml"])
    assert again.exit_code == 0 and "not promoted" in again.output
    bad = runner.invoke(app, [*args[:4], "--metrics", "missing.json", *args[6:]])
    assert bad.exit_code == 1 and "missing.json: metrics file not found" in bad.output
