"""Stage 1 and stage 2 on the tiny model: cached teacher == live teacher, LoRA targets, end-to-end runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from puma.config import Settings
from puma.train.loop import StepContext
from puma.train.runner import PairCollator, RetEncoder, load_lora_student
from puma.train.stage1 import Teacher, build_teacher_cache, stage1_loss, train_stage1
from puma.train.stage2 import train_stage2
from puma.train.teacher_cache import TeacherCache, load_teacher, teacher_fingerprint

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import image_pairs, text_pairs


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir, tmp_path_factory):
    from puma.model.prune import save_pruned

    return save_pruned(tiny_dir, 4, tmp_path_factory.mktemp("pruned") / "pruned")


def make_settings(tiny_dir, **stage):
    return Settings(tracking={"enabled": False}, model={"base": str(tiny_dir)},
                    stage1={"batch_size": 8, "epochs": 1, "checkpoint_every": 2, **stage},
                    stage2={"batch_size": 6, "epochs": 2, "checkpoint_every": 2, "lr": 2e-3})


def test_lora_targets_only_decoder_projections_and_ret_row(tiny_dir, pruned_dir):
    settings = make_settings(tiny_dir)
    model, _, _ = load_lora_student(pruned_dir, settings, settings.stage1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    lora = [n for n in names if "lora_" in n]
    assert lora and all("language_model.layers." in n for n in lora)
    assert not any("visual" in n for n in names)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(proj in n for n in lora), proj
    token_params = [n for n in names if "lora_" not in n]
    assert token_params and all("embed_tokens" in n for n in token_params)  # the [RET] row only
    frozen = make_settings(tiny_dir)
    frozen.model.ret_trainable = False
    model, _, _ = load_lora_student(pruned_dir, frozen, frozen.stage1)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_cached_teacher_gives_the_live_teacher_loss(tiny_dir, pruned_dir, tmp_path):
    settings = make_settings(tiny_dir)
    pairs = text_pairs(8) + image_pairs(4, tmp_path / "img")
    build_teacher_cache(settings, pruned_dir, tmp_path / "cache", dataset=pairs, batch_size=5, progress=False)
    cache = TeacherCache(tmp_path / "cache")
    model, processor, ret_id = load_lora_student(pruned_dir, settings, settings.stage1)
    cache.check(teacher_fingerprint(settings.model.base, pruned_dir, ret_id))
    student = RetEncoder(model).eval()  # no dropout: both evaluations see the same student
    batch = PairCollator(processor, settings.prompt, settings.model.ret_token)(pairs)
    ctx = StepContext(0, 0, 10, 10, 1, torch.device("cpu"))
    live = Teacher(model=load_teacher(settings.model.base, pruned_dir, ret_id))
    results = []
    for teacher in (live, Teacher(cache=cache)):
        student.zero_grad()
        loss, terms = stage1_loss(student, teacher, batch, ctx, settings.stage1)
        loss.backward()
        grads = [p.grad.clone() for p in student.parameters() if p.requires_grad]
        results.append((loss.item(), terms, grads))
    (l_live, t_live, g_live), (l_cache, t_cache, g_cache) = results
    assert t_live["loss_distill"] > 0
    assert l_cache == pytest.approx(l_live, rel=1e-5, abs=1e-6)
    assert t_cache["loss_distill"] == pytest.approx(t_live["loss_distill"], rel=1e-5)
    for a, b in zip(g_live, g_cache):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # A changed input is not silently answered by the cache.
    other = PairCollator(processor, settings.prompt, settings.model.ret_token)(text_pairs(2, seed=5))
    with pytest.raises(KeyError, match="teacher-cache"):
        cache.get(other.keys)
    with pytest.raises(ValueError, match="different teacher"):
        cache.check({"base": "elsewhere"})


def _ret_row(model_dir, ret_id):
    weights = load_file(str(next(Path(model_dir).glob("*.safetensors"))))
    key = next(k for k in weights if k.endswith("embed_tokens.weight"))
    return weights[key][ret_id]


def test_stage1_then_stage2_run_and_save_standalone_models(tiny_dir, pruned_dir, tmp_path):
    from puma.model.retriever import PumaRetriever

    settings = make_settings(tiny_dir, teacher="live", lr=2e-3)
    s1 = train_stage1(settings, pruned_dir, tmp_path / "s1", dataset=text_pairs(32), progress=False)
    assert s1["steps"] == 4
    rows = [json.loads(x) for x in (tmp_path / "s1" / "train_log.jsonl").read_text().splitlines()]
    assert {"loss_contrastive", "loss_distill", "alpha1", "alpha2", "lr", "samples_per_s"} <= set(rows[0])
    assert rows[0]["alpha1"] == pytest.approx(0.5) and rows[-1]["alpha1"] == pytest.approx(0.9)
    retriever = PumaRetriever.from_pretrained(tmp_path / "s1" / "model")
    ret_id = retriever.processor.tokenizer.convert_tokens_to_ids("[RET]")
    assert not torch.equal(_ret_row(pruned_dir, ret_id), _ret_row(tmp_path / "s1" / "model", ret_id))
    config = json.loads((tmp_path / "s1" / "model" / "config.json").read_text())
    assert config["puma"]["k"] == 4 and config["puma"]["stage1"]["steps"] == 4

    s2 = train_stage2(settings, tmp_path / "s1" / "model", tmp_path / "s2",
                      dataset=image_pairs(12, tmp_path / "img"), progress=False)
    assert s2["steps"] == 4
    rows = [json.loads(x) for x in (tmp_path / "s2" / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["tau_hard"] == 0.03 and rows[-1]["tau_hard"] < 0.03  # Eq. 8 decay with the epoch
    emb = PumaRetriever.from_pretrained(tmp_path / "s2" / "model").encode_query(["a red circle"])
    assert emb.shape == (1, 64)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, pruned_dir):
    from puma.losses import info_nce

    settings = make_settings(tiny_dir)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, processor, _ = load_lora_student(pruned_dir, settings, settings.stage1)
        encoder = RetEncoder(model).eval()  # no dropout, so the recomputed forward is identical
        if checkpointing:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            encoder.train()
            for m in encoder.modules():  # train mode for checkpointing, but dropout off
                if isinstance(m, torch.nn.Dropout):
                    m.eval()
        batch = PairCollator(processor, settings.prompt, settings.model.ret_token)(text_pairs(4))
        states = encoder(batch.inputs)
        info_nce(states[:4], states[4:], 0.05).backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
