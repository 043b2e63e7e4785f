"""Pretraining on deterministic image/text pairs under torchrun (2 x gloo), for test_pretrain_distributed.

pretrain_dist_worker.py BASE OUT BATCH_PER_PROCESS STEPS IMAGE_DIR N_PAIRS VISION_STEPS
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    import torch
    from train_helpers import image_pairs

    from puma.config import PromptSettings
    from puma.train.pretrain import pretrain_base

    torch.set_num_threads(1)
    base, out, batch, steps, image_dir, n, vision_steps = sys.argv[1:8]
    pretrain_base(base, out, image_pairs(int(n), Path(image_dir), with_scenes=True), PromptSettings(),
                  steps=int(steps), batch_size=int(batch), lr=5e-3, answer_weight=4.0, vision_steps=int(vision_steps))
