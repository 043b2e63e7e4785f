"""Fault injection on the real pipeline in a clone (`make test-faults`): every case ends as a clean run.

The clone runs the tiny default with stage 2 shortened (2 epochs = 48 steps, a checkpoint every 4).
A clean `dvc repro` gives the reference hashes of the merged stage-2 weights and of its metrics.json;
then each case injects one fault into `dvc repro stage2` and checks that the next `dvc repro` ends
with the same hashes, no checkpoint inside the DVC-cached model folder and no work directory left.
Timings go to `<clone>/fault_timings.json` (printed with -s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puma.io import file_sha256

pytestmark = [pytest.mark.slow, pytest.mark.faults]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS, EVERY = 48, 4


def _shorten_stage2(params: Path) -> None:
    """stage2.epochs 2, stage2.checkpoint_every EVERY in params.yaml (comments kept)."""
    lines, section = params.read_text().splitlines(keepends=True), None
    for i, line in enumerate(lines):
        if line[:1].isalpha():
            section = line.split(":")[0]
        elif section == "stage2" and line.startswith(("  epochs:", "  checkpoint_every:")):
            key = line.split(":")[0].strip()
            lines[i] = f"  {key}: {2 if key == 'epochs' else EVERY}\n"
    params.write_text("".join(lines))


def _env(root: Path) -> dict[str, str]:
    # PYTHONPATH: the clone's own code runs (the `puma` entry point and every stage).
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1"}


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["dvc", "repro", *args], check=False, cwd=root, env=_env(root), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
    if check:
        assert res.returncode == 0, res.stdout[-4000:]
    return res


def _start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["dvc", "repro", *args], cwd=root, env=_env(root), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _work(root: Path) -> Path:
    return root / "artifacts" / ".puma-work" / "stage2"


def _checkpoints(root: Path) -> list[Path]:
    return sorted(_work(root).glob("*/checkpoints/step-*"))


def _wait_for_step(proc: subprocess.Popen, root: Path, step: int, timeout: float = 900) -> Path:
    """Block until a stage-2 checkpoint at >= ``step`` exists; returns the newest."""
    deadline = time.time() + timeout
    while True:
        found = [p for p in _checkpoints(root) if int(p.name.removeprefix("step-")) >= step]
        if found:
            return found[-1]
        assert proc.poll() is None, f"dvc repro ended before step {step}:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no checkpoint at step {step} after {timeout}s"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it runs, as an OOM kill or a pre-emption
    proc.wait()


def _result(root: Path) -> dict[str, str]:
    out = root / "artifacts" / "stage2"
    return {"weights": file_sha256(out / "model" / "model.safetensors"), "metrics": file_sha256(out / "metrics.json")}


def _assert_clean_outputs(root: Path) -> None:
    out = root / "artifacts" / "stage2"
    assert not list(out.rglob("checkpoints")) and not list(out.rglob("step-*")), "checkpoints left in the out"
    assert not _work(root).exists(), "work directory left behind"


def _record(root: Path, key: str, value) -> None:
    path = root / "fault_timings.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))
    print(key, value)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A clone with the upstream stages done and a clean stage-2 run as the reference."""
    root = tmp_path_factory.mktemp("faults") / "puma"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    _shorten_stage2(root / "params.yaml")
    from puma.config import load_settings

    cfg = load_settings(root / "params.yaml").stage2
    assert (cfg.epochs, cfg.checkpoint_every) == (2, EVERY)
    _dvc(root, "stage1")
    t0 = time.monotonic()
    _dvc(root, "stage2")
    _record(root, "stage2_clean_s", round(time.monotonic() - t0, 1))
    _assert_clean_outputs(root)
    ref = _result(root)
    assert json.loads((root / "artifacts/stage2/resume.json").read_text())["resumed_from"] is None
    return root, ref


def test_kill_9_during_stage2_then_dvc_repro_resumes_bit_identical(repo):
    root, ref = repo
    proc = _start(root, "--force", "stage2")
    killed_after = _wait_for_step(proc, root, STEPS * 3 // 4)  # 75% of training
    _kill(proc)
    step = int(killed_after.name.removeprefix("step-"))
    assert step < STEPS, "killed too late"
    t0 = time.monotonic()
    res = _dvc(root, "stage2")  # no --force: the killed stage never completed, DVC runs it again
    _record(root, "stage2_resumed_s", round(time.monotonic() - t0, 1))
    _record(root, "kill9_killed_after_step", step)
    assert f"resumed from step {step}/{STEPS}" in res.stdout, res.stdout[-3000:]
    assert json.loads((root / "artifacts/stage2/resume.json").read_text())["resumed_from"] == step
    assert _result(root) == ref
    _assert_clean_outputs(root)
    _record(root, "kill9_hashes", _result(root))


def test_truncated_latest_checkpoint_is_skipped(repo):
    root, ref = repo
    proc = _start(root, "--force", "stage2")
    _wait_for_step(proc, root, 3 * EVERY)
    _kill(proc)
    latest, previous = _checkpoints(root)[-1], _checkpoints(root)[-2]
    weights = latest / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = _dvc(root, "stage2")
    assert f"checkpoint {latest.name} skipped" in res.stdout and "truncated" in res.stdout, res.stdout[-3000:]
    prev = int(previous.name.removeprefix("step-"))
    assert f"resumed from step {prev}/{STEPS}" in res.stdout
    _record(root, "truncated", {"latest": latest.name, "resumed_from": prev, "hashes": _result(root)})
    assert _result(root) == ref
    _assert_clean_outputs(root)


def test_two_dvc_repro_at_once_the_second_is_refused(repo):
    root, ref = repo
    first = _start(root, "--force", "stage2")
    _wait_for_step(first, root, EVERY)
    status = subprocess.run(["git", "status", "--porcelain"], check=False, cwd=root, text=True, capture_output=True).stdout
    works = sorted(p.name for p in _work(root).iterdir())
    second = _dvc(root, "--force", "stage2", check=False)
    assert second.returncode != 0 and "lock" in second.stdout.lower(), second.stdout[-3000:]
    # The refused run left nothing: no new file in the workspace, no second work directory.
    assert subprocess.run(["git", "status", "--porcelain"], check=False, cwd=root, text=True, capture_output=True).stdout == status
    assert sorted(p.name for p in _work(root).iterdir()) == works
    out, _ = first.communicate(timeout=1800)
    assert first.returncode == 0, out[-3000:]
    assert "resumed from" not in out
    _record(root, "lock", {"second_rc": second.returncode, "message": second.stdout.strip().splitlines()[-1],
                           "hashes": _result(root)})
    assert _result(root) == ref
    _assert_clean_outputs(root)
