"""The team infrastructure run for real (`make test-infra`; marker `infra`, not in the default suite).

infra/local_stack.sh starts PostgreSQL, an S3 endpoint (moto), an MLflow server (Postgres backend, artifacts
proxied to S3) and a Prefect server on the same PostgreSQL, deploys prefect.yaml and starts a process worker;
then `prefect deployment run puma/full-pipeline --watch` runs the whole default pipeline in a clone, and the
champion it registered is loaded back through the MLflow server and encodes a query.

The pipeline is the real one (every stage of dvc.yaml, through the worker), shortened by the PUMA_ overrides
in SHORT (fewer pretrain/training steps, fewer NLI rows and bootstrap resamples; the evaluation data is the
default MBEIR-mini, so the evaluation is complete and the gate promotes). ``PUMA_INFRA_FULL=1`` runs the
default lengths instead (about 10 min on 2 idle cores). Overrides the caller set win over SHORT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from puma import tracking

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VENV_INFRA = Path(os.environ.get("VENV_INFRA", REPO / ".venv-infra"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SHORT = {"PUMA_PRETRAIN__STEPS": "30", "PUMA_PRETRAIN__TEXT_STEPS": "0", "PUMA_PRETRAIN__VISION_STEPS": "0",
         "PUMA_DATA__NLI_ROWS": "128", "PUMA_STAGE1__MAX_STEPS": "4",
         "PUMA_STAGE2__MAX_STEPS": "8", "PUMA_EVALUATE__BOOTSTRAP_RESAMPLES": "100"}

pytestmark = [
    pytest.mark.infra,
    pytest.mark.skipif(not (VENV_INFRA / "bin" / "mlflow").exists(), reason=f"{VENV_INFRA} missing: make infra-venv"),
    pytest.mark.skipif(shutil.which("postgres") is None and not (PG_BIN / "postgres").exists(),
                       reason="PostgreSQL server not installed"),
]


LIST_BUCKET = """
import boto3, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    for obj in page.get("Contents", []):
        print(obj["Key"])
"""


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _exports(text: str) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines() if line.startswith("export "))


def test_full_pipeline_through_the_team_stack(tmp_path, monkeypatch):
    import mlflow

    from puma.config import load_settings

    clone = tmp_path / "puma"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    stack = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PUMA_TRACKING", "MLFLOW_", "AWS_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PUMA_STACK_DIR=str(stack), VENV_INFRA=str(VENV_INFRA))
    if os.environ.get("PUMA_INFRA_FULL") != "1":
        env = {**SHORT, **env}  # the worker (started by `up` with this env) hands them to every stage
    script = clone / "infra" / "local_stack.sh"
    ok = False
    try:
        up = subprocess.run([str(script), "up"], env=env, capture_output=True, text=True, timeout=600, check=False)
        print(up.stdout)
        assert up.returncode == 0, up.stdout + up.stderr
        secrets = _read_env(stack / "stack.env")
        client_env = _exports(subprocess.run([str(script), "env"], env=env, capture_output=True, text=True,
                                             check=True).stdout)
        assert not set(client_env.values()) & {v for k, v in secrets.items() if "PASSWORD" in k}
        run_env = {**env, **client_env}
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "puma/full-pipeline", "--watch"],
                             env=run_env, cwd=clone, capture_output=True, text=True, timeout=3600, check=False)
        print("\n".join(run.stdout.splitlines()[-6:]))
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-4000:] + run.stderr[-4000:]

        # MLflow: the run and the champion live on the server; the model's files are in the S3 bucket.
        uri = client_env["PUMA_TRACKING__URI"]
        client = mlflow.MlflowClient(uri, uri)
        exp = client.get_experiment_by_name("puma")
        parents = client.search_runs([exp.experiment_id], "tags.`puma.kind` = 'pipeline'")
        assert len(parents) == 1
        logged = set(parents[0].data.params.values()) | set(parents[0].data.tags.values())
        assert not logged & set(secrets.values()), "a secret reached MLflow"
        assert parents[0].data.metrics["pipeline.wall_s"] > 0  # the flow told the stages when it started
        champ = client.get_model_version_by_alias("puma-retriever", "champion")
        stored = client.get_logged_model(tracking.version_model_id(champ)).artifact_location  # the pyfunc model's files
        assert stored.startswith("mlflow-artifacts:"), stored
        keys = subprocess.run(
            [str(VENV_INFRA / "bin" / "python"), "-c", LIST_BUCKET, f"http://127.0.0.1:{secrets['MINIO_PORT']}", secrets["MLFLOW_BUCKET"]],
            env={**env, "AWS_ACCESS_KEY_ID": secrets["MINIO_ROOT_USER"],
                 "AWS_SECRET_ACCESS_KEY": secrets["MINIO_ROOT_PASSWORD"]},
            capture_output=True, text=True, check=True).stdout.split()
        assert any(k.endswith("/model/config.json") for k in keys), keys[:20]

        # Both servers keep their state in PostgreSQL.
        def sql(db: str, query: str) -> str:
            return subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", secrets["PG_PORT"], "-U", db,
                                   "-d", db, "-tAc", query], env={**env, "PGPASSWORD": secrets[f"{db.upper()}_DB_PASSWORD"]},
                                  capture_output=True, text=True, check=True).stdout.split()
        assert int(sql("mlflow", "select count(*) from runs")[0]) >= 2
        assert "COMPLETED" in sql("prefect", "select state_type from flow_run")

        # The champion is served from there: downloaded through the MLflow server and working.
        for k, v in client_env.items():
            monkeypatch.setenv(k, v)
        settings = load_settings(clone / "params.yaml")
        assert settings.tracking.uri == uri
        vec = tracking.load_retriever(settings, root=clone).encode_query(["a query"])
        vec = vec.float().numpy() if hasattr(vec, "numpy") else vec
        assert vec.shape[0] == 1 and abs(float((vec[0] ** 2).sum()) - 1.0) < 1e-3

        # Prefect shows the result: the flow run's markdown artifact links to the run and the version.
        art = subprocess.run([str(BIN / "prefect"), "artifact", "inspect", "puma-result"], env=run_env,
                             capture_output=True, text=True, check=True).stdout
        assert "Table 1" in art and f"{uri}/#/models/puma-retriever/versions/{champ.version}" in art, art[-3000:]
        print(art)
        limit = subprocess.run([str(BIN / "prefect"), "concurrency-limit", "inspect", "gpu"], env=run_env,
                               capture_output=True, text=True, check=False)
        assert limit.returncode == 0, limit.stdout + limit.stderr
        print(f"infra summary: services up, flow run Completed, champion puma-retriever v{champ.version} "
              f"served from {uri} (source {champ.source}, {len(keys)} objects in s3://{secrets['MLFLOW_BUCKET']})")
        ok = True
    finally:
        if not ok:
            print(subprocess.run([str(script), "logs"], env=env, capture_output=True, text=True, check=False).stdout)
        down = subprocess.run([str(script), "down"], env=env, capture_output=True, text=True, timeout=180, check=False)
        print(down.stdout, down.stderr)
