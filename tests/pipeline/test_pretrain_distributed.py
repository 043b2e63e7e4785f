"""Pretraining on 2 processes (torchrun, gloo) follows 1 process with the same rows per step (its vision stage too).

Each step takes the next ``batch_size x world`` rows, every rank its slice; per-rank losses are normalised by
the global counts and the gradients summed (puma.train.pretrain.step_loss, puma.distributed.all_reduce_grads),
so the two runs are the same optimisation up to round-off: the same logged losses, the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "pretrain_dist_worker.py"


def test_two_processes_follow_one_process(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from train_helpers import image_pairs

    from puma.config import PromptSettings
    from puma.train.pretrain import pretrain_base

    # 12 pairs = 24 rows: 3 steps of 8 rows, some with images, queries and documents in every step; first a
    # vision stage of 2 steps of 8 pictures (pretrain.vision_steps), data-parallel the same way.
    n, steps, images, vision_steps = 12, 3, tmp_path / "img", 2
    pretrain_base(tiny_dir, tmp_path / "one", image_pairs(n, images, with_scenes=True), PromptSettings(), steps=steps,
                  batch_size=8, lr=5e-3, answer_weight=4.0, vision_steps=vision_steps)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(tiny_dir), str(tmp_path / "two"), "4", str(steps), str(images), str(n), str(vision_steps)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    logs = [[json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == steps
    for a, b in zip(*logs):
        # grad_norm (before clipping): the summed gradient is the one-process gradient, not a multiple of it
        for key in ("loss", "loss_lm", "loss_answer", "loss_answer_text", "loss_answer_image", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    assert logs[0][-1]["loss"] != pytest.approx(logs[0][0]["loss"], rel=1e-3)  # it did train
    vision = [[json.loads(x) for x in (tmp_path / d / "vision_log.jsonl").read_text().splitlines()]
              for d in ("one", "two")]
    assert len(vision[0]) == len(vision[1]) == vision_steps
    for a, b in zip(*vision):
        for key in ("loss_vision", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)

    one, two = (load_file(tmp_path / d / "model.safetensors") for d in ("one", "two"))
    base = load_file(Path(tiny_dir) / "model.safetensors")
    assert one.keys() == two.keys()
    moved = 0
    for key in one:
        # AdamW divides by sqrt(v): a gradient element near zero turns round-off into a visible step, so
        # compare the tensors by their mean difference against their mean update, and bound the worst element.
        diff, update = (one[key] - two[key]).abs(), (one[key] - base[key]).abs()
        assert diff.max() < 1e-3 and diff.mean() <= 1e-3 * update.mean() + 1e-9, key
        moved += not torch.equal(one[key], base[key])
    assert moved > len(one) // 2  # most tensors trained (vision included: images in every step)
    rec = json.loads((tmp_path / "two" / "config.json").read_text())["puma"]["pretrain"]
    assert rec["processes"] == 2 and rec["batch_size"] == 4
    assert rec["numerics"]["threads"] == 1 and rec["numerics"]["cpu_capability"]  # where its round-off came from
