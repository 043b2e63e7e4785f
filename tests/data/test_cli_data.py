"""`puma data ...` end to end through the typer app (in-process)."""

import hashlib

from typer.testing import CliRunner

from puma.cli import app

runner = CliRunner()


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_twice_same_bytes_validate_and_stats(tmp_path):
    for name in ("a", "b"):
        res = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / name), "--seed", "3", "--scale", "0.1"])
        assert res.exit_code == 0, res.output
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    res = runner.invoke(app, ["data", "validate", str(tmp_path / "a")])
    assert res.exit_code == 0 and "ok (" in res.output
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "a")])
    assert res.exit_code == 0 and res.output.count("_task") == 16 and "| fashioniq_task7 | mixed |" in res.output


def test_validate_reports_every_problem_and_fails(tmp_path):
    runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "m"), "--scale", "0.1"])
    q = tmp_path / "m/query/test/mbeir_cirr_task7_test.jsonl"
    lines = q.read_text().splitlines()
    q.write_text("\n".join([lines[0][:30], lines[1].replace('"image,text"', '"video"')] + lines[2:]) + "\n")
    res = runner.invoke(app, ["data", "validate", str(tmp_path / "m"), "--no-image-open"])
    assert res.exit_code == 1
    assert f"{q}:1: not valid JSON" in res.output and f"{q}:2: query_modality 'video'" in res.output


def test_synth_nli_and_validate_it(tmp_path):
    out = tmp_path / "nli.csv"
    assert runner.invoke(app, ["data", "synth-nli", "--out", str(out), "--rows", "16"]).exit_code == 0
    assert len(out.read_text().splitlines()) == 17
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0


def test_download_offline_fails_cleanly(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    res = runner.invoke(app, ["data", "download", "nli", "--out", str(tmp_path / "n.csv")])
    assert res.exit_code == 1 and "cannot reach the Hugging Face hub" in res.output


def test_prepare_synth_then_report(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("PUMA_DATA__SYNTH_SCALE", "0.1")
    res = runner.invoke(app, ["data", "prepare", "mbeir", "--out", str(tmp_path / "m"), "--params", "none.yaml"])
    assert res.exit_code == 2  # an explicit params file that does not exist is an error
    res = runner.invoke(app, ["data", "prepare", "mbeir", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0 and "ready (synth" in res.output, res.output
    res = runner.invoke(app, ["data", "validate", str(tmp_path / "m"), "--report", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert res.exit_code == 0 and report["ok"] and report["problems"] == []
