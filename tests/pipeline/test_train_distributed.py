"""Stage 2 with 2 processes (torchrun, gloo) follows the 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKER = Path(__file__).parent / "train_dist_worker.py"


def _run(prefix, params, model, out, n, images):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    cmd = [*prefix, str(WORKER), str(params), str(model), str(out), str(n), str(images)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_follow_one_process(tiny_dir, tmp_path):
    from puma.model.prune import save_pruned

    pruned = save_pruned(tiny_dir, 4, tmp_path / "pruned")

    def params(batch_size):
        path = tmp_path / f"params{batch_size}.yaml"
        # No dropout: the two runs draw their random numbers differently (one stream per process).
        path.write_text(yaml.safe_dump({
            "model": {"base": str(tiny_dir)}, "tracking": {"enabled": False},
            "stage2": {"batch_size": batch_size, "epochs": 1, "lr": 5e-3, "lora_dropout": 0.0},
        }))
        return path

    n = 24  # 4 steps of 6 pairs
    one = _run([sys.executable], params(6), pruned, tmp_path / "one", n, tmp_path / "img")
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
               params(3), pruned, tmp_path / "two", n, tmp_path / "img")
    assert len(one) == len(two) == 4
    # Same global batches, gathered negatives, world-size-scaled gradients: the same trajectory.
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3), (a, b)
        assert b["tau_hard"] == a["tau_hard"]
    assert one[-1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-3)  # it did train
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
