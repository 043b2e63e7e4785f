"""infra/: the team docker compose file parses and is safe by default (localhost only, secrets in .env)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
SERVICES = {"mlflow-db", "minio", "minio-buckets", "mlflow", "prefect-db", "prefect-server", "prefect-worker"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    pairs = [ln.split("=", 1) for ln in (INFRA / ".env.example").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return {k: v for k, v in pairs}


def test_services_present(compose):
    assert set(compose["services"]) == SERVICES


def test_every_published_port_is_bound_to_localhost(compose):
    published = []
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published.append(port)
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} not bound to 127.0.0.1"
    # MLflow 5000, Prefect 4200, MinIO API + console; the databases are not published at all.
    assert len(published) == 4
    for db in ("mlflow-db", "prefect-db"):
        assert "ports" not in compose["services"][db]


def test_backends_and_storage(compose):
    s = compose["services"]
    assert "postgresql+psycopg2://" in s["mlflow"]["command"] and "s3://" in s["mlflow"]["command"]
    assert s["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert s["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert s["prefect-server"]["image"].endswith("3.8.8-python3.11")  # the same Prefect as requirements/lock.txt
    named = set(compose["volumes"])
    for name in ("mlflow-db", "prefect-db", "minio"):
        mounts = [v.split(":")[0] for v in s[name]["volumes"]]
        assert mounts and set(mounts) <= named, f"{name}: data must live on a named volume"
    for svc in ("mlflow", "prefect-server"):
        deps = s[svc]["depends_on"]
        assert any(d.endswith("-db") and deps[d]["condition"] == "service_healthy" for d in deps)


def test_worker_has_gpu_and_points_at_the_servers(compose):
    w = compose["services"]["prefect-worker"]
    devices = w["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert w["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert w["environment"]["PUMA_TRACKING__URI"] == "http://mlflow:5000"
    assert "prefect worker start" in w["command"] and "--type process" in w["command"]
    assert (INFRA / "worker.Dockerfile").exists() and (INFRA / "mlflow.Dockerfile").exists()


def test_secrets_come_from_env_and_the_example_defines_them(compose):
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = _env_example()
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    for secret in ("MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert f"${{{secret}:?" in text, f"{secret} must be required (no silent default)"
    for name, svc in compose["services"].items():
        for key, val in (svc.get("environment") or {}).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert str(val).startswith("${"), f"{name}: {key} is hard-coded in the compose file"
    ignored = (INFRA.parent / ".gitignore").read_text()
    assert "/infra/.env" in ignored


def _has_compose() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="docker compose not installed")
def test_docker_compose_config_accepts_it():
    res = subprocess.run(["docker", "compose", "-f", str(INFRA / "docker-compose.yml"), "--env-file",
                          str(INFRA / ".env.example"), "config", "--quiet"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_local_stack_runs_what_the_compose_file_declares(compose):
    """infra/local_stack.sh (what `make test-infra` runs) and the compose file: same servers, flags, names."""
    stack = (INFRA / "local_stack.sh").read_text()
    s = compose["services"]
    for flag in ("--backend-store-uri", "--artifacts-destination", "--serve-artifacts"):
        assert flag in s["mlflow"]["command"] and flag in stack, flag
    assert '"postgresql+psycopg2://mlflow:$MLFLOW_DB_PASSWORD@' in stack and '"s3://$MLFLOW_BUCKET/artifacts"' in stack
    assert "PREFECT_API_DATABASE_CONNECTION_URL=\"postgresql+asyncpg://prefect:$PREFECT_DB_PASSWORD@" in stack
    worker = s["prefect-worker"]
    # On an http(s) tracking URI the server picks the artifact store (puma.tracking.store): no override.
    assert "PUMA_TRACKING__ARTIFACT_LOCATION" not in worker["environment"]
    assert "PUMA_TRACKING__ARTIFACT_LOCATION" not in stack
    assert "concurrency-limit create gpu ${GPU_SLOTS:-1}" in worker["command"]
    assert 'concurrency-limit create gpu "${GPU_SLOTS:-1}"' in stack
    # Every secret / port the script takes from the environment has the compose file's name.
    for name in ("MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
                 "MLFLOW_BUCKET", "MLFLOW_PORT", "PREFECT_PORT", "MINIO_PORT", "GPU_SLOTS"):
        assert f"${{{name}:-" in stack and name in _env_example(), name
    assert "127.0.0.1" in stack and "0.0.0.0" not in stack


def test_the_images_run_the_versions_the_local_stack_runs(compose):
    """The compose MLflow image pins what requirements/infra.txt (.venv-infra) pins; the Prefect server
    image is the lock's Prefect: the Docker stack is the one `make test-infra` ran."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", (INFRA.parent / "requirements/infra.txt").read_text(), re.MULTILINE))
    lock = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (INFRA.parent / "requirements/lock.txt").read_text(), re.MULTILINE))
    docker = dict(re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', (INFRA / "mlflow.Dockerfile").read_text()))
    assert docker == {k: pins[k] for k in ("mlflow", "psycopg2-binary", "boto3")}, (docker, pins)
    assert pins["mlflow"] == lock["mlflow"]
    image = compose["services"]["prefect-server"]["image"]
    assert image.startswith(f"prefecthq/prefect:{lock['prefect']}-"), (image, lock["prefect"])
