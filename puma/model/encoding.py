"""From items to ``[RET]`` states: :func:`collate` (prompts -> model inputs) and :func:`ret_states`,
plus :func:`length_key`, the order items are batched in.

Training calls both inside its own loop (student and full-depth teacher on the same batch);
:class:`puma.PumaRetriever` calls them for ``encode_query``/``encode_document``. Signatures are an
interface (docs/design.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature

from puma.model.prompts import as_item, render_prompt
from puma.model.prune import qwen2vl_model
from puma.model.ret import ret_positions
from puma.model.tokens import RET_TOKEN

# Keys of a collated batch that Qwen2VLModel.forward takes (ret_positions is ours).
MODEL_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def length_key(item: dict) -> tuple[bool, int]:
    """Sort key for batching: images together, then by characters of text + instruction.

    Batching items of similar length wastes less padding; callers sort by it and restore the input
    order afterwards (``puma.embed`` shortest first, :class:`puma.PumaRetriever` longest first).
    """
    return item.get("image") is not None, len(item.get("text") or "") + len(item.get("instruction") or "")


def _open_image(image, index: int):
    """A PIL RGB image from a path or a PIL image; opened only now, when the batch is built."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (FileNotFoundError, OSError) as e:
            raise type(e)(f"item {index}: cannot read image {os.fspath(image)!r}: {e}") from None
    return image.convert("RGB")


def collate(processor, items: Sequence[Any], is_query: bool, prompt_settings, ret_token: str = RET_TOKEN,
            answers: Sequence[str] | None = None) -> BatchFeature:
    """Build one left-padded model batch from items (dicts with text/image/instruction, or strings).

    ``prompt_settings`` is :class:`puma.config.PromptSettings` (pixel budget, text truncation, suffix
    mode). Returns a ``BatchFeature`` with ``input_ids``/``attention_mask``/``mm_token_type_ids``
    ``(B, S)``, and when any item has an image ``pixel_values`` ``(P, C*T*14*14)`` and
    ``image_grid_thw`` ``(n_images, 3)``, plus ``ret_positions`` ``(B,)``: the index of each row's
    last ``[RET]``. ``mm_token_type_ids`` must travel with ``input_ids``: Qwen2-VL computes its M-RoPE
    positions from it. ``answers`` (base pretraining only): one word per item after ``[RET]``.
    """
    if len(items) == 0:
        raise ValueError("collate: no items")
    items = [as_item(x, i, is_query) for i, x in enumerate(items)]
    answers = [None] * len(items) if answers is None else list(answers)
    texts = [render_prompt(processor, item, is_query, prompt_settings, ret_token, answer)
             for item, answer in zip(items, answers, strict=True)]
    images = [_open_image(item["image"], i) for i, item in enumerate(items) if item["image"] is not None]
    kwargs: dict[str, Any] = {}
    if images:
        kwargs["images"] = images
        kwargs["size"] = {"shortest_edge": prompt_settings.min_pixels, "longest_edge": prompt_settings.max_pixels}
    batch = processor(text=texts, return_tensors="pt", padding=True, padding_side="left", **kwargs)
    assert "mm_token_type_ids" in batch, "processor did not return mm_token_type_ids (needed for M-RoPE)"
    ret_id = processor.tokenizer.convert_tokens_to_ids(ret_token)
    batch["ret_positions"] = ret_positions(batch["input_ids"], batch["attention_mask"], ret_id)  # (B,)
    return batch


def mrope_positions(model, batch) -> torch.Tensor:
    """Qwen2-VL's own M-RoPE positions ``(3, B, S)`` for a collated batch (``get_rope_index``).

    Computed for every batch, text-only ones too: left at ``None``, transformers uses plain
    ``arange(S)`` for a text-only batch, so left padding shifts a row's positions (RoPE is relative,
    so only round-off changes, but padded and unpadded rows would differ). Explicit positions make
    student and teacher, padded and unpadded rows see exactly the same positions. Image tokens get
    (temporal, height, width) positions; text tokens count on from there.
    """
    inner = qwen2vl_model(model)
    positions, _ = inner.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch.get("image_grid_thw"),
        attention_mask=batch.get("attention_mask"),
    )
    return positions  # (3, B, S); padded slots are 0


def ret_states(model, batch, ret_id: int | None = None) -> torch.Tensor:
    """Un-normalised final-norm hidden state at each row's last ``[RET]``: ``(B, H)``.

    ``model``: a ``Qwen2VLModel`` (pruned or full depth), a ``Qwen2VLForConditionalGeneration`` or
    a peft-wrapped one (LoRA layers live inside the modules, so calling the inner model keeps them).
    M-RoPE positions come from the model's ``get_rope_index`` (:func:`mrope_positions`), so a student
    and its full-depth teacher see identical inputs and positions. Positions come from
    ``batch["ret_positions"]`` (set by :func:`collate`), else from ``ret_id``.
    """
    inner = qwen2vl_model(model)
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    if "ret_positions" in batch:
        pos = batch["ret_positions"]
    elif ret_id is not None:
        pos = ret_positions(batch["input_ids"], batch.get("attention_mask"), ret_id)
    else:
        raise ValueError("ret_states: batch has no ret_positions (use collate) and no ret_id was given")
    hidden = inner(**inputs, position_ids=mrope_positions(inner, inputs), use_cache=False).last_hidden_state  # (B, S, H)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, pos.to(hidden.device)]  # (B, H)
