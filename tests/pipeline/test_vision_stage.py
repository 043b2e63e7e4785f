"""The vision stage of base pretraining (pretrain.vision_steps, puma.train.vision_stage): which pictures it
trains on, the pooled tower tokens against a picture-at-a-time oracle, and that it trains the tower alone."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import image_pairs

from puma.config import PromptSettings


def test_described_attributes_and_scene_words():
    from puma.train.pretrain import described_attributes, scene_words

    obj = {"kind": "object", "color": "red", "shape": "star", "texture": "dotted", "size": "small",
           "position": "top left", "trim": "blue"}
    assert described_attributes(obj) == {"color": "red", "shape": "star", "texture": "dotted", "size": "small",
                                         "position": "top left"}  # an object's trim is not described
    garment = {"kind": "garment", "color": "orange", "shape": "scarf", "texture": "none", "trim": "green"}
    assert described_attributes(garment) == {"color": "orange", "shape": "scarf", "trim": "green"}
    assert scene_words(obj) == ["red", "star", "dotted", "small", "top", "left"]
    assert described_attributes(None) == {} and scene_words({}) == []


def test_scene_pictures_take_each_known_picture_once(tmp_path):
    from puma.train.pretrain import scene_pictures

    scene = {"kind": "object", "color": "red", "shape": "star", "texture": "plain", "size": "small",
             "position": "center"}
    pairs = [
        {"query": {"text": "a red star"}, "positive": {"image": "a.jpg"}, "positive_scene": scene},
        {"query": {"image": "b.jpg"}, "positive": {"text": "a red star"}, "positive_scene": scene},  # caption pair
        {"query": {"image": "c.jpg", "text": "make it red"}, "positive": {"image": "a.jpg"}, "positive_scene": scene},
        {"query": {"image": "d.jpg"}, "positive": {"image": "e.jpg"}, "positive_scene": None},  # no scene
        {"query": {"text": "Aldermoor"}, "positive": {"text": "a passage"}, "positive_scene": scene},  # no picture
    ]
    got = scene_pictures(pairs)
    assert [item["image"] for item, _ in got] == ["a.jpg", "b.jpg"]  # c.jpg's scene is not a.jpg's: left out
    assert all(item["text"] is None for item, _ in got)
    assert got[0][1] == {"color": "red", "shape": "star", "texture": "plain", "size": "small", "position": "center"}


def test_pooled_tokens_match_one_picture_at_a_time(tiny_dir, tmp_path):
    """The batched pooling splits the tower's concatenated tokens per picture; the oracle runs the tower on
    each picture alone (pictures of two sizes, so the splits differ)."""
    from PIL import Image
    from transformers import Qwen2VLForConditionalGeneration

    from puma.model.encoding import collate
    from puma.model.processor import load_processor
    from puma.model.prune import vision_tower
    from puma.train.vision_stage import pooled_tokens

    proc = load_processor(tiny_dir)
    visual = vision_tower(Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval())
    items = [{"image": Image.new("RGB", size, colour), "text": None}
             for size, colour in (((56, 56), "red"), ((112, 56), "blue"), ((56, 56), "green"))]
    prompt = PromptSettings()
    with torch.no_grad():
        batched = pooled_tokens(visual, collate(proc, items, False, prompt))
        alone = torch.cat([pooled_tokens(visual, collate(proc, [it], False, prompt)) for it in items])
        naive = []
        for it in items:
            b = collate(proc, [it], False, prompt)
            out = visual(b["pixel_values"], grid_thw=b["image_grid_thw"])
            naive.append(getattr(out, "pooler_output", out).mean(0))
    assert batched.shape == (3, Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).config.text_config.hidden_size)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, torch.stack(naive), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_vision_stage_trains_the_tower_alone_and_learns(tiny_dir, tmp_path):
    """40 steps on 36 pictures: the attribute loss falls, the tower moves, the language model does not, and no
    head is left in the model."""
    from transformers import Qwen2VLForConditionalGeneration

    from puma.model.processor import load_processor
    from puma.train.pretrain import scene_pictures
    from puma.train.vision_stage import vision_stage

    torch.set_num_threads(1)
    pictures = scene_pictures(image_pairs(36, tmp_path / "img", with_scenes=True))
    assert len(pictures) == 36  # every pair's own picture: 24 picture positives, 12 caption pairs' pictures
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = vision_stage(model, load_processor(tiny_dir), pictures, PromptSettings(), steps=40, step_rows=16,
                        lr=2e-3, seed=0)
    assert [r["vision_step"] for r in rows] == list(range(1, 41))
    first, last = (sum(r["loss_vision"] for r in part) / 5 for part in (rows[:5], rows[-5:]))
    assert last < 0.7 * first, (first, last)
    after = model.state_dict()
    assert after.keys() == before.keys()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(".visual." in f".{k}" for k in moved), sorted(moved)[:5]
    assert sum(".visual." in f".{k}" for k in after) == len(moved)  # every tower tensor trained


def test_pretrain_base_runs_the_vision_stage_first(tiny_dir, tmp_path):
    from puma.train.pretrain import pretrain_base

    torch.set_num_threads(1)
    pairs = image_pairs(12, tmp_path / "img", with_scenes=True)
    rec = pretrain_base(tiny_dir, tmp_path / "pt", pairs, PromptSettings(), steps=2, batch_size=8, lr=5e-3,
                        vision_steps=3, vision_lr=1e-3)
    assert rec["vision_steps"] == 3 and rec["vision_lr"] == 1e-3 and rec["vision_final_loss"] > 0
    log = [json.loads(x) for x in (tmp_path / "pt" / "vision_log.jsonl").read_text().splitlines()]
    assert [r["vision_step"] for r in log] == [1, 2, 3] and log[-1]["loss_vision"] == rec["vision_final_loss"]
    saved = json.loads((tmp_path / "pt" / "config.json").read_text())["puma"]["pretrain"]
    assert saved["vision_steps"] == 3
    # off (the default): no vision stage, no log
    rec0 = pretrain_base(tiny_dir, tmp_path / "pt0", pairs, PromptSettings(), steps=2, batch_size=8, lr=5e-3)
    assert rec0["vision_steps"] == 0 and "vision_lr" not in rec0 and not (tmp_path / "pt0" / "vision_log.jsonl").exists()
    with pytest.raises(ValueError, match="vision_steps"):
        pretrain_base(tiny_dir, tmp_path / "bad", pairs, PromptSettings(), steps=2, batch_size=8, lr=5e-3,
                      vision_steps=-1)
    with pytest.raises(ValueError, match="no picture with a known scene"):
        pretrain_base(tiny_dir, tmp_path / "none", image_pairs(12, tmp_path / "img"), PromptSettings(), steps=2,
                      batch_size=8, lr=5e-3, vision_steps=1)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "none").exists()


def test_the_alignment_steps_train_only_the_vision_tower(tiny_dir, tmp_path):
    """pretrain.align_steps: after 1 text step, 2 steps on picture-only rows move the vision tower alone (the
    language model and its head frozen); the mixed step after them moves everything again."""
    from safetensors.torch import load_file

    from puma.train.pretrain import pretrain_base

    torch.set_num_threads(1)
    pairs = image_pairs(12, tmp_path / "img")
    kw = {"batch_size": 8, "lr": 5e-3, "answer_weight": 4.0, "text_steps": 1, "align_steps": 2, "align_lr_scale": 0.5}
    rec = pretrain_base(tiny_dir, tmp_path / "a3", pairs, PromptSettings(), steps=3, **kw)
    pretrain_base(tiny_dir, tmp_path / "a1", pairs, PromptSettings(), steps=1, text_steps=1, batch_size=8, lr=5e-3,
                  answer_weight=4.0)  # the same text step alone (its warm-up: 1 step of 20 either way)
    pretrain_base(tiny_dir, tmp_path / "a4", pairs, PromptSettings(), steps=4, **kw)
    after_text, aligned, mixed = (load_file(tmp_path / d / "model.safetensors") for d in ("a1", "a3", "a4"))
    assert rec["align_steps"] == 2 and rec["align_lr_scale"] == 0.5
    vision = {k for k in aligned if "visual" in k}
    assert vision and all(not torch.equal(aligned[k], after_text[k]) for k in vision)
    assert all(torch.equal(aligned[k], after_text[k]) for k in aligned if k not in vision)  # frozen, not decayed
    assert sum(not torch.equal(mixed[k], aligned[k]) for k in mixed if k not in vision) > len(aligned) // 3
    log = [json.loads(x) for x in (tmp_path / "a3" / "train_log.jsonl").read_text().splitlines()]
    assert "loss_answer_text" in log[0] and "loss_answer_text" not in log[1] and "loss_answer_image" in log[1]


def test_ground_terms_pool_each_pictures_tokens_against_the_input_embeddings(tiny_dir, tmp_path):
    """pretrain.ground_weight's terms: the decoder's input states at a row's image placeholders, mean-pooled,
    are the tower's pooled tokens (pooled_tokens runs the tower apart: the oracle of the placeholder mask);
    each of the row's words costs its cross-entropy within its class against the input embeddings; text rows
    give no term, and the class-grouped path equals one word at a time; pretrain_terms' fast path and its
    full-logits oracle give the same grounding sum and gradients."""
    from PIL import Image
    from transformers import Qwen2VLForConditionalGeneration

    from puma.model.encoding import MODEL_INPUTS, collate, mrope_positions
    from puma.model.processor import load_processor
    from puma.model.prune import qwen2vl_model, vision_tower
    from puma.train.pretrain import AnswerTargets, ground_terms, pretrain_terms
    from puma.train.vision_stage import pooled_tokens

    proc = load_processor(tiny_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.5)  # scores that differ by word
    items = [{"image": Image.new("RGB", (56, 56), "red"), "text": None}, {"text": "a blue star", "image": None},
             {"image": Image.new("RGB", (112, 56), "blue"), "text": None}]
    words = [["red", "circle"], ["blue", "star"], ["blue", "square", "small"]]
    batch = collate(proc, items, False, PromptSettings(), answers=[w[0] for w in words])
    targets_of = AnswerTargets(proc.tokenizer)
    targets = [targets_of(w) for w in words]
    with torch.no_grad():
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        first = qwen2vl_model(model)(**inputs, position_ids=mrope_positions(model, inputs),
                                     output_hidden_states=True).hidden_states[0]
        fast = ground_terms(model, batch["input_ids"], first, targets)
        naive = ground_terms(model, batch["input_ids"], first, targets, naive=True)
        pooled = pooled_tokens(vision_tower(model), collate(proc, [items[0], items[2]], False, PromptSettings()))
        scores = pooled @ model.get_input_embeddings().weight.T
    expected = []
    for row, answers in zip((0, 1), (targets[0], targets[2])):
        for tok, cls in answers:
            expected.append(float(torch.logsumexp(scores[row, cls], 0) - scores[row, tok]))
    assert fast.numel() == 5 and naive.numel() == 5  # 2 + 3 words of the picture rows; the text row gives none
    assert sorted(fast.tolist()) == pytest.approx(sorted(expected), rel=1e-4)
    assert sorted(naive.tolist()) == pytest.approx(sorted(expected), rel=1e-4)
    text_only = collate(proc, [items[1]], False, PromptSettings(), answers=["blue"])
    assert ground_terms(model, text_only["input_ids"], torch.zeros(1, text_only["input_ids"].shape[1], 64),
                        [targets[1]]) is None

    params = [p for p in model.parameters() if p.requires_grad]
    got = {}
    for full in (False, True):
        t = pretrain_terms(model, batch, targets, full_logits=full, ground=True)
        got[full] = (float(t.ground_sum.detach()), t.ground_count,
                     torch.autograd.grad(t.ground_sum, params, allow_unused=True))
    assert got[False][1] == got[True][1] == 5
    assert got[False][0] == pytest.approx(sum(expected), rel=1e-4) and got[True][0] == pytest.approx(sum(expected), rel=1e-4)
    for a, b in zip(got[False][2], got[True][2], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=5e-5)
    assert pretrain_terms(model, batch, targets).ground_count == 0  # off unless asked


def test_pretrain_base_with_grounding_logs_it_and_moves_tower_and_embeddings(tiny_dir, tmp_path):
    """pretrain.ground_weight > 0: the step's loss gains the grounding term (logged as loss_ground, recorded), and
    the weights differ from the same steps without it in the tower and in the word embeddings; 0 (the default)
    adds no key and no term."""
    from safetensors.torch import load_file

    from puma.train.pretrain import pretrain_base

    torch.set_num_threads(1)
    pairs = image_pairs(12, tmp_path / "img", with_scenes=True)
    kw = {"steps": 2, "batch_size": 8, "lr": 5e-3, "answer_weight": 4.0}
    rec = pretrain_base(tiny_dir, tmp_path / "g", pairs, PromptSettings(), ground_weight=2.0, **kw)
    rec0 = pretrain_base(tiny_dir, tmp_path / "g0", pairs, PromptSettings(), **kw)
    assert rec["ground_weight"] == 2.0 and "ground_weight" not in rec0
    log = [json.loads(x) for x in (tmp_path / "g" / "train_log.jsonl").read_text().splitlines()]
    log0 = [json.loads(x) for x in (tmp_path / "g0" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["loss_ground"] > 0 for r in log) and all("loss_ground" not in r for r in log0)
    assert log[0]["loss"] == pytest.approx(log0[0]["loss"] + 2.0 * log[0]["loss_ground"], rel=1e-5)
    grounded, plain = load_file(tmp_path / "g" / "model.safetensors"), load_file(tmp_path / "g0" / "model.safetensors")
    embed = next(k for k in plain if k.endswith("embed_tokens.weight"))
    assert not torch.equal(grounded[embed], plain[embed])
    assert any(not torch.equal(grounded[k], plain[k]) for k in plain if "visual" in k)
    # pretrain.weight_decay: AdamW's in the language steps (recorded when not the old 0.01)
    rec_wd = pretrain_base(tiny_dir, tmp_path / "wd", pairs, PromptSettings(), weight_decay=0.5, **kw)
    assert rec_wd["weight_decay"] == 0.5 and "weight_decay" not in rec0
    decayed = load_file(tmp_path / "wd" / "model.safetensors")
    assert decayed[embed].norm() < plain[embed].norm()


def test_layer_contributions_match_the_pruned_models(tiny_dir, tmp_path):
    """The probe's embedding at depth j is the pruned model's (load_pruned to j + 1 layers, its [RET] state): the
    oracle of reading the prefixes off one full forward; the last depth is the full model itself (cosine 1), and
    the updates add up along the residual stream."""
    from PIL import Image
    from transformers import Qwen2VLForConditionalGeneration

    from puma.model.encoding import collate, ret_states
    from puma.model.probe import layer_contributions
    from puma.model.processor import load_processor
    from puma.model.prune import load_pruned

    torch.manual_seed(0)
    proc = load_processor(tiny_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    with torch.no_grad():  # weights that write something (the built tiny model's are near zero)
        for p in model.model.language_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    items = [{"text": "a red circle", "image": None}, {"text": "a small blue star on the left", "image": None},
             {"text": None, "image": Image.new("RGB", (56, 56), "green")}]
    got = layer_contributions(model, proc, items, PromptSettings())
    depth = model.config.text_config.num_hidden_layers
    assert all(len(v) == depth for v in got.values())
    assert got["cos_to_final"][-1] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        final = torch.nn.functional.normalize(ret_states(model, collate(proc, items, False, PromptSettings())), dim=-1)
    for k in (1, 3):
        pruned = load_pruned(tmp_path / "m", k).eval()
        with torch.no_grad():
            emb = torch.nn.functional.normalize(ret_states(pruned, collate(proc, items, False, PromptSettings())), dim=-1)
        assert got["cos_to_final"][k - 1] == pytest.approx(float((emb * final).sum(-1).mean()), abs=1e-4)
        spread = float(((emb @ emb.T).sum() - 3) / 6)
        assert got["spread"][k - 1] == pytest.approx(spread, abs=1e-4)
    assert all(u > 0 for u in got["update"]) and got["residual"][-1] > 0
    with pytest.raises(ValueError, match="at least 2"):
        layer_contributions(model, proc, items[:1], PromptSettings())
