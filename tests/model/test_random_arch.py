"""`puma model random`: the real Qwen2-VL-2B/7B architectures with random weights (built on meta here)."""

from __future__ import annotations

import pytest
import torch

from puma.data.corpus import tokenizer_corpus
from puma.model.prune import count_params, prune_layers
from puma.model.random_arch import build_random_arch


@pytest.mark.parametrize("arch,hidden,vocab,full,pruned", [
    ("2b", 1536, 151936, 2_208_985_600, 1_460_220_416),
    ("7b", 3584, 152064, 8_291_375_616, None),
])
def test_random_arch_on_meta(arch, hidden, vocab, full, pruned):
    model, processor = build_random_arch(arch, tokenizer_corpus(0), device="meta")
    text = model.config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.vocab_size) == (28, hidden, vocab)
    assert next(model.parameters()).device.type == "meta" and next(model.parameters()).dtype == torch.bfloat16
    total = sum(p.numel() for p in model.parameters())
    assert total == full
    assert round(total / 1e9, 3) == round(full / 1e9, 3)
    tok = processor.tokenizer
    assert "[RET]" in tok.get_vocab() and len(tok) < vocab  # the real rows, a small offline vocabulary
    assert model.get_input_embeddings().weight.shape[0] == vocab
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    ip = processor.image_processor
    assert (ip.size["shortest_edge"], ip.size["longest_edge"]) == (4 * 28 * 28, 300 * 28 * 28)
    if pruned is not None:
        inner = prune_layers(model, 12)
        t = inner.config.text_config
        assert t.num_hidden_layers == len(t.layer_types) == 12 and t.max_window_layers <= 12
        counts = count_params(inner)
        assert counts["total"] == pruned and round(counts["total"] / 1e9, 3) == 1.460
        assert counts["per_layer"] * 16 == full - pruned  # 16 dropped layers; embeddings tied (no lm_head)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_random_arch("13b", tokenizer_corpus(0), device="meta")


@pytest.mark.slow
def test_random_2b_saves_and_loads_with_plain_from_pretrained(tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    from puma.model.processor import load_processor
    from puma.model.random_arch import save_random_arch

    out = save_random_arch("2b", tmp_path / "r2b", tokenizer_corpus(0))
    assert (out / "model.safetensors").is_file() or list(out.glob("model-*.safetensors"))
    model = Qwen2VLForConditionalGeneration.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.text_config.num_hidden_layers == 28
    assert sum(p.numel() for p in model.parameters()) == 2_208_985_600
    assert load_processor(out).tokenizer.convert_tokens_to_ids("[RET]") > 0
