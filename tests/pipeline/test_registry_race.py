"""Two registrations racing for the ``champion`` alias, in two real processes on one SQLite store.

Each process logs a pipeline run, registers its model and runs the promotion gate (as two pipelines
finishing at once would); both start together on a go-file. The first one holds the gate open between
reading the registry and moving the alias (the test hook ``PUMA_FAULT_DELAY=promote:<s>``,
:mod:`puma.faults`), which is where a read-then-write gate without a lock loses: the second, better,
model is promoted meanwhile and the first then overwrites it. The champion must end as the complete
evaluation with the better score, never the worse one, never a partial one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.test_tracking import COLUMNS, _metrics, store  # noqa: F401 (store: the fixture)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys, time
from pathlib import Path
from puma import tracking
from puma.config import load_settings

root, metrics_file, go, columns = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
settings = load_settings(root / "params.yaml")
metrics = json.loads(metrics_file.read_text())
check = tracking.check_evaluation(metrics, ["local", "global"], columns)
while not go.exists():
    time.sleep(0.01)
run = tracking.log_pipeline(settings, root, metrics_path=metrics_file)
version = tracking.register_model(settings, run.run_id, root / "artifacts" / "stage2" / "model", check, root)
print("DECISION", json.dumps(tracking.decision_dict(tracking.promote(settings, version, root))), flush=True)
"""


def _race(root: Path, name: str, first: dict, second: dict, delay_s: float = 4.0) -> tuple[dict, dict]:
    """Start two registering processes (``first`` delayed inside the gate); their decisions."""
    from puma.config import load_settings
    from puma.tracking.store import connect

    connect(load_settings(root / "params.yaml"), root)  # the store exists (two first-ever connects race in MLflow's migrations)
    go = root / f"go-{name}"
    procs = []
    for i, (metrics, extra) in enumerate([(first, {"PUMA_FAULT_DELAY": f"promote:{delay_s}"}), (second, {})]):
        path = root / "reports" / f"metrics-{name}-{i}.json"
        path.write_text(json.dumps(metrics))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PUMA_")}, "PYTHONPATH": str(REPO),
               "PUMA_TRACKING__MODEL_NAME": name, **extra}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(path), str(go),
                                       json.dumps(COLUMNS)], cwd=root, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    time.sleep(8)  # both have imported mlflow and wait on the go-file
    go.touch()
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=600)
        assert p.returncode == 0, text[-3000:]
        out.append(json.loads(text.split("DECISION", 1)[1]))
    return out[0], out[1]


def _champion(root: Path, name: str):
    os.environ["PUMA_TRACKING__MODEL_NAME"] = name
    try:
        from puma import tracking
        from puma.config import load_settings

        settings = load_settings(root / "params.yaml")
        rows = tracking.model_versions(settings, root)
    finally:
        del os.environ["PUMA_TRACKING__MODEL_NAME"]
    return [r for r in rows if "champion" in r["aliases"]], rows


def test_racing_registrations_end_with_the_better_complete_champion(store):  # noqa: F811
    worse, better = _race(store, "race-a", _metrics(40.0), _metrics(45.0))
    champs, rows = _champion(store, "race-a")
    assert len(champs) == 1, rows
    assert champs[0]["version"] == better["version"] and champs[0]["global.avg"] == 45.0, (rows, worse, better)
    assert champs[0]["eval"] == "complete"
    print("\nrace-a:", json.dumps({"worse": worse, "better": better, "champion": champs[0]["version"]}))


def test_a_partial_evaluation_never_wins_a_race(store):  # noqa: F811
    # The partial one scores higher on what it has, and is the one not held in the gate.
    complete, partial = _race(store, "race-b", _metrics(30.0), _metrics(90.0, status="partial",
                                                                         drop=COLUMNS[0]))
    champs, rows = _champion(store, "race-b")
    assert len(champs) == 1 and champs[0]["version"] == complete["version"], (rows, complete, partial)
    assert champs[0]["eval"] == "complete" and not partial["promoted"]
    print("\nrace-b:", json.dumps({"complete": complete, "partial": partial, "champion": champs[0]["version"]}))
