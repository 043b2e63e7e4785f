"""Analytic forward FLOPs per sample of Qwen2-VL, full depth or pruned to ``k`` layers.

Counted the way ``torch.utils.flop_counter.FlopCounterMode`` counts (tests check equality on the real
2B/7B configs): ``2*m*n*k`` per matmul (biases, norms, activations and the embedding lookup are not
counted), ``2*out*in*kernel`` per convolution, and attention as two batched matmuls over the full
``S x S`` score matrix (no causal discount). Elementwise work (M-RoPE tables and rotations, softmax)
is not counted, as FlopCounterMode does not count it. One sample = one image of ``image_tokens`` merged visual
tokens (``4*image_tokens`` patches before the 2x2 merge) plus ``text_tokens`` other tokens.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
KNOWN_CONFIGS = {"2b": CONFIG_DIR / "qwen2-vl-2b-instruct.config.json", "7b": CONFIG_DIR / "qwen2-vl-7b-instruct.config.json"}


def load_config(base: str | os.PathLike):
    """A ``Qwen2VLConfig`` from ``2b``/``7b`` (bundled hub configs), a config JSON, or a checkpoint dir."""
    from transformers import Qwen2VLConfig

    path = KNOWN_CONFIGS.get(str(base).lower(), Path(base))
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Qwen2-VL config (give 2b, 7b, a config.json or a checkpoint dir)")
    return Qwen2VLConfig.from_json_file(path)


def vision_flops(vision_config, patches: int) -> int:
    """Vision tower + merger on one image of ``patches`` patches (a multiple of ``merge**2``)."""
    v = vision_config
    e, r = v.embed_dim, v.mlp_ratio
    merge = v.spatial_merge_size**2
    assert patches % merge == 0, f"{patches} patches do not merge {merge}:1"
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size**2
    embed = 2 * patches * e * patch_in  # Conv3d patch embedding
    # Per block: fused qkv (E->3E), proj (E->E), MLP (E->rE->E); attention within the image.
    block = 2 * patches * (3 * e * e + e * e + 2 * r * e * e) + 4 * patches * patches * e
    merged, wide = patches // merge, e * merge
    merger = 2 * merged * (wide * wide + wide * v.hidden_size)  # MLP over 2x2 concatenated patches
    return embed + v.depth * block + merger


def decoder_layer_flops(text_config, seq: int) -> int:
    """One decoder layer on ``seq`` tokens: q/k/v/o projections, SwiGLU MLP, attention scores + values."""
    t = text_config
    h, inter = t.hidden_size, t.intermediate_size
    head_dim = getattr(t, "head_dim", None) or h // t.num_attention_heads
    q_dim, kv_dim = t.num_attention_heads * head_dim, t.num_key_value_heads * head_dim
    proj = 2 * seq * (h * q_dim + 2 * h * kv_dim + q_dim * h)
    mlp = 2 * seq * 3 * h * inter
    attn = 4 * seq * seq * q_dim  # Q K^T and A V, every head at full S x S
    return proj + mlp + attn


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs of one sample, by part (``lm_head`` only if asked for; a retriever has none)."""

    layers: int
    image_tokens: int
    text_tokens: int
    vision: int
    decoder: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.vision + self.decoder + self.lm_head

    def as_dict(self) -> dict:
        return dict(asdict(self), total=self.total)


def forward_flops(config, image_tokens: int, text_tokens: int, layers: int | None = None, lm_head: bool = False) -> Flops:
    """FLOPs of one forward pass with the first ``layers`` decoder layers.

    ``layers=None`` is the full depth. ``lm_head=True`` adds the vocabulary projection at every
    position, as a ``ForConditionalGeneration`` forward computes it (a retriever does not).
    """
    text = config.text_config
    depth = text.num_hidden_layers
    layers = depth if layers is None else layers
    if not 1 <= layers <= depth:
        raise ValueError(f"layers must be in 1..{depth}, got {layers}")
    seq = image_tokens + text_tokens
    patches = image_tokens * config.vision_config.spatial_merge_size**2
    vision = vision_flops(config.vision_config, patches) if image_tokens else 0
    decoder = layers * decoder_layer_flops(text, seq)
    head = 2 * seq * text.hidden_size * text.vocab_size if lm_head else 0
    return Flops(layers, image_tokens, text_tokens, vision, decoder, head)
