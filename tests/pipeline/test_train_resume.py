"""kill -9 in the middle of stage 1, re-run the same command: the final weights are bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "train_worker.py"


def _run(params, model, out, n, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    cmd = [sys.executable, str(WORKER), str(params), str(model), str(out), str(n)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]
    return proc


@pytest.mark.slow
def test_kill_9_resume_is_bit_identical(tiny_dir, tmp_path):
    from puma.model.prune import save_pruned

    pruned = save_pruned(tiny_dir, 4, tmp_path / "pruned")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "model": {"base": str(tiny_dir)}, "tracking": {"enabled": False},
        "stage1": {"teacher": "live", "batch_size": 8, "epochs": 2, "lr": 2e-3, "checkpoint_every": 2},
    }))
    n = 48  # 6 steps per epoch, 12 in all
    _run(params, pruned, tmp_path / "full", n)

    proc = _run(params, pruned, tmp_path / "cut", n, wait=False)
    ckpts = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "model").exists()
    killed_at = max(p.name for p in ckpts.iterdir() if p.name.startswith("step-"))
    assert killed_at != "step-000012", "killed too late to test resume"

    _run(params, pruned, tmp_path / "cut", n)  # the same command again
    full = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert full.keys() == cut.keys()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    assert (tmp_path / "cut" / "train_log.jsonl").read_text().count("\n") == 12
