"""Fault injection on the real pipeline in a clone (`make test-faults`): every case ends as a clean run.

The clone runs the tiny default at a small MBEIR-mini scale (params below), so one case costs a
minute or two: teacher cache 8 shards, stage 1 16 steps (a checkpoint every 2), stage 2 24 steps (a
checkpoint every 3), embed about 50 shards. One clean ``dvc repro evaluate`` gives the reference: the
hashes of every stage's outputs (merged weights, metrics.json, cache and embedding trees) and its
``dvc.lock``. Each case then injects one fault into a forced run of one stage, runs the stage again the
way a user (or the flow's retry) would, and checks: the log says where it resumed, the outputs are
byte-identical to the reference, ``dvc status`` finds the whole pipeline up to date against the
reference lock (so no downstream stage would change), and no work directory or checkpoint is left.

Faults are injected with the test hook of :mod:`puma.faults` (``PUMA_FAULT_KILL_AT=<stage>:<step>``
with ``PUMA_FAULT_KILL_GROUP=1``: SIGKILL to ``dvc repro``'s whole process group at an exact step), or
from outside (``os.killpg``). Before each rerun DVC's run cache is emptied: the reference run put these
exact params in it, and DVC would restore the outputs from it instead of running the stage (a user's
crashed run with a new configuration, the issue's new ``mac.lambda``, has no such entry).

Timings go to ``<clone>/fault_timings.json`` (printed with -s): stage 2 retried after a kill at 75%
with resume, and without it (work directory removed), with the load average.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puma.io import file_sha256
from puma.workdir import tree_sha256

pytestmark = [pytest.mark.slow, pytest.mark.faults]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Small and fast, every stage still sharded and checkpointed several times.
OVERRIDES = [
    "data.synth_scale=0.5", "data.synth_eval_scale=1.0", "pretrain.steps=20", "pretrain.text_steps=0", "pretrain.vision_steps=0", "data.nli_rows=128", "prompt.max_pixels=3136",
    "stage1.batch_size=16", "stage1.checkpoint_every=2",
    "stage2.epochs=1", "stage2.batch_size=16", "stage2.checkpoint_every=3",
    "embed.batch_size=16", "embed.shard_size=32", "evaluate.bootstrap_resamples=50",
]
STAGE1_STEPS, STAGE1_EVERY = 16, 2
STAGE2_STEPS, STAGE2_EVERY = 24, 3
OUTS = {"teacher_cache": "artifacts/teacher_cache", "stage1": "artifacts/stage1", "stage2": "artifacts/stage2",
        "embed": "artifacts/embeddings", "evaluate": "artifacts/eval"}


def _env(root: Path, **extra: str) -> dict[str, str]:
    # PYTHONPATH: the clone's own code runs (the `puma` entry point and every stage).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUMA_") and k != "PREFECT_API_URL"}
    return {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(root.parent / "prefect-home"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300", **extra}  # a loaded machine


def _fault(root: Path, at: str) -> dict[str, str]:
    """The hook's env: SIGKILL ``dvc repro``'s process group at ``at``, once (marker file)."""
    marker = root / f"fault-{at.replace(':', '-')}.marker"
    marker.unlink(missing_ok=True)
    return {"PUMA_FAULT_KILL_AT": at, "PUMA_FAULT_KILL_GROUP": "1", "PUMA_FAULT_MARKER": str(marker)}


def _dvc(root: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(["dvc", *args], check=False, cwd=root, env=_env(root, **(env or {})), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800, start_new_session=True)
    if check:
        assert res.returncode == 0, res.stdout[-4000:]
    return res


def _forget(root: Path, stage: str) -> None:
    """Make ``stage`` a configuration DVC has never completed: drop its ``dvc.lock`` entry and the run cache.

    Otherwise DVC restores the reference run's outputs from its cache on the rerun (``Stage 'x' is
    cached - skipping run, checking out outputs``) instead of running the stage; a user's crashed run of a
    new configuration (the issue's new ``mac.lambda``) has neither. The rerun writes the entry back.
    """
    from dvc.utils.serialize import modify_yaml  # DVC's YAML 1.2 round trip ("no" stays a string)

    with modify_yaml(root / "dvc.lock") as lock:
        lock["stages"].pop(stage, None)
    shutil.rmtree(root / ".dvc" / "cache" / "runs", ignore_errors=True)


def _killed_run(root: Path, stage: str, at: str) -> subprocess.CompletedProcess:
    """``dvc repro --force --single-item stage`` killed (with its whole group) at hook point ``at``; the
    stage is then :func:`_forget`-ten, as a crashed first run of a configuration leaves it."""
    res = _dvc(root, "repro", "--force", "--single-item", stage, check=False, env=_fault(root, at))
    _forget(root, stage)
    assert res.returncode == -signal.SIGKILL, f"not killed (rc {res.returncode}):\n{res.stdout[-3000:]}"
    assert f"fault injection: PUMA_FAULT_KILL_AT={at}" in res.stdout, res.stdout[-3000:]
    return res


def _rerun(root: Path, stage: str) -> tuple[subprocess.CompletedProcess, float]:
    """``dvc repro stage`` as a user runs it after the crash."""
    t0 = time.monotonic()
    res = _dvc(root, "repro", stage)
    return res, round(time.monotonic() - t0, 1)


def _line(out: str, needle: str) -> str:
    found = [ln.strip() for ln in out.splitlines() if needle in ln]
    assert found, f"no line with {needle!r} in:\n{out[-3000:]}"
    return found[0]


def _work(root: Path, stage: str) -> Path:
    out = root / OUTS[stage]
    return out.parent / ".puma-work" / out.name


def _result(root: Path) -> dict[str, str]:
    """Hashes of every stage's result: merged weights and metrics.json of the training stages, trees of the rest."""
    res = {}
    for stage in ("stage1", "stage2"):
        out = root / OUTS[stage]
        res[f"{stage}.weights"] = file_sha256(out / "model" / "model.safetensors")
        res[f"{stage}.metrics"] = file_sha256(out / "metrics.json")
    for stage in ("teacher_cache", "embed"):
        res[stage] = tree_sha256(root / OUTS[stage])
    res["eval.metrics"] = file_sha256(root / OUTS["evaluate"] / "metrics.json")
    return res


# Outs that differ between two uninterrupted runs by design: train_log.jsonl has samples/s, resume.json
# says where the run resumed. Their results (model/, metrics.json) are compared by hash instead.
RUN_RECORDS = {OUTS["stage1"], OUTS["stage2"], "artifacts/embed_metrics.json"}  # timings differ by run


def _lock_view(text: str) -> dict:
    """``dvc.lock`` as a dict, without the hashes of :data:`RUN_RECORDS` outs."""
    from dvc.utils.serialize import parse_yaml

    lock = parse_yaml(text, "dvc.lock")["stages"]
    for entry in lock.values():
        for out in entry.get("outs", []):
            if out["path"] in RUN_RECORDS:
                out.clear()
    return lock


def _assert_as_reference(root: Path, ref: dict) -> None:
    assert _result(root) == ref["hashes"]
    status = _dvc(root, "status", "--with-deps", "evaluate")
    assert "up to date" in status.stdout, status.stdout[-3000:]
    assert _lock_view((root / "dvc.lock").read_text()) == _lock_view(ref["lock"])
    left = [p for p in (root / "artifacts").rglob("*") if p.name.startswith("step-") or p.name == "checkpoints"]
    assert not left, f"checkpoints left: {left[:3]}"
    assert not (root / "artifacts" / ".puma-work").exists(), sorted((root / "artifacts/.puma-work").rglob("*"))[:5]
    litter = [p.name for p in (root / "artifacts").iterdir() if p.name.startswith(".") and p.name != ".gitignore"]
    assert not litter, f"temporaries left in artifacts/: {litter}"


def _record(root: Path, key: str, value) -> None:
    path = root / "fault_timings.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))
    print(f"\n{key}: {json.dumps(value)}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _clean_temporaries(root: Path) -> None:
    """A SIGKILL leaves the temporaries of atomic writes (``.name.xxxx`` beside an out): remove them as a
    user would (``git clean``); nothing reads them."""
    for p in (root / "artifacts").iterdir():
        if p.name.startswith(".") and p.name not in (".gitignore", ".puma-work"):
            shutil.rmtree(p, ignore_errors=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A clone, shrunk by OVERRIDES, with one clean run up to evaluate: the reference of every case."""
    reuse = os.environ.get("PUMA_TEST_FAULTS_CLONE")  # developing the cases: a clone with its reference.json
    if reuse and (Path(reuse) / "reference.json").is_file():
        return Path(reuse), json.loads((Path(reuse) / "reference.json").read_text())
    root = tmp_path_factory.mktemp("faults") / "puma"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    from dvc.utils.hydra import apply_overrides

    apply_overrides(root / "params.yaml", OVERRIDES)
    from puma.config import load_settings

    s = load_settings(root / "params.yaml")
    assert (s.stage2.epochs, s.stage2.checkpoint_every, s.embed.shard_size) == (1, STAGE2_EVERY, 32)
    t0 = time.monotonic()
    _dvc(root, "repro", "evaluate")
    _record(root, "clean_pipeline_s", round(time.monotonic() - t0, 1))
    for stage in ("stage1", "stage2"):
        rec = json.loads((root / OUTS[stage] / "resume.json").read_text())
        assert rec["resumed_from"] is None and json.loads((root / OUTS[stage] / "metrics.json").read_text())[
            "steps"] == {"stage1": STAGE1_STEPS, "stage2": STAGE2_STEPS}[stage]
    ref = {"hashes": _result(root), "lock": (root / "dvc.lock").read_text()}
    _assert_as_reference(root, ref)
    _record(root, "reference_hashes", ref["hashes"])
    (root / "reference.json").write_text(json.dumps(ref))
    return root, ref


def test_kill_9_during_teacher_cache_with_a_half_written_shard(repo):
    root, ref = repo
    _killed_run(root, "teacher_cache", "teacher_cache:3")
    work = next(_work(root, "teacher_cache").glob("*/shards"))
    assert max(p.name for p in work.glob("*.safetensors")) == "shard-00002.safetensors"
    half = work / "shard-00002.safetensors"  # a half-written shard (as a filesystem without atomic rename leaves)
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    _clean_temporaries(root)
    res, seconds = _rerun(root, "teacher_cache")
    skipped = _line(res.stdout, "teacher_cache: shard 2 skipped")
    resumed = _line(res.stdout, "teacher_cache: resumed: 2 finished shard(s)")
    assert "truncated" in skipped
    _assert_as_reference(root, ref)
    _record(root, "teacher_cache", {"injected": "SIGKILL of dvc repro after shard 3 of 8, then shard 2 truncated",
                                    "logged": [skipped, resumed], "rerun_s": seconds,
                                    "hashes": {k: _result(root)[k] for k in ("teacher_cache",)}})


def test_kill_9_during_stage1_resumes_bit_identical(repo):
    root, ref = repo
    _killed_run(root, "stage1", "stage1:13")  # the step-12 checkpoint is the last one
    _clean_temporaries(root)
    res, seconds = _rerun(root, "stage1")
    line = _line(res.stdout, "stage1: resumed from step 12/16")
    assert json.loads((root / OUTS["stage1"] / "resume.json").read_text())["resumed_from"] == 12
    _assert_as_reference(root, ref)
    _record(root, "stage1", {"injected": "SIGKILL of dvc repro after step 13/16 (checkpoint 12)", "logged": line,
                             "rerun_s": seconds,
                             "hashes": {k: v for k, v in _result(root).items() if k.startswith("stage1")}})


def test_kill_9_during_stage2_at_75_percent_resumes_bit_identical_and_faster(repo):
    root, ref = repo
    at = STAGE2_STEPS * 3 // 4  # 18: a checkpoint step
    _killed_run(root, "stage2", f"stage2:{at}")
    _clean_temporaries(root)
    res, resumed_s = _rerun(root, "stage2")
    line = _line(res.stdout, f"stage2: resumed from step {at}/{STAGE2_STEPS}")
    assert json.loads((root / OUTS["stage2"] / "resume.json").read_text())["resumed_from"] == at
    _assert_as_reference(root, ref)
    load_resumed = _load()
    # The same retry without resume (the work directory removed: what a retry did before resume existed).
    _killed_run(root, "stage2", f"stage2:{at}")
    _clean_temporaries(root)
    shutil.rmtree(root / "artifacts" / ".puma-work")
    res2, fresh_s = _rerun(root, "stage2")
    assert "stage2: no checkpoint in" in res2.stdout and "resumed from" not in res2.stdout
    _assert_as_reference(root, ref)
    _record(root, "stage2", {"injected": f"SIGKILL of dvc repro after step {at}/{STAGE2_STEPS} (checkpoint {at})",
                             "logged": line,
                             "hashes": {k: v for k, v in _result(root).items() if k.startswith("stage2")}})
    _record(root, "stage2_retry_timing", {"with_resume_s": resumed_s, "load_with_resume": load_resumed,
                                          "without_resume_s": fresh_s, "load_without_resume": _load()})
    assert resumed_s < fresh_s


def test_truncated_latest_checkpoint_is_skipped(repo):
    root, ref = repo
    _killed_run(root, "stage2", "stage2:10")  # checkpoints 6 and 9 kept
    ckpts = sorted(_work(root, "stage2").glob("*/checkpoints/step-*"))
    assert [p.name for p in ckpts] == ["step-000006", "step-000009"], ckpts
    weights = ckpts[-1] / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _clean_temporaries(root)
    res, _ = _rerun(root, "stage2")
    skipped = _line(res.stdout, "checkpoint step-000009 skipped")
    assert "truncated" in skipped
    resumed = _line(res.stdout, f"stage2: resumed from step 6/{STAGE2_STEPS}")
    _assert_as_reference(root, ref)
    _record(root, "truncated_checkpoint", {"injected": "SIGKILL after step 10, then step-000009's weights truncated",
                                           "logged": [skipped, resumed],
                                           "hashes": {k: v for k, v in _result(root).items() if k.startswith("stage2")}})


def test_kill_9_during_embed_with_a_half_written_shard(repo):
    root, ref = repo
    _killed_run(root, "embed", "embed:5")
    work = next(_work(root, "embed").glob("*"))
    shards = sorted(work.rglob("shards/*.npy"), key=lambda p: p.stat().st_mtime)
    assert len(shards) == 5, shards
    half = shards[-1]
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    _clean_temporaries(root)
    res, seconds = _rerun(root, "embed")
    resumed = _line(res.stdout, "embed: resumed: 4 finished shard(s)")  # the 5th is the half-written one
    redo = _line(res.stdout, f"{half.relative_to(root)}: incomplete or corrupt")
    _assert_as_reference(root, ref)
    # evaluate on the resumed stores gives the same metrics.json byte for byte
    _dvc(root, "repro", "--force", "--single-item", "evaluate")
    _assert_as_reference(root, ref)
    _record(root, "embed", {"injected": "SIGKILL of dvc repro after 5 shards, then the 5th shard's .npy truncated",
                            "logged": [resumed, redo], "rerun_s": seconds,
                            "hashes": {k: _result(root)[k] for k in ("embed", "eval.metrics")}})


def test_prefect_flow_retry_after_a_killed_first_attempt_resumes(repo):
    root, ref = repo
    at = STAGE2_STEPS * 3 // 4
    env = _fault(root, f"stage2:{at}")
    shutil.rmtree(root / ".dvc" / "cache" / "runs", ignore_errors=True)
    code = ("import json; from flows.puma_flow import puma; "
            f"s = puma(repo={str(root)!r}, stages=['stage2'], force=True, retries=1); "
            "print('FLOW-SUMMARY', json.dumps(s['stages']))")
    res = subprocess.run([sys.executable, "-c", code], check=False, cwd=root, env=_env(root, **env), text=True, timeout=1800,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert res.returncode == 0, res.stdout[-4000:]
    assert Path(env["PUMA_FAULT_MARKER"]).is_file(), "the first attempt was not killed"
    killed = _line(res.stdout, f"fault injection: PUMA_FAULT_KILL_AT=stage2:{at}")
    retry = _line(res.stdout, "Retry")
    line = _line(res.stdout, f"stage2: resumed from step {at}/{STAGE2_STEPS}")
    _assert_as_reference(root, ref)
    _record(root, "prefect_retry", {"injected": f"SIGKILL of the first attempt's dvc repro after step {at}",
                                    "logged": [killed, retry, line],
                                    "hashes": {k: v for k, v in _result(root).items() if k.startswith("stage2")}})


def test_two_dvc_repro_at_once_the_second_is_refused(repo):
    root, ref = repo
    first = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "stage1"], cwd=root, env=_env(root),
                             text=True, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not list(_work(root, "stage1").glob("*/checkpoints/step-*")):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    status = subprocess.run(["git", "status", "--porcelain"], check=False, cwd=root, text=True, capture_output=True).stdout
    works = sorted(p.name for p in _work(root, "stage1").iterdir())
    second = _dvc(root, "repro", "--force", "--single-item", "stage1", check=False)
    assert second.returncode != 0 and "lock" in second.stdout.lower(), second.stdout[-3000:]
    # The refused run left nothing: no new file in the workspace, no second work directory.
    assert subprocess.run(["git", "status", "--porcelain"], check=False, cwd=root, text=True, capture_output=True).stdout == status
    assert sorted(p.name for p in _work(root, "stage1").iterdir()) == works
    out, _ = first.communicate(timeout=1800)
    assert first.returncode == 0, out[-3000:]
    assert "resumed from" not in out
    _assert_as_reference(root, ref)
    _record(root, "lock", {"second_rc": second.returncode, "message": _line(second.stdout, "lock"),
                           "hashes": {k: v for k, v in _result(root).items() if k.startswith("stage1")}})
