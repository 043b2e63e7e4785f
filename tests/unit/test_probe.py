"""The linear probes of ablations/vision_probe.py (puma.model.probe)."""

import numpy as np
import pytest
import torch

from puma.model.probe import object_pictures, picture_features, probe_checkpoint, ridge_probe_accuracy


def test_ridge_probe_reads_a_separable_attribute_and_not_noise():
    rng = np.random.default_rng(0)
    labels = [str(i % 4) for i in range(300)]
    centres = rng.normal(size=(4, 16)) * 3
    separable = np.stack([centres[int(v)] for v in labels]) + rng.normal(size=(300, 16))
    assert ridge_probe_accuracy(separable, labels, 200) > 0.95
    noise = rng.normal(size=(300, 16))
    assert ridge_probe_accuracy(noise, labels, 200) < 0.45  # chance 0.25
    with pytest.raises(ValueError, match="split"):
        ridge_probe_accuracy(noise, labels, 300)


def test_probe_of_the_tiny_model_on_mbeir_mini(tiny_dir, mbeir_mini):
    from transformers import Qwen2VLForConditionalGeneration

    from puma.config import PromptSettings
    from puma.model.processor import load_processor

    pictures = object_pictures(mbeir_mini, limit=40)
    assert len(pictures) == 40 and all(s["kind"] == "object" and item["text"] is None for item, s in pictures)
    assert pictures == object_pictures(mbeir_mini, limit=40)  # seeded
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    proc = load_processor(tiny_dir)
    torch.manual_seed(0)
    feats = picture_features(model, proc, [item for item, _ in pictures[:5]], PromptSettings(), batch_size=2)
    assert feats["ret"].shape == (5, 64) and feats["vision"].shape[0] == 5 and feats["pixels"].shape[0] == 5
    # the [RET] state is the one the retriever embeds (puma.model.encoding.ret_states of one row)
    from puma.model.encoding import collate, ret_states

    with torch.no_grad():
        one = ret_states(model, collate(proc, [pictures[3][0]], False, PromptSettings()))
    assert np.allclose(feats["ret"][3], one[0].numpy(), atol=1e-4)
    res = probe_checkpoint(model, proc, mbeir_mini, PromptSettings(), limit=60)
    assert set(res) == {"color", "shape"} and all(0 <= v <= 1 for r in res.values() for v in r.values())
    with pytest.raises(ValueError, match="needs MBEIR-mini"):
        probe_checkpoint(model, proc, mbeir_mini / "nowhere", PromptSettings())
