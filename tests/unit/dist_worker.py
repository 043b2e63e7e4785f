"""Worker for test_distributed: run under `torchrun --nproc_per_node 2` on gloo.

Each rank takes its half of a fixed batch, gathers, computes InfoNCE and MAC on the gathered batch,
and writes its loss and the gradient of its local embeddings (json) to OUT/rank<r>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from puma.distributed import gather
from puma.losses import info_nce, mac_loss, modality_ids


def batch(n=6, h=8):
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(n, h, generator=g), torch.randn(n, h, generator=g)
    mods = torch.randint(0, 3, (n,), generator=g)
    return q, c, mods


def losses(q, c, mods):
    return {"info_nce": info_nce(q, c, 0.05), "mac": mac_loss(q, c, mods, mods, 0.03, 0.021)}


def main(out: str) -> None:
    dist.init_process_group("gloo")
    r = dist.get_rank()
    q, c, mods = batch()
    # Uneven split on purpose (4 + 2): the gather must handle ranks with different batch sizes.
    bounds = [0, 4, 6]
    sl = slice(bounds[r], bounds[r + 1])
    result = {}
    for name in ("info_nce", "mac"):
        ql, cl = q[sl].clone().requires_grad_(), c[sl].clone().requires_grad_()
        loss = losses(gather(ql), gather(cl), gather(modality_ids(mods[sl])))[name]
        loss.backward()
        result[name] = {"loss": loss.item(), "q_grad": ql.grad.tolist(), "c_grad": cl.grad.tolist(),
                        "slice": [sl.start, sl.stop]}
    Path(out, f"rank{r}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
