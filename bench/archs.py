"""Real Qwen2-VL architectures with random weights, synthetic encode batches, weight-sharing pruned copies.

No download is needed: the 2B/7B hub configs ship in ``puma/model/configs/``. Weights are random
(timing and memory do not depend on their values), filled from a small random pool so building the
2B takes seconds instead of the ~35 s of the default initialisers.

Inputs mimic what :func:`puma.model.collate` produces for one retrieval prompt: chat-template tokens,
optionally ``<|vision_start|> <|image_pad|> x n <|vision_end|>`` and the query text, ending at the
``[RET]`` position (the last token). Image patches are random ``pixel_values`` with the grid the
Qwen2-VL image processor gives an ``image_hw`` photo under the ``min_pixels``/``max_pixels`` budget.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch

from puma.model.random_arch import empty_model, fill_random_

ARCHS = ("tiny", "2b", "7b")  # tiny = the embedded default; 2b/7b = hub configs bundled with puma.model
Kind = Literal["text", "image", "image+text"]
KINDS: tuple[Kind, ...] = ("text", "image", "image+text")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_random(arch: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 attn_implementation: str = "sdpa", seed: int = 0, tiny_depth: int = 8, k: int | None = None,
                 config=None):
    """A ``Qwen2VLForConditionalGeneration`` of ``arch`` with random weights, in eval mode.

    ``arch="tiny"`` is the embedded default (:func:`puma.model.tiny.build_tiny`); ``2b``/``7b`` load
    the bundled hub config. Norm weights are 1 and biases 0 (activations keep a sane scale through
    28 layers). With ``k``, the model is cut by :func:`puma.model.prune_layers` *before* its weights
    are written (a ``Qwen2VLModel`` is returned), so the dropped layers never occupy memory.
    ``config`` replaces the bundled one of ``2b``/``7b`` (e.g. a scaled-down copy for a dry run).
    """
    from puma.model import prune_layers
    from puma.model.flops import load_config

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {ARCHS}")
    if arch == "tiny":
        from puma.data.corpus import tokenizer_corpus
        from puma.model.tiny import build_tiny

        model, _ = build_tiny(seed, tiny_depth, corpus=tokenizer_corpus(seed))
        model.config._attn_implementation = attn_implementation
        model = prune_layers(model, k) if k else model
        return model.to(device=device, dtype=dtype).eval()
    config = copy.deepcopy(config) if config is not None else load_config(arch)
    config._attn_implementation = attn_implementation
    model = empty_model(config, dtype, device)  # uninitialised storage, filled below
    model = prune_layers(model, k) if k else model
    fill_random_(model, seed)
    return model.eval()


def image_grid(config, image_hw: tuple[int, int], min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Patch grid ``(grid_h, grid_w)`` that the Qwen2-VL processor gives an ``image_hw`` image."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    vc = config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    h, w = smart_resize(image_hw[0], image_hw[1], factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return h // vc.patch_size, w // vc.patch_size


def make_batch(config, kind: Kind, batch_size: int, *, template_tokens: int, text_tokens: int,
               image_hw: tuple[int, int], min_pixels: int, max_pixels: int,
               device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, Any]:
    """A synthetic encode batch for ``Qwen2VLModel.forward`` (no padding; [RET] is the last token).

    Returns ``input_ids`` (B, S), ``attention_mask`` (B, S), ``mm_token_type_ids`` (B, S) and, with an
    image, ``pixel_values`` (B * gh * gw, C * T * P * P) and ``image_grid_thw`` (B, 3), where
    S = template_tokens [+ 2 + gh * gw / merge**2 image tokens] [+ text_tokens].
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    tc = config.text_config
    specials = {config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id}

    def text(n: int) -> torch.Tensor:
        ids = torch.randint(32, tc.vocab_size, (batch_size, n), generator=gen)
        ids[torch.isin(ids, torch.tensor(sorted(specials)))] = 32  # plain text only
        return ids

    head = template_tokens // 2  # system + user header before the content, suffix after it
    parts = [text(head)]
    out: dict[str, Any] = {}
    if kind in ("image", "image+text"):
        gh, gw = image_grid(config, image_hw, min_pixels, max_pixels)
        vc = config.vision_config
        n_tokens = gh * gw // vc.spatial_merge_size**2
        parts += [torch.full((batch_size, n), tok, dtype=torch.long) for tok, n in [
            (config.vision_start_token_id, 1), (config.image_token_id, n_tokens), (config.vision_end_token_id, 1)]]
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        out["pixel_values"] = torch.randn(batch_size * gh * gw, patch_dim, generator=gen).to(device, dtype)
        out["image_grid_thw"] = torch.tensor([[1, gh, gw]] * batch_size, device=device)
    if kind in ("text", "image+text"):
        parts.append(text(text_tokens))
    parts.append(text(template_tokens - head))
    input_ids = torch.cat(parts, dim=1)  # (B, S)
    out["input_ids"] = input_ids.to(device)
    out["attention_mask"] = torch.ones_like(input_ids, device=device)
    out["mm_token_type_ids"] = (input_ids == config.image_token_id).int().to(device)
    return out


def shape_of(batch: dict[str, Any]) -> str:
    """Tensor shapes of a batch for the report's metadata, e.g. ``input_ids 2x72, pixel_values 256x1176``."""
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in batch.items() if torch.is_tensor(v))


def encode(model, batch: dict[str, Any]) -> torch.Tensor:
    """The retrieval forward: final-norm hidden state at the last ([RET]) position, (B, H).

    Runs the inner ``Qwen2VLModel`` (no ``lm_head``), as the retriever does.
    """
    inner = model.model if hasattr(model, "lm_head") else model
    hidden = inner(**batch, use_cache=False).last_hidden_state  # (B, S, H)
    return hidden[:, -1]


def text_layers(model) -> torch.nn.ModuleList:
    inner = model.model if hasattr(model, "lm_head") else model
    return inner.language_model.layers


def pruned_copy(model, k: int):
    """A k-layer pruned model that *shares* every weight with ``model`` (no second copy in memory).

    The module tree is deep-copied with all parameters and buffers memoised to themselves, then cut
    by :func:`puma.model.prune_layers`, so the benchmark times exactly the project's pruning.
    """
    from puma.model import prune_layers

    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    twin = copy.deepcopy(model, memo)
    pruned = prune_layers(twin, k)
    pruned = pruned if pruned is not None else twin
    shared = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in shared for p in pruned.parameters()), "pruned copy must share weights"
    return pruned


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def human_count(n: float) -> str:
    exp = min(int(math.log10(max(abs(n), 1))) // 3, 4)
    return f"{n / 10 ** (3 * exp):.3g}{['', 'K', 'M', 'B', 'T'][exp]}"
