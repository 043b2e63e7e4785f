"""The dvc `tiny` stage builds the tiny model only when model.base is the embedded path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from puma.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_other_base_writes_only_a_marker(tmp_path):
    out = tmp_path / "tiny"
    res = CliRunner().invoke(app, ["model", "tiny", "--out", str(out), "--base", "Qwen/Qwen2-VL-7B-Instruct"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.iterdir()] == ["NOT_BUILT.json"]
    assert json.loads((out / "NOT_BUILT.json").read_text())["model.base"] == "Qwen/Qwen2-VL-7B-Instruct"


@pytest.mark.parametrize("base", ["artifacts/tiny", "artifacts/pretrained"])
def test_embedded_base_builds(tmp_path, monkeypatch, base):
    """The embedded base is the tiny model itself or its pretrained copy (the `pretrain` stage's output)."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["model", "tiny", "--out", "artifacts/tiny", "--layers", "2", "--base", base])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "artifacts/tiny/model.safetensors").is_file()


def test_dvc_tiny_stage_passes_the_base():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tiny"]
    assert "--base ${model.base}" in stage["cmd"] and "model.base" in stage["params"]
