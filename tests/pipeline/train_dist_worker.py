"""Stage 2 on deterministic image/text pairs; run as one process or under torchrun (2 x gloo).

worker.py PARAMS MODEL OUT N IMAGE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    import torch
    from train_helpers import image_pairs

    from puma.config import load_settings
    from puma.train.stage2 import train_stage2

    torch.set_num_threads(1)
    params, model, out, n, image_dir = sys.argv[1:6]
    train_stage2(load_settings(params), model, out, dataset=image_pairs(int(n), Path(image_dir)), progress=False)
