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
    cmd: python -c "import pathlib; pathlib.Path('s.txt').write_text('s')"
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


def test_overrides_apply_like_dvc_exp_run(toy_repo):
    from puma.config import ConfigError, load_settings

    from flows.puma_flow import apply_overrides

    assert apply_overrides(toy_repo, "params.yaml", {"mac.lambda": 0.7}) == ["mac.lambda=0.7"]
    text = (toy_repo / "params.yaml").read_text()
    assert load_settings(toy_repo / "params.yaml").mac.lambda_ == 0.7 and "# decay sparsity; paper: 0.2" in text
    with pytest.raises(ConfigError, match="prune_layers"):
        apply_overrides(toy_repo, None, {"model.prune_layers": 99})


@pytest.mark.slow  # the Prefect engine starts a temporary server (about 25 s in all)
def test_flow_runs_stages_in_order_skips_unchanged_and_reruns_downstream(toy_repo):
    from flows.puma_flow import puma

    first = puma(repo=str(toy_repo))
    assert [(s["stage"], s["skipped"]) for s in first["stages"]] == [("first", False), ("second", False),
                                                                       ("side", False)]
    assert (toy_repo / "b.txt").read_text() == "ab"
    again = puma(repo=str(toy_repo), overrides={"mac.lambda": 0.5})
    assert [(s["stage"], s["skipped"]) for s in again["stages"]] == [("first", True), ("second", False),
                                                                       ("side", True)]
