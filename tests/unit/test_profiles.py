"""Profiles (profiles/*.yaml) and `puma config use`: complete, valid against the bundled architectures,
switching edits params.yaml in place (comments kept) and switching back restores it byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from puma.config import ConfigError, edit_params_text, load_settings, settings_from_text
from puma.profiles import (
    active_profile,
    arch_facts,
    bundled_arch,
    check_against_arch,
    list_profiles,
    plan_switch,
    profile_overrides,
)

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
# The bundled hub configs' dimensions (REFERENCE.md section 1).
ARCH = {"2b": {"depth": 28, "hidden_size": 1536, "vocab_size": 151936},
        "7b": {"depth": 28, "hidden_size": 3584, "vocab_size": 152064}}
EXPECTED = {"paper-2b": "2b", "paper-7b": "7b", "rehearsal-2b": "2b"}


def test_profiles_present():
    assert set(list_profiles()) >= {"default", *EXPECTED}


def test_shipped_params_is_the_default_profile():
    assert active_profile(load_settings(PARAMS)).name == "default"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_validates_against_its_architecture(name):
    settings = plan_switch(name, PARAMS).settings  # config.py's validation (raises ConfigError)
    arch = bundled_arch(settings.model.base)
    assert arch == EXPECTED[name]
    facts = arch_facts(arch)
    assert {k: facts[k] for k in ARCH[arch]} == ARCH[arch]
    assert settings.model.depth == facts["depth"] and settings.model.prune_layers == 12 < facts["depth"]
    assert check_against_arch(settings) == []
    assert settings.model.dtype == "bfloat16"
    assert (settings.prompt.min_pixels, settings.prompt.max_pixels) == (4 * 28 * 28, 300 * 28 * 28)
    for stage, dropout in (("stage1", 0.05), ("stage2", 0.1)):
        s = getattr(settings, stage)
        assert (s.lora_r, s.lora_alpha, s.lora_dropout) == (128, 256, dropout)
    assert settings.runtime.gradient_checkpointing


@pytest.mark.parametrize("name", ["paper-2b", "paper-7b"])
def test_paper_profiles_carry_the_papers_training_setup(name):
    s = plan_switch(name, PARAMS).settings
    assert s.data.source == "hub" and "train" in s.data.download_splits and "test" in s.data.download_splits
    assert s.data.download_images
    assert s.model.base == f"Qwen/Qwen2-VL-{name[-2:].upper()}-Instruct"
    assert s.model.attn_implementation == "flash_attention_2"
    assert (s.stage1.lr, s.stage1.batch_size, s.stage1.epochs, s.stage1.tau) == (1e-4, 72, 2, 0.05)
    assert (s.stage2.lr, s.stage2.batch_size, s.stage2.epochs, s.stage2.tau) == (3e-4, 150, 2, 0.03)
    assert s.stage1.warmup_ratio == s.stage2.warmup_ratio == 0.03
    assert s.stage1.alpha_mode == "fixed" and s.mac.lambda_ == 0.2 and s.mac.form == "paper"
    assert (s.runtime.num_processes, s.runtime.precision, s.runtime.deepspeed) == (4, "bf16", True)


def test_check_against_arch_catches_mismatches():
    s = plan_switch("paper-2b", PARAMS).settings
    bad = s.model_copy(update={"model": s.model.model_copy(update={"depth": 24})})
    assert any("model.depth is 24" in p for p in check_against_arch(bad))
    nothing_pruned = s.model_copy(update={"model": s.model.model_copy(update={"prune_layers": 28})})
    assert any("prune_layers must be in 1..27" in p for p in check_against_arch(nothing_pruned))
    wide = s.model_copy(update={"stage1": s.stage1.model_copy(update={"lora_r": 256})})
    assert any("stage1.lora_r 256" in p for p in check_against_arch(wide))


def test_default_lists_every_key_a_profile_sets_and_params_has_them():
    default = profile_overrides("default")
    text = PARAMS.read_text()
    for name in list_profiles():
        assert set(profile_overrides(name)) == set(default)
    edit_params_text(text, default, PARAMS)  # every key exists in the shipped file (else ConfigError)


def test_switch_keeps_comments_and_round_trips(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS, params)
    original = params.read_text()
    switch = plan_switch("paper-7b", params)
    comments = [line for line in original.splitlines() if "#" in line]
    assert sum("#" in line for line in switch.new.splitlines()) == len(comments)
    diff = switch.diff(params)
    assert "+  base: Qwen/Qwen2-VL-7B-Instruct" in diff and "-  base: artifacts/pretrained" in diff
    assert "+  lr: 1.0e-4" in diff  # the file's float style, read back as a float
    assert settings_from_text(switch.new, params).stage1.lr == 1e-4
    for name in ["paper-2b", "rehearsal-2b", "paper-7b", "default"]:
        s = plan_switch(name, params)
        params.write_text(s.new)
        assert active_profile(load_settings(params)).name == name
    assert params.read_text() == original


def test_edit_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="model.nope"):
        edit_params_text("model:\n  depth: 8\n", {"model.nope": 1})


def test_unknown_profile_is_an_error():
    with pytest.raises(ConfigError, match="no profile 'paper-13b'"):
        profile_overrides("paper-13b")


def test_cli_use_and_show(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS, params)

    def puma(*args):
        return subprocess.run([sys.executable, "-m", "puma.cli", *args], capture_output=True, text=True,
                              check=False, cwd=REPO)

    res = puma("config", "use", "paper-7b", "--params", str(params))
    assert res.returncode == 0, res.stderr
    assert "+  depth: 28" in res.stdout and "+  num_processes: 4" in res.stdout
    shown = puma("config", "--params", str(params))
    assert shown.returncode == 0 and "profile: paper-7b" in shown.stderr
    params.write_text(params.read_text().replace("lr: 1.0e-4", "lr: 2.0e-4"))
    shown = puma("config", "--params", str(params))
    assert "profile: none (closest paper-7b, modified: stage1.lr=0.0002" in shown.stderr
    dry = puma("config", "use", "default", "--params", str(params), "--dry-run")
    assert dry.returncode == 0 and "-  base: Qwen/Qwen2-VL-7B-Instruct" in dry.stdout
    assert "Qwen2-VL-7B" in params.read_text()  # --dry-run wrote nothing
    assert puma("config", "use", "default", "--params", str(params)).returncode == 0
    assert puma("config", "--params", str(params)).stderr.startswith("profile: default")
