"""Headless screenshots of the MLflow and Prefect UI pages a user looks at after two pipeline runs.

    python infra/ui_check.py --mlflow http://127.0.0.1:5000 [--prefect http://127.0.0.1:4200] --out DIR

Finds, through the servers' own APIs, the ``tracking.experiment`` experiment, its two newest pipeline
runs (``puma.kind = pipeline``), the ``champion`` version of ``tracking.model_name`` and (with
``--prefect``) the newest ``puma-result`` artifact, then has headless Chromium (the distribution's
``chromium`` package) render each page to ``DIR/<page>.png``:

    runs        #/experiments/<id>?workflowType=machine_learning   the link the flow's artifact gives
    experiment  #/experiments/<id>            the same address without the query (a first visit)
    compare     #/compare-runs?runs=[..]      the two pipeline runs side by side
    model       #/models/<name>/versions/<v>  the champion version
    artifact    /artifacts/artifact/<id>      the Prefect markdown artifact (with --prefect)
    flow_run    /runs/flow-run/<id>           its flow run (with --prefect)

Prints one ``page url -> file`` line per page. Look at the PNGs; they are not checked here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import quote


def screenshot(url: str, out: Path, size: str = "1600,1000", wait_ms: int = 20000) -> None:
    """Render ``url`` in headless Chromium after ``wait_ms`` of virtual time (the SPA fetches its data)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)


def prefect_pages(api: str) -> dict[str, str]:
    """UI addresses of the newest ``puma-result`` artifact and its flow run on a Prefect server."""
    from flows.result import ARTIFACT_KEY

    req = urllib.request.Request(f"{api.rstrip('/')}/api/artifacts/filter", method="POST",
                                 data=json.dumps({"artifacts": {"key": {"any_": [ARTIFACT_KEY]}},
                                                  "sort": "CREATED_DESC", "limit": 1}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        arts = json.loads(r.read())
    if not arts:
        return {}
    base = api.rstrip("/")
    pages = {"artifact": f"{base}/artifacts/artifact/{arts[0]['id']}"}
    if arts[0].get("flow_run_id"):
        pages["flow_run"] = f"{base}/runs/flow-run/{arts[0]['flow_run_id']}"
    return pages


def mlflow_pages(uri: str, experiment: str, model_name: str) -> dict[str, str]:
    import mlflow

    from puma.tracking import ui_links

    client = mlflow.MlflowClient(uri, uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"{uri}: no experiment {experiment!r}")
    runs = client.search_runs([exp.experiment_id], "tags.`puma.kind` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=2)
    base = uri.rstrip("/")
    champ = client.get_model_version_by_alias(model_name, "champion")
    links = ui_links(base, exp.experiment_id, model_name=model_name, version=str(champ.version))
    pages = {"runs": links["experiment"], "experiment": f"{base}/#/experiments/{exp.experiment_id}"}
    if len(runs) == 2:
        ids = quote(json.dumps([r.info.run_id for r in runs]))
        pages["compare"] = f"{base}/#/compare-runs?runs={ids}&experiments={quote(json.dumps([exp.experiment_id]))}"
    pages["model"] = links["model_version"]
    return pages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mlflow", required=True, help="MLflow server/UI address, e.g. http://127.0.0.1:5000")
    p.add_argument("--prefect", help="Prefect server address, e.g. http://127.0.0.1:4200")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--experiment", default="puma")
    p.add_argument("--model", default="puma-retriever")
    p.add_argument("--size", default="1600,1000", help="window WIDTH,HEIGHT")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pages = mlflow_pages(args.mlflow, args.experiment, args.model)
    if args.prefect:
        pages.update(prefect_pages(args.prefect))
    width, height = args.size.split(",")
    for name, url in pages.items():
        out = args.out / f"{name}.png"
        # the compare page lists every param before the metrics: render it tall
        screenshot(url, out, f"{width},{int(height) * 4}" if name == "compare" else args.size)
        print(f"{name} {url} -> {out}")
    return 0


if __name__ == "__main__":
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    raise SystemExit(main())
