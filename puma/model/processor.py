"""The Qwen2-VL processor without a video processor, and :func:`load_processor`.

On CPU machines torchvision is absent (it does not load beside the CPU torch build), so the image
processor falls back to the PIL implementation and ``Qwen2VLProcessor`` cannot be built: its
``__init__`` insists on a video processor. :class:`PumaQwen2VLProcessor` takes only an image
processor and a tokenizer; everything else (image-token expansion, ``mm_token_type_ids`` for M-RoPE,
``image_grid_thw``) is Qwen2-VL's own code.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

# The Qwen2-VL chat template (hub `chat_template.json`), so prompts look exactly as for the real model.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class PumaQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with image processor + tokenizer only (no video processor needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        # Skip Qwen2VLProcessor.__init__ (it requires a video processor); ProcessorMixin does the rest.
        super(Qwen2VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)


def _image_processor_class():
    """The fast (torchvision) image processor when usable, else the PIL one."""
    try:
        import torchvision  # noqa: F401
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor
    except Exception:  # noqa: BLE001 - torchvision missing or broken beside the CPU torch build
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil


def load_processor(path: str | os.PathLike, min_pixels: int | None = None, max_pixels: int | None = None):
    """Load the processor saved beside a (tiny, pruned or hub) Qwen2-VL checkpoint.

    ``min_pixels``/``max_pixels`` override the saved image budget (``prompt.*`` in params.yaml).
    Works offline for local directories; a hub id is resolved by ``from_pretrained`` as usual.
    """
    path = str(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {}
    if min_pixels is not None or max_pixels is not None:
        saved = _image_processor_class().from_pretrained(path).size
        kwargs["size"] = {
            "shortest_edge": min_pixels or saved["shortest_edge"],
            "longest_edge": max_pixels or saved["longest_edge"],
        }
    image_processor = _image_processor_class().from_pretrained(path, **kwargs)
    template = getattr(tokenizer, "chat_template", None) or _saved_chat_template(path) or QWEN2VL_CHAT_TEMPLATE
    return PumaQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _saved_chat_template(path: str) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        f = Path(path) / name
        if f.is_file():
            text = f.read_text()
            if name.endswith(".json"):
                import json

                return json.loads(text).get("chat_template")
            return text
    return None
