"""The embedded default: a tiny *random* Qwen2-VL with an offline-trained tokenizer and processor.

Real ``Qwen2VLForConditionalGeneration`` architecture (M-RoPE text decoder, 2-block vision tower
with patch merger) at toy width, so every code path that runs on Qwen2-VL-2B/7B runs here in
milliseconds on a CPU. Deterministic: two builds with the same seed and corpus write the same bytes.

The tokenizer is trained on a corpus the caller passes (``puma model tiny`` gives it
:func:`puma.data.corpus.tokenizer_corpus`), so nothing in ``puma.model`` depends on the data package.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from puma.model.processor import QWEN2VL_CHAT_TEMPLATE, PumaQwen2VLProcessor, _image_processor_class
from puma.model.tokens import RET_TOKEN

# Qwen2-VL's special tokens (same strings as the hub tokenizer), plus PUMA's retrieval token.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width).
    "rope_parameters": {"rope_type": "default", "type": "mrope", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
}
TINY_VISION = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
# Tiny image budget: 4..16 merged visual tokens (the paper's is 4..300).
TINY_MIN_PIXELS = 4 * 28 * 28
TINY_MAX_PIXELS = 16 * 28 * 28


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained offline on ``corpus`` (project-like text), with Qwen2-VL specials and ``[RET]``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=4096,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    )
    # [RET] is a real added (special) token: one id, never split, never normalised.
    fast.add_special_tokens({"additional_special_tokens": [RET_TOKEN]})
    fast.chat_template = QWEN2VL_CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer: PreTrainedTokenizerFast, num_layers: int = 8) -> Qwen2VLConfig:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    ]}
    text = dict(TINY_TEXT, num_hidden_layers=num_layers, max_window_layers=num_layers,
                vocab_size=len(tokenizer), bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Qwen2VLConfig(text_config=text, vision_config=TINY_VISION, tie_word_embeddings=False, **ids)


def build_tiny(seed: int = 0, num_layers: int = 8, *, corpus: Iterable[str]):
    """Return ``(model, processor)``: a random tiny Qwen2-VL and its processor (tokenizer trained on
    ``corpus``), deterministic for ``seed`` and ``corpus``."""
    tokenizer = train_tokenizer(corpus)
    config = tiny_config(tokenizer, num_layers)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    image_processor = _image_processor_class()(
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS}
    )
    processor = PumaQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=QWEN2VL_CHAT_TEMPLATE)
    return model, processor


def save_tiny(out: str | os.PathLike, seed: int = 0, num_layers: int = 8, *, corpus: Iterable[str]) -> Path:
    """Write the tiny checkpoint (safetensors + config + tokenizer + processor) to ``out`` atomically."""
    from puma.io import atomic_dir

    out = Path(out)
    model, processor = build_tiny(seed, num_layers, corpus=corpus)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
