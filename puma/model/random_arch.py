"""Random-weight checkpoints of the real Qwen2-VL-2B / 7B architectures (no download).

``puma model random --arch 2b --out DIR`` writes a ``Qwen2VLForConditionalGeneration`` built from the
bundled hub config (puma/model/configs/) with random weights in bf16 as safetensors, beside the
offline-trained tokenizer of the tiny model (Qwen2-VL's special tokens + ``[RET]``) and a processor
with the paper's image budget (4..300 x 28 x 28). The embedding keeps the real vocabulary's row count
(151936 / 152064): the small offline tokenizer uses the first rows, like the hub tokenizer leaves spare
rows. Only the special-token ids of the config are changed to the offline tokenizer's. The folder
loads with plain ``Qwen2VLForConditionalGeneration.from_pretrained`` / ``Qwen2VLModel.from_pretrained``
and is a drop-in ``model.base`` for the whole pipeline (profile ``rehearsal-2b``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

ARCHES = ("2b", "7b")
# Qwen2-VL's image budget (REFERENCE 2): 4..300 merged 28 x 28 patches.
PAPER_MIN_PIXELS = 4 * 28 * 28
PAPER_MAX_PIXELS = 300 * 28 * 28


@torch.no_grad()
def fill_random_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fill every weight matrix from one random pool (fast), norms with 1, biases with 0."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.empty(1 << 22).normal_(0.0, std, generator=gen)
    pools: dict[tuple, torch.Tensor] = {}
    for name, p in model.named_parameters():  # tied parameters are listed once
        if name.endswith("bias"):
            p.zero_()
        elif p.ndim == 1:
            p.fill_(1.0)
        else:
            key = (p.dtype, p.device)
            src = pools.setdefault(key, pool.to(dtype=p.dtype, device=p.device))
            flat = p.view(-1)
            # A per-parameter offset so layers do not hold identical values.
            off = int(torch.randint(0, src.numel() // 2, (1,), generator=gen))
            for start in range(0, flat.numel(), src.numel() - off):
                n = min(src.numel() - off, flat.numel() - start)
                flat[start:start + n].copy_(src[off:off + n])


def random_config(arch: str, tokenizer):
    """The bundled hub config of ``arch`` with the special-token ids of ``tokenizer`` (dimensions untouched)."""
    from puma.model.flops import load_config

    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHES)}")
    config = load_config(arch)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    ]}
    for name, val in ids.items():
        setattr(config, name, val)
    text = config.text_config
    text.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text.eos_token_id, text.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if len(tokenizer) > text.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than {arch}'s {text.vocab_size} rows")
    return config


def empty_model(config, dtype: torch.dtype, device: str | torch.device = "cpu"):
    """A ``Qwen2VLForConditionalGeneration`` of ``config`` in ``dtype`` on ``device`` with UNINITIALISED
    weights (untouched storage, not yet resident; fill it, e.g. with :func:`fill_random_`), embeddings tied
    where the config says so. ``device="meta"`` gives the structure only."""
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():
            model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.tie_weights()  # no_init_weights skips tying; the 2B shares embed_tokens with lm_head
    return model


def build_random_arch(arch: str, corpus: Iterable[str], seed: int = 0, device: str | torch.device = "cpu",
                      dtype=torch.bfloat16):
    """``(model, processor)``: a random ``Qwen2VLForConditionalGeneration`` of ``arch`` and its processor.

    ``corpus``: the text the offline tokenizer is trained on (the CLI passes the embedded default's,
    :func:`puma.data.corpus.tokenizer_corpus`; ``puma.model`` does not depend on the synthetic world).

    ``device="meta"`` builds the structure only (no memory; for configs and parameter counts).
    Deterministic for ``seed`` (weights from :func:`fill_random_`; norms 1, biases 0).
    """
    from puma.model.processor import QWEN2VL_CHAT_TEMPLATE, PumaQwen2VLProcessor, _image_processor_class
    from puma.model.tiny import train_tokenizer

    tokenizer = train_tokenizer(corpus)
    config = random_config(arch, tokenizer)
    config.dtype = dtype
    model = empty_model(config, dtype, device)
    if str(device) != "meta":
        fill_random_(model, seed)
    image_processor = _image_processor_class()(
        size={"shortest_edge": PAPER_MIN_PIXELS, "longest_edge": PAPER_MAX_PIXELS}
    )
    processor = PumaQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=QWEN2VL_CHAT_TEMPLATE)
    return model.eval(), processor


def save_random_arch(arch: str, out: str | os.PathLike, corpus: Iterable[str], seed: int = 0,
                     dtype=torch.bfloat16) -> Path:
    """Write the random ``arch`` checkpoint (safetensors, config, tokenizer, processor) to ``out`` atomically."""
    from puma.io import atomic_dir

    model, processor = build_random_arch(arch, corpus, seed, "cpu", dtype)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out)
