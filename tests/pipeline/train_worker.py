"""Run stage 1 on deterministic text pairs (for the kill -9 resume test): worker.py PARAMS MODEL OUT N."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    import torch
    from train_helpers import text_pairs

    from puma.config import load_settings
    from puma.train.stage1 import train_stage1

    torch.set_num_threads(1)
    params, model, out, n = sys.argv[1:5]
    train_stage1(load_settings(params), model, out, dataset=text_pairs(int(n)), progress=False)
