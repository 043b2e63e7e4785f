"""stage1.enabled, stage1.distill_scale and distill_kind none (Table 3 / Table 10 rows, the authors' scale)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from puma.config import Settings
from puma.losses import alpha_schedule
from puma.train.loop import StepContext
from puma.train.runner import PairCollator, RetEncoder, load_lora_student
from puma.train.stage1 import Teacher, needs_teacher, stage1_alphas, stage1_loss, train_stage1
from puma.train.teacher_cache import load_teacher

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import text_pairs


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir, tmp_path_factory):
    from puma.model.prune import save_pruned

    return save_pruned(tiny_dir, 4, tmp_path_factory.mktemp("pruned") / "pruned")


def _settings(tiny_dir, **stage1):
    return Settings(tracking={"enabled": False}, model={"base": str(tiny_dir)},
                    stage1={"batch_size": 8, "epochs": 1, "checkpoint_every": 2, "teacher": "live", **stage1})


@pytest.mark.parametrize("mode", ["fixed", "dynamic", "reverse"])
def test_distill_scale_multiplies_alpha2_only(mode):
    for step in (0, 3, 9):
        a1, a2 = alpha_schedule(step, 10, mode)
        cfg = Settings(stage1={"alpha_mode": mode, "distill_scale": 0.05}).stage1
        assert stage1_alphas(step, 10, cfg) == pytest.approx((a1, a2 * 0.05))
        assert stage1_alphas(step, 10, Settings(stage1={"alpha_mode": mode}).stage1) == (a1, a2)  # default 1.0
        none = Settings(stage1={"alpha_mode": mode, "distill_kind": "none"}).stage1
        assert stage1_alphas(step, 10, none) == (a1, 0.0)


def test_needs_teacher_follows_the_switches():
    assert needs_teacher(Settings().stage1)
    assert not needs_teacher(Settings(stage1={"enabled": False}).stage1)
    assert not needs_teacher(Settings(stage1={"distill_kind": "none"}).stage1)
    with pytest.raises(ValueError):
        Settings(stage1={"distill_scale": -1})


def test_loss_terms_follow_scale_and_none(tiny_dir, pruned_dir):
    """Eq. 4 with the scale: loss = a1 * contrastive + a2 * scale * distill; none = contrastive only."""
    base = _settings(tiny_dir)
    model, processor, ret_id = load_lora_student(pruned_dir, base, base.stage1)
    student = RetEncoder(model).eval()
    batch = PairCollator(processor, base.prompt, base.model.ret_token)(text_pairs(8))
    ctx = StepContext(0, 0, 10, 10, 1, torch.device("cpu"))
    teacher = Teacher(model=load_teacher(base.model.base, pruned_dir, ret_id))
    with torch.no_grad():
        _, full = stage1_loss(student, teacher, batch, ctx, base.stage1)
        _, scaled = stage1_loss(student, teacher, batch, ctx, _settings(tiny_dir, distill_scale=0.05).stage1)
        _, none = stage1_loss(student, None, batch, ctx, _settings(tiny_dir, distill_kind="none").stage1)
    assert full["loss_distill"] > 0 and scaled["loss_distill"] == pytest.approx(full["loss_distill"])
    assert scaled["alpha2"] == pytest.approx(full["alpha2"] * 0.05)
    assert scaled["loss"] == pytest.approx(scaled["alpha1"] * scaled["loss_contrastive"]
                                           + scaled["alpha2"] * scaled["loss_distill"], rel=1e-5)
    assert none["loss_distill"] == 0 and none["alpha2"] == 0
    assert none["loss"] == pytest.approx(none["alpha1"] * full["loss_contrastive"], rel=1e-5)


def test_disabled_stage1_copies_the_pruned_model(tiny_dir, pruned_dir, tmp_path):
    summary = train_stage1(_settings(tiny_dir, enabled=False), pruned_dir, tmp_path / "s1", dataset=text_pairs(8),
                           progress=False)
    assert summary["enabled"] is False and summary["steps"] == 0
    files = sorted(p.name for p in Path(pruned_dir).iterdir())
    assert sorted(p.name for p in (tmp_path / "s1" / "model").iterdir()) == files
    for name in files:
        assert (tmp_path / "s1" / "model" / name).read_bytes() == (Path(pruned_dir) / name).read_bytes()
    assert not (tmp_path / "s1" / "train_log.jsonl").exists()


def test_none_trains_without_a_teacher(tiny_dir, pruned_dir, tmp_path):
    s1 = train_stage1(_settings(tiny_dir, distill_kind="none", teacher="cache"), pruned_dir, tmp_path / "s1",
                      dataset=text_pairs(16), progress=False)  # cache mode, no cache dir: never read
    assert s1["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "s1" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["loss_distill"] == 0 and r["alpha2"] == 0 for r in rows)


def test_teacher_cache_cli_skips_when_no_teacher_is_read(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from puma.cli import app

    monkeypatch.setenv("PUMA_STAGE1__ENABLED", "false")
    res = CliRunner().invoke(app, ["train", "teacher-cache", "--out", str(tmp_path / "tc"), "--model",
                                   str(tmp_path / "nowhere")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "tc" / "NOT_BUILT.json").read_text())["stage1.enabled"] is False
