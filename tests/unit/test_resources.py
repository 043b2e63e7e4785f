"""Resource plans (puma/resources.py): counts from the bundled configs, LoRA count vs peft, the fit check."""

from __future__ import annotations

import json

import pytest

from puma import resources
from puma.config import load_settings
from puma.profiles import plan_switch
from puma.resources import ResourceError, lora_params, preflight, stage_plan


def test_paper_2b_stage1_plan():
    s = plan_switch("paper-2b", "params.yaml").settings
    plan = stage_plan(s, "stage1")
    assert plan["layers"] == 12 and plan["params"] == 1_460_220_416 and plan["weights"] == 2 * plan["params"]
    assert plan["zero2"] and plan["gradients"] == plan["trainable"] * 2 // 4  # ZeRO-2 over 4 processes
    teacher = stage_plan(s, "teacher-cache")
    assert teacher["layers"] == 28 and teacher["trainable"] == teacher["optimizer"] == 0
    assert teacher["params"] == 2_208_985_600  # tied embeddings: no separate lm_head
    no_ckpt = s.model_copy(update={"runtime": s.runtime.model_copy(update={"gradient_checkpointing": False})})
    assert stage_plan(no_ckpt, "stage1")["activations"] > 5 * plan["activations"]


def test_lora_count_matches_peft(tiny_dir):
    peft = pytest.importorskip("peft")
    from transformers import Qwen2VLModel

    model = Qwen2VLModel.from_pretrained(tiny_dir)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q|k|v|o|gate|up|down)_proj")
    lora = peft.get_peft_model(model, cfg)
    n = sum(p.numel() for name, p in lora.named_parameters() if "lora_" in name)
    assert n == lora_params(model.config.text_config, model.config.text_config.num_hidden_layers, 4)


def test_fit_check_and_plan_file(tmp_path, monkeypatch, tiny_dir):
    settings = load_settings("params.yaml")
    monkeypatch.setattr(resources, "device_memory", lambda: ("cpu (host RAM)", 1024))
    said = []
    with pytest.raises(ResourceError, match="stage2 needs about .* GiB per process but cpu"):
        preflight(settings, "stage2", tiny_dir, tmp_path, echo=said.append)
    assert "available -> DOES NOT FIT" in said[0], said
    plan = json.loads((tmp_path / "resource_plan.json").read_text())
    # The file is a function of params and model only (it is part of a DVC out): no free memory in it.
    assert plan["device"] == "cpu (host RAM)" and plan["total"] > 1024 and "available" not in plan
    assert "fits" not in plan
    monkeypatch.setenv("PUMA_RESOURCE_CHECK", "0")
    said = []
    preflight(settings, "stage2", tiny_dir, None, echo=said.append)
    assert any(line.startswith("warning: stage2 needs") for line in said)
    monkeypatch.setattr(resources, "device_memory", lambda: ("cpu (host RAM)", 1 << 40))
    assert preflight(settings, "stage1", tiny_dir, None, echo=lambda _: None)["fits"]
    said.clear()
    nowhere = settings.model_copy(update={"model": settings.model.model_copy(update={"base": str(tmp_path / "no")})})
    assert preflight(nowhere, "stage1", tmp_path / "nothing", None, echo=said.append) == {}
    assert "no model config" in said[0]
