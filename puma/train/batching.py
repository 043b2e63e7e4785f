"""Model batches for training: queries and candidates in one forward, and a content key per row.

Queries and candidates are collated separately (queries carry instructions) and then joined into one
left-padded batch, so the student (and a live teacher) run one forward per step. One forward is also
what data-parallel training needs: DDP expects a single forward before each backward.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import BatchFeature

# Per-row (B, S) tensors that are padded on the left when batches of different lengths are joined.
_ROW_KEYS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0}


def concat_batches(first: BatchFeature, second: BatchFeature, pad_id: int) -> BatchFeature:
    """Join two collated batches row-wise: ``(B1, S1) + (B2, S2) -> (B1 + B2, max(S1, S2))``.

    Left padding is extended (``ret_positions`` shift by the added padding); images keep their order,
    first batch's before the second's, matching the row order Qwen2-VL assigns them by.
    """
    length = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    parts = [left_pad_batch(b, length, pad_id) for b in (first, second)]
    out: dict[str, torch.Tensor] = {}
    for key in (*_ROW_KEYS, "ret_positions", "pixel_values", "image_grid_thw"):
        present = [b[key] for b in parts if key in b]
        if present:
            out[key] = torch.cat(present)
    return BatchFeature(out)


def left_pad_batch(batch: BatchFeature, length: int, pad_id: int) -> BatchFeature:
    """``batch`` with every row left-padded to ``length`` (``ret_positions`` shifted; images untouched): the
    rows a longer batch would have given them."""
    width = batch["input_ids"].shape[1]
    if length < width:
        raise ValueError(f"cannot pad a batch of length {width} to {length}")
    out = dict(batch)
    for key, fill in _ROW_KEYS.items():
        if key in batch:
            out[key] = _left_pad(batch[key], length, pad_id if fill is None else fill)
    if "ret_positions" in batch:
        out["ret_positions"] = batch["ret_positions"] + (length - width)
    return BatchFeature(out)


def _left_pad(t: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    pad = t.new_full((t.shape[0], length - t.shape[1]), fill)
    return torch.cat([pad, t], dim=1)


def row_keys(batch: BatchFeature, vision_start_id: int) -> list[str]:
    """A content hash per row: the row's unpadded token ids plus its images' grids and pixel values.

    Two rows get the same key exactly when the model would receive the same input, so a cache keyed
    this way is never used with a changed prompt, tokenizer, image or image budget.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    grids = batch.get("image_grid_thw")
    pixels = batch.get("pixel_values")
    patches = [] if grids is None else grids.prod(-1).tolist()  # patches per image
    starts = [0]
    for n in patches:
        starts.append(starts[-1] + n)
    image = 0
    keys = []
    for row in range(ids.shape[0]):
        tokens = ids[row][mask[row]]
        h = hashlib.sha256(tokens.to(torch.int64).numpy().tobytes())
        for _ in range(int((tokens == vision_start_id).sum())):
            h.update(grids[image].to(torch.int64).numpy().tobytes())
            h.update(pixels[starts[image] : starts[image + 1]].float().numpy().tobytes())
            image += 1
        keys.append(h.hexdigest())
    if grids is not None and image != len(patches):
        raise ValueError(f"batch has {len(patches)} images but its rows reference {image}")
    return keys
