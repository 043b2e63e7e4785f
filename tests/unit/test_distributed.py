"""The gather helper: 2 real processes on gloo give the loss and gradients of one process with the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from puma.distributed import gather, rank, world_size

sys.path.insert(0, str(Path(__file__).parent))
from dist_worker import batch, losses


def test_gather_is_identity_on_one_process():
    t = torch.randn(3, 4, requires_grad=True)
    assert gather(t) is t
    assert world_size() == 1 and rank() == 0


def test_two_processes_equal_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    q, c, mods = batch()
    for name in ("info_nce", "mac"):
        qs, cs = q.clone().requires_grad_(), c.clone().requires_grad_()
        single = losses(qs, cs, mods)[name]
        single.backward()
        for res in ranks:
            got = res[name]
            a, b = got["slice"]
            assert got["loss"] == pytest.approx(single.item(), rel=1e-6)
            assert torch.allclose(torch.tensor(got["q_grad"]), qs.grad[a:b], atol=1e-6)
            assert torch.allclose(torch.tensor(got["c_grad"]), cs.grad[a:b], atol=1e-6)
