"""The Prefect flow on a toy DVC project (fast) and on the real pipeline in a clone (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOY_DVC = """
stages:
  first:
    cmd: python -c "import pathlib; pathlib.Path('a.txt').write_text('a')"
    params: [model.depth]
    outs: [a.txt]
  second:
    cmd: python -c "import pathlib, time; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'b')"
    deps: [a.txt]
    params: [mac.lambda]
    outs: [b.txt]
  side:
    cmd: python -c "import os, pathlib; pathlib.Path('s.txt').write_text(os.environ.get('PUMA_PIPELINE_START', ''))"
    outs: [s.txt]
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture()
def toy_repo(tmp_path):
    """A git + DVC project with three cheap stages and the real params.yaml."""
    root = tmp_path / "toy"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(TOY_DVC)
    env = _env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.autostage", "true"],
                ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "toy"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    return root


def test_stage_order_and_targets(toy_repo):
    from flows.puma_flow import pipeline_stages

    assert pipeline_stages(toy_repo) == ["first", "second", "side"]
    assert pipeline_stages(toy_repo, ["second"]) == ["first", "second"]
    with pytest.raises(ValueError, match="no stage named nope"):
        pipeline_stages(toy_repo, ["nope"])


def test_run_streaming_streams_fails_and_times_out(tmp_path):
    from flows.puma_flow import StageFailed, run_streaming

    seen = []
    out = run_streaming([sys.executable, "-c", "print('one'); print('two')"], tmp_path, 30, seen.append)
    assert out == seen == ["one", "two"]
    with pytest.raises(StageFailed, match="exit status 3"):
        run_streaming([sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"], tmp_path, 30, seen.append)
    start = time.monotonic()
    # A child that ignores nothing and sleeps: the timeout kills the whole group promptly.
    with pytest.raises(StageFailed, match="timed out"):
        run_streaming(["bash", "-c", "sleep 60 & sleep 60"], tmp_path, 1, seen.append)
    assert time.monotonic() - start < 20


def test_launch_argv_multi_node():
    from flows.launch import launch_argv

    cmd = ["puma", "embed-all", "--out", "x"]
    tr = launch_argv(cmd, 1, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400", rdzv_id="j")
    assert tr == ["torchrun", "--nnodes=2", "--node_rank=1", "--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.1:29400",
                  "--rdzv_id=j", "--nproc_per_node=1", "-m", "puma.cli", "embed-all", "--out", "x"]
    acc = launch_argv(cmd, 4, "accelerate", nnodes=2, node_rank=0, rdzv_endpoint="h:1")
    assert {"--num_processes=8", "--num_machines=2", "--machine_rank=0", "--main_process_ip=h",
            "--main_process_port=1"} <= set(acc)
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        launch_argv(cmd, 2, nnodes=2)


def test_launch_argv():
    from flows.launch import launch_argv

    cmd = ["puma", "train", "stage1", "--out", "x"]
    assert launch_argv(cmd, 1) == cmd
    assert launch_argv(cmd, 4) == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", "puma.cli",
                                   "train", "stage1", "--out", "x"]
    acc = launch_argv(cmd, 2, "accelerate", "bf16")
    assert acc[:3] == ["accelerate", "launch", "--multi_gpu"] and "--num_processes=2" in acc
    assert "--mixed_precision=bf16" in acc and acc[-6:] == ["-m", "puma.cli", "train", "stage1", "--out", "x"]
    with pytest.raises(ValueError, match="only 'puma"):
        launch_argv(["python", "x.py"], 2)
    with pytest.raises(ValueError, match="no command"):
        launch_argv([], 1)


def test_launch_runs_the_command_with_the_configured_processes(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("runtime:\n  num_processes: 1\n")
    res = subprocess.run([sys.executable, "-m", "flows.launch", "--params", str(params), "--",
                          "puma", "config", "--params", str(params), "--flat"],
                         cwd=REPO, env=_env(), check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "runtime.num_processes=1" in res.stdout and "[launch] 1 process(es): puma config" in res.stderr
    params.write_text("runtime:\n  num_processes: 0\n")
    bad = subprocess.run([sys.executable, "-m", "flows.launch", "--params", str(params), "--", "puma", "config"],
                         cwd=REPO, env=_env(), check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "runtime.num_processes" in bad.stderr


def test_overrides_apply_like_dvc_exp_run(toy_repo):
    from flows.puma_flow import apply_overrides
    from puma.config import ConfigError, load_settings

    assert apply_overrides(toy_repo, "params.yaml", {"mac.lambda": 0.7}) == ["mac.lambda=0.7"]
    text = (toy_repo / "params.yaml").read_text()
    assert load_settings(toy_repo / "params.yaml").mac.lambda_ == 0.7 and "# decay sparsity; paper: 0.2" in text
    with pytest.raises(ConfigError, match="prune_layers"):
        apply_overrides(toy_repo, None, {"model.prune_layers": 99})


def test_start_env_is_the_callers_start_or_now(monkeypatch):
    from flows.puma_flow import start_env
    from puma.tracking.cost import START_ENV, wall_seconds

    monkeypatch.delenv(START_ENV, raising=False)
    assert start_env(now=1000.0) == {START_ENV: "1000.000"}
    monkeypatch.setenv(START_ENV, "990.5")  # `make run` set it: the flow keeps the caller's start
    assert start_env(now=1000.0) == {START_ENV: "990.5"}
    assert wall_seconds(now=1000.0) == 9.5


@pytest.mark.slow  # the Prefect engine starts a temporary server (about 25 s in all)
def test_flow_runs_stages_in_order_skips_unchanged_and_reruns_downstream(toy_repo, monkeypatch):
    from flows.puma_flow import puma
    from puma.tracking.cost import START_ENV

    monkeypatch.delenv(START_ENV, raising=False)
    before = time.time()
    first = puma(repo=str(toy_repo))
    assert [(s["stage"], s["skipped"]) for s in first["stages"]] == [("first", False), ("second", False),
                                                                       ("side", False)]
    assert (toy_repo / "b.txt").read_text() == "ab"
    # every stage saw when the pipeline run started (the register stage turns it into pipeline.wall_s)
    assert before <= float((toy_repo / "s.txt").read_text()) <= time.time()
    again = puma(repo=str(toy_repo), overrides={"mac.lambda": 0.5})
    assert [(s["stage"], s["skipped"]) for s in again["stages"]] == [("first", True), ("second", False),
                                                                       ("side", True)]


# ---------------------------------------------------------------- the real pipeline (slow)

UPSTREAM_OF_STAGE2 = {"tiny", "pretrain", "mbeir", "nli", "prune", "teacher_cache", "stage1"}
STAGE2_ONWARDS = {"stage2", "embed", "evaluate", "report", "register"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of this repository (committed state), as `git clone` gives a newcomer."""
    dst = tmp_path_factory.mktemp("clone") / "puma"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dst)], check=True)
    return dst


def _ran(summary) -> tuple[set[str], set[str]]:
    ran = {s["stage"] for s in summary["stages"] if not s["skipped"]}
    return ran, {s["stage"] for s in summary["stages"]} - ran


@pytest.mark.slow
def test_flow_end_to_end_on_the_tiny_default(clone, monkeypatch):
    """Whole pipeline through the flow; a rerun does nothing; mac.lambda re-runs stage 2 onwards only."""
    import mlflow

    from flows.puma_flow import puma
    from puma import tracking
    from puma.config import load_settings

    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    first = puma(repo=str(clone))
    ran, _ = _ran(first)
    assert ran == UPSTREAM_OF_STAGE2 | STAGE2_ONWARDS, first
    print("stage seconds:", {s["stage"]: s["seconds"] for s in first["stages"]})
    assert first["mlflow"]["promotion"].startswith("promoted")
    metrics = json.loads((clone / "artifacts/eval/metrics.json").read_text())
    assert set(metrics) == {"local", "global"} and len(metrics["global"]) == 16 + 4
    # The default pipeline must *learn* MBEIR-mini: well above chance (measured: 22.9 vs 7.6 local,
    # 11.7 vs 0.48 global; the untrained pruned model scores about 11.5 / 0.5).
    chance = json.loads((clone / "artifacts/eval/chance.json").read_text())
    assert metrics["local"]["avg"] >= 2 * chance["local"]["avg"], (metrics["local"], chance["local"])
    assert metrics["global"]["avg"] >= 5 * chance["global"]["avg"], (metrics["global"], chance["global"])

    again = puma(repo=str(clone))
    assert _ran(again)[0] == set(), again

    lam = puma(repo=str(clone), overrides={"mac.lambda": 0.5})
    ran, skipped = _ran(lam)
    assert ran == STAGE2_ONWARDS and skipped == UPSTREAM_OF_STAGE2, lam

    # MLflow: one parent per pipeline run that did work, a nested run per stage, two registered versions.
    settings = load_settings(clone / "params.yaml")
    uri = tracking.resolve_uri(settings.tracking.uri, clone)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(settings.tracking.experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`puma.kind` = 'pipeline'")
    assert len(parents) == 2 and {p.data.params["mac.lambda"] for p in parents} == {"0.2", "0.5"}
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert {c.data.tags["puma.stage"] for c in children} >= {"stage1", "stage2", "evaluate"}
    stage2 = next(c for c in children if c.data.tags["puma.stage"] == "stage2")
    assert len(client.get_metric_history(stage2.info.run_id, "loss")) > 1  # per-step training metrics
    versions = tracking.model_versions(settings, clone)
    assert [v["version"] for v in versions] == ["2", "1"] and versions[0]["promotion"]
    retriever = tracking.load_retriever(settings, root=clone)
    assert retriever.encode_query(["a query"]).shape[0] == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deployment_runs_through_a_local_server_and_process_worker(clone, tmp_path):
    """make prefect-up's script: server + `puma` process pool + `prefect deploy` + worker on 127.0.0.1,
    then `prefect deployment run puma/full-pipeline --watch` (forcing the report stage)."""
    env = {**_env(), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_PORT": str(_free_port())}
    env.pop("PREFECT_API_URL", None)
    script = clone / "flows" / "prefect_local.sh"
    report = clone / "reports" / "report" / "report.md"
    before = report.stat().st_mtime if report.exists() else 0.0
    try:
        up = subprocess.run([str(script), "up"], env=env, check=False, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        run = subprocess.run([str(script), "run", "--params", json.dumps({"stages": ["report"], "force": True})],
                             env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{env['PREFECT_PORT']}/api"},
                             check=False, capture_output=True, text=True, timeout=1800)
        worker_log = (tmp_path / "prefect" / "worker.log").read_text()
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker_log[-3000:]
        assert "Completed" in run.stdout
        assert report.stat().st_mtime > before
    finally:
        subprocess.run([str(script), "down"], env=env, capture_output=True, timeout=120, check=False)
