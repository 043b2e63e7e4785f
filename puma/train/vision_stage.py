"""The vision stage of the embedded tiny base's pretraining (``pretrain.vision_steps``): before the language
model's steps, the random vision tower learns to see.

A real MLLM is not assembled from a random vision tower: Qwen2-VL's ViT started from a pretrained (DFN CLIP)
tower, and its language model from a pretrained Qwen2. The miniature's tower is random, and at the language
model's rate the next-token loss alone does not teach it to see (docs/results/reproducibility.md, session 27:
its tokens' norm grows from 0.2 to 130-1000 while the pictures' tokens become one vector). This stage is the
miniature of that CLIP start: the tower's output tokens, mean-pooled per picture, feed one linear head per
scene attribute (colour, shape, texture, trim, size, position: the attributes a caption of the picture names,
:func:`puma.train.pretrain.described_attributes`), trained with cross-entropy on the train split's distinct
pictures whose scene is known (:func:`puma.train.pretrain.scene_pictures`). The heads are dropped afterwards; only
the tower changes.

Data-parallel like the language steps: every rank draws the same pictures for a step and takes its slice; the
summed gradients are one process's gradient of the whole step (:func:`vision_stage`).
"""

from __future__ import annotations

import random
from typing import Any

import torch


class AttributeHeads(torch.nn.Module):
    """One linear classifier per scene attribute over the pooled tower tokens; the classes are the values the
    pictures take (sorted, so every rank and every run builds the same heads)."""

    def __init__(self, dim: int, pictures: list[tuple[dict, dict[str, str]]]) -> None:
        super().__init__()
        values: dict[str, set[str]] = {}
        for _, attrs in pictures:
            for attr, value in attrs.items():
                values.setdefault(attr, set()).add(value)
        self.classes = {attr: sorted(v) for attr, v in sorted(values.items())}
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(dim, len(c)) for a, c in self.classes.items()})

    def loss_sums(self, pooled: torch.Tensor, attrs: list[dict[str, str]]) -> tuple[torch.Tensor, int]:
        """The summed cross-entropy over every (picture, attribute) the pictures describe, and its count."""
        import torch.nn.functional as F

        total, count = pooled.new_zeros(()), 0
        for attr, classes in self.classes.items():
            rows = [i for i, a in enumerate(attrs) if attr in a]
            if not rows:
                continue
            target = torch.tensor([classes.index(attrs[i][attr]) for i in rows])
            total = total + F.cross_entropy(self.heads[attr](pooled[rows]), target, reduction="sum")
            count += len(rows)
        return total, count


def pooled_tokens(visual, batch) -> torch.Tensor:
    """Each picture's mean output token of the vision tower ``(n_pictures, hidden)``, from a collated batch
    (``pixel_values``, ``image_grid_thw``): the tower returns the pictures' merged tokens one after another."""
    grid = batch["image_grid_thw"]
    tokens = visual(batch["pixel_values"], grid_thw=grid)
    tokens = getattr(tokens, "pooler_output", tokens)
    per_picture = (grid.prod(-1) // visual.spatial_merge_size**2).tolist()
    return torch.stack([t.mean(0) for t in torch.split(tokens, per_picture)])


def vision_stage(model, processor, pictures: list[tuple[dict, dict[str, str]]], prompt, *, steps: int,
                 step_rows: int, lr: float, seed: int, log=None) -> list[dict[str, Any]]:
    """Train ``model``'s vision tower for ``steps`` steps of ``step_rows`` pictures (drawn with ``seed``, the same
    on every rank; each rank takes its slice) to name each picture's attributes from its pooled tokens
    (:class:`AttributeHeads`, AdamW at ``lr``, gradients clipped to norm 1); the heads are then dropped.
    Returns one log row per step: ``vision_step``, ``loss_vision`` (the mean cross-entropy per attribute of
    the whole step) and ``grad_norm``."""
    from puma import distributed
    from puma.model.encoding import collate
    from puma.model.prune import vision_tower

    world, rank = distributed.world_size(), distributed.rank()
    if step_rows % world:
        raise ValueError(f"a vision step of {step_rows} pictures does not split over {world} processes")
    if not pictures:
        raise ValueError("pretrain.vision_steps: the train split has no picture with a known scene")
    visual = vision_tower(model)
    hidden = model.config.text_config.hidden_size  # the merged tokens are the decoder's width
    torch.manual_seed(seed)
    heads = AttributeHeads(hidden, pictures)
    params = [*visual.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    n = step_rows // world
    rows = []
    visual.train()
    for step in range(steps):
        chunk = [pictures[rng.randrange(len(pictures))] for _ in range(step_rows)]
        mine = chunk[rank * n:(rank + 1) * n]
        batch = collate(processor, [item for item, _ in mine], False, prompt)
        total, count = heads.loss_sums(pooled_tokens(visual, batch), [attrs for _, attrs in mine])
        counts = torch.tensor([float(count), float(total.detach())], dtype=torch.float64)
        distributed.all_reduce_sum(counts)
        loss = total / counts[0].clamp(min=1).float()  # this rank's share of the step's mean
        opt.zero_grad()
        loss.backward()
        distributed.all_reduce_grads(params)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        mean = float(counts[1] / counts[0].clamp(min=1))
        rows.append({"vision_step": step + 1, "loss_vision": round(mean, 5), "grad_norm": round(grad_norm, 6)})
        if log is not None and rank == 0 and ((step + 1) % 25 == 0 or step == 0):
            log(f"vision step {step + 1}/{steps} attribute loss {mean:.3f}")
    return rows
