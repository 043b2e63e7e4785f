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


def test_caption_agreement_against_the_full_vocabulary_oracle(tiny_dir, mbeir_mini, tmp_path):
    """The head's word at [RET] within the word's class, for captions and pictures of MBEIR-mini's train split,
    equals the argmax of the full-vocabulary logits (the model's own lm_head) restricted to that class; the
    caption -> picture ranks equal a naive loop; a checkpoint without a head has none."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLForConditionalGeneration

    from puma.config import PromptSettings
    from puma.model.encoding import collate, ret_states
    from puma.model.probe import caption_agreement, caption_pictures, lm_head_weight
    from puma.model.processor import load_processor
    from puma.train.pretrain import AnswerTargets, load_pairs

    proc = load_processor(tiny_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # the tiny base's head may be near-constant
    rows = caption_pictures(load_pairs(mbeir_mini, 0), limit=24)
    assert len(rows) == 24 and all(r["image"] is not None and r["text"] for r, _ in rows)
    prompt = PromptSettings()
    got = caption_agreement(model, proc, model.lm_head.weight.detach(), rows, prompt, batch_size=10)
    targets = AnswerTargets(proc.tokenizer)
    with torch.no_grad():
        t = ret_states(model, collate(proc, [{"text": r["text"], "image": None} for r, _ in rows], True, prompt))
        p = ret_states(model, collate(proc, [{"text": None, "image": r["image"]} for r, _ in rows], False, prompt))
        logits_t, logits_p = model.lm_head(t), model.lm_head(p)
    for attr in ("color", "shape"):
        text = pic = agree = n = 0
        for i, (_, attrs) in enumerate(rows):
            if attr not in attrs:
                continue
            ((tok, cls),) = targets([attrs[attr]])
            mask = torch.full_like(logits_t[i], float("-inf"))
            mask[cls] = 0
            named_t, named_p = int((logits_t[i] + mask).argmax()), int((logits_p[i] + mask).argmax())
            text += named_t == tok
            pic += named_p == tok
            agree += named_t == named_p
            n += 1
        assert got[attr] == pytest.approx({"text": text / n, "picture": pic / n, "agree": agree / n, "n": n})
    q, d = torch.nn.functional.normalize(t, dim=-1), torch.nn.functional.normalize(p, dim=-1)
    ranks = [1 + sum(float(q[i] @ d[j]) > float(q[i] @ d[i]) for j in range(len(rows)) if j != i) for i in range(len(rows))]
    assert got["caption_to_picture"]["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(rows), abs=1e-6)
    assert lm_head_weight(tiny_dir) is not None
    save_file({"x": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert lm_head_weight(tmp_path) is None
    with pytest.raises(ValueError, match="no captioned pictures"):
        caption_agreement(model, proc, model.lm_head.weight, [], prompt)
