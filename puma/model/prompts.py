"""Retrieval prompts: Qwen2-VL's chat template around the input, ending in ``[RET]``.

User turn = the image (if any), then ``instruction + "\\n" + text`` (queries only carry the
instruction), normalised and truncated as the reference does, then
``"\\nSummarize above {image | sentence | image and sentence} in one word: "``; the assistant turn is
``"[RET]."``. The suffix names the item's real modality (decision 4, ``prompt.suffix: modality``) or,
with ``prompt.suffix: reference``, follows the reference code (any text, instruction included, makes
an image input "image and sentence").
"""

from __future__ import annotations

import os
from typing import Any

from puma.model.tokens import RET_TOKEN

Item = dict[str, Any]  # {"text": str | None, "image": str | Path | PIL.Image | None, "instruction": str | None}


def as_item(x: Any, index: int, is_query: bool) -> Item:
    """Check one encoder input and return it as an item dict; a plain string is a text item."""
    if isinstance(x, str):
        x = {"text": x}
    if not isinstance(x, dict):
        raise TypeError(f"item {index}: expected a str or a dict with text/image/instruction, got {type(x).__name__}")
    unknown = set(x) - {"text", "image", "instruction"}
    if unknown:
        raise ValueError(f"item {index}: unknown keys {sorted(unknown)} (allowed: text, image, instruction)")
    item = {"text": x.get("text") or None, "image": x.get("image"), "instruction": x.get("instruction") or None}
    if item["image"] is not None and not (isinstance(item["image"], (str, os.PathLike)) or hasattr(item["image"], "convert")):
        raise TypeError(f"item {index}: image must be a path or a PIL image, got {type(item['image']).__name__}")
    if item["text"] is None and item["image"] is None:
        raise ValueError(f"item {index}: needs text or an image (got neither)")
    if item["instruction"] is not None and not is_query:
        raise ValueError(f"item {index}: documents (candidates) take no instruction; only queries do")
    return item


def normalize_text(text: str, tokenizer=None, max_tokens: int | None = None) -> str:
    """The reference's text clean-up: strip, drop ``\\r`` and ``"``, truncate, capitalise, end with ``.``.

    Truncation keeps the first ``max_tokens`` tokens of ``tokenizer`` (params ``prompt.max_text_tokens``),
    so a long caption cannot push ``[RET]`` past the context or dominate the batch's padding.
    """
    text = text.replace("\r", "").replace('"', "").strip()
    if tokenizer is not None and max_tokens is not None:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > max_tokens:
            text = tokenizer.decode(ids[:max_tokens]).strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def suffix_modality(item: Item, mode: str = "modality") -> str:
    """``"image"``, ``"sentence"`` or ``"image and sentence"`` for the prompt's summary line."""
    has_image = item["image"] is not None
    has_text = item["text"] is not None or (mode == "reference" and item["instruction"] is not None)
    if mode not in ("modality", "reference"):
        raise ValueError(f"prompt.suffix must be 'modality' or 'reference', got {mode!r}")
    if has_image and has_text:
        return "image and sentence"
    return "image" if has_image else "sentence"


def build_messages(item: Item, is_query: bool, prompt, tokenizer=None, ret_token: str = RET_TOKEN,
                   answer: str | None = None) -> list[dict]:
    """Chat messages for one item. ``prompt`` is ``PromptSettings`` (``max_text_tokens``, ``suffix``).

    ``answer``: the one word after ``[RET]`` in the assistant turn (``"[RET] word."``; base pretraining,
    :mod:`puma.train.pretrain`); retrieval prompts have none. The prefix up to ``[RET]`` is the same.
    """
    parts = [item["instruction"] if is_query else None, item["text"]]
    # A literal "[RET]" in user text would become a second embedding position: remove it.
    body = "\n".join(p.replace(ret_token, "") for p in parts if p)
    body = normalize_text(body, tokenizer, prompt.max_text_tokens) if body else ""
    text = f"{body}\nSummarize above {suffix_modality(item, prompt.suffix)} in one word: "
    content = ([{"type": "image"}] if item["image"] is not None else []) + [{"type": "text", "text": text}]
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": f"{ret_token} {answer}." if answer else
                                           f"{ret_token}."}]},
    ]


def render_prompt(processor, item: Item, is_query: bool, prompt, ret_token: str = RET_TOKEN,
                  answer: str | None = None) -> str:
    """The full prompt string (system turn from the template, user turn, assistant ``[RET].``)."""
    messages = build_messages(item, is_query, prompt, processor.tokenizer, ret_token, answer)
    return processor.apply_chat_template(messages, tokenize=False)
