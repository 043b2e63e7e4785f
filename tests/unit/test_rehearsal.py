"""The rehearsal driver's pieces (bench/rehearsal.py): workspace copy, disk accounting, profile + cut, sampling.

The rehearsal itself (the whole pipeline on the random 2B) is the ``slow`` test in
tests/pipeline/test_rehearsal_run.py and ``make rehearsal``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import rehearsal


def test_allocated_counts_hard_links_once(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(1 << 20))
    one = rehearsal.allocated(tmp_path)
    assert one >= 1 << 20
    os.link(a, tmp_path / "b.bin")
    assert rehearsal.allocated(tmp_path) == one  # a hard link adds no bytes
    (tmp_path / "c.bin").write_bytes(a.read_bytes())
    assert rehearsal.allocated(tmp_path) >= one + (1 << 20)  # a copy does
    (tmp_path / "link").symlink_to(a)  # a symlink is not followed
    assert rehearsal.allocated(tmp_path) < one + (1 << 20) + 64 * 1024
    assert rehearsal.allocated(tmp_path / "missing") == 0


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def test_workspace_copies_tracked_and_untracked_files_not_ignored_ones(tmp_path):
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    _git(src, "init", "-q")
    (src / ".gitignore").write_text("/artifacts/\n")
    (src / "tracked.txt").write_text("v1")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "x")
    (src / "tracked.txt").write_text("v2 (uncommitted)")
    (src / "new.txt").write_text("untracked")
    (src / "artifacts").mkdir()
    (src / "artifacts" / "big.bin").write_text("ignored")
    rehearsal.make_workspace(src, work)
    assert (work / "tracked.txt").read_text() == "v2 (uncommitted)"
    assert (work / "new.txt").read_text() == "untracked"
    assert not (work / "artifacts").exists()
    assert _git(work, "status", "--porcelain") == ""  # committed: DVC and the register stage see a git repo
    assert "rehearsal workspace" in _git(work, "log", "--oneline")
    rehearsal.make_workspace(src, work)  # a workspace it made is replaced
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="not a rehearsal workspace"):
        rehearsal.make_workspace(src, other)
    assert (other / "keep.txt").exists()


def test_apply_cut_switches_profile_then_edits_keys(tmp_path):
    from puma.config import load_settings

    repo = Path(rehearsal.REPO)
    (tmp_path / "params.yaml").write_bytes((repo / "params.yaml").read_bytes())
    diff = rehearsal.apply_cut(tmp_path, "rehearsal-2b", rehearsal.CUTS["quick"])
    s = load_settings(tmp_path / "params.yaml")
    assert s.model.base == "artifacts/random-2b" and s.model.prune_layers == 12 and s.model.dtype == "bfloat16"
    assert s.stage1.lora_r == 128 and s.prompt.max_pixels == 300 * 28 * 28
    assert s.stage1.max_steps == 1 and s.data.nli_rows == 8 and s.data.synth_scale == 0.05  # cut + profile
    assert "+  base: artifacts/random-2b" in diff
    assert (repo / "params.yaml").read_bytes() != (tmp_path / "params.yaml").read_bytes()


def test_measured_reports_peak_rss_wall_and_disk(tmp_path):
    """A child that holds ~200 MB and writes a 3 MB file: the peaks and bytes are seen, not assumed."""
    work = tmp_path / "ws"
    (work / "artifacts").mkdir(parents=True)
    code = ("import time, os\nb = bytearray(200 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
            "open('artifacts/out.bin', 'wb').write(os.urandom(3 * 2**20))\ntime.sleep(1.2)\n")
    t0 = time.perf_counter()
    row = rehearsal.measured([sys.executable, "-c", code], work, dict(os.environ), tmp_path / "log", work)
    assert row["rc"] == 0 and 1.0 <= row["wall_s"] <= time.perf_counter() - t0 + 0.1
    assert 200 <= row["peak_rss_mb"] < 400 and 200 <= row["peak_tree_rss_mb"] < 400
    assert 190 <= row["peak_anon_mb"] < 400  # the bytearray is anonymous memory
    assert row["disk_written"]["artifacts"] >= 3 * 2**20 and row["disk_written"]["dvc_cache"] == 0
    bad = rehearsal.measured([sys.executable, "-c", "raise SystemExit(3)"], work, dict(os.environ), tmp_path / "log", work)
    assert bad["rc"] == 3


def test_7b_extrapolation_counts_the_paper_run():
    """FLOPs and bytes of the paper's 7B run from the analytic counts: spot-check each against a hand sum."""
    from bench import rehearsal_7b as x
    from puma.model.flops import forward_flops, load_config

    rows, facts = x.extrapolate(gpus=4, peak_tflops=312.0, mfu=0.35)
    by = {r["stage"]: r for r in rows}
    cfg = load_config("7b")
    assert 3.9e9 < facts["pruned_params"] < 4.1e9 and 7.5e9 < facts["full_params"] < 8.4e9
    teacher = 2 * x.NLI_ROWS * forward_flops(cfg, 0, x.NLI_TEXT_TOKENS).decoder
    assert by["teacher_cache"]["pflops"] == round(teacher / 1e15, 1)
    assert by["teacher_cache"]["hours"] == teacher / (4 * 312e12 * 0.35) / 3600
    assert "1,909 steps" in by["stage1"]["note"]  # 275k pairs x 2 epochs / (72 x 4 GPUs)
    assert by["register"]["disk_gib"] == facts["pruned_params"] * 2 / x.GIB  # bf16, one MLflow copy
    assert by["stage2"]["disk_copy_gib"] == 2 * by["stage2"]["disk_gib"]  # a copying cache doubles an out
    assert by["register"]["disk_copy_gib"] == by["register"]["disk_gib"]
    assert by["stage2"]["gpu_mem_gib"] < 80 and by["stage1"]["gpu_mem_gib"] < 80  # fits 80 GB under ZeRO-2
    md = x.markdown(rows, facts, 4, 312.0, 0.35, None)
    assert md.count("\n| ") == len(rows) + 2 and "115.5" in md
