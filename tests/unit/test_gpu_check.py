"""bench/gpu_check.py: its CPU dry run end to end, its orchestration, its plan, and the torch top-k oracle."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from bench import gpu_check
from bench.harness import fmt_cell
from bench.search import numpy_topk, torch_topk


def _figures(section: dict) -> list:
    """Every numeric cell (a median or a plain number) in a section's tables."""
    rows = [r for rs in section.get("tables", {}).values() for r in rs] + section.get("rows", [])
    vals = [v["median"] if isinstance(v, dict) and "median" in v else v for r in rows for v in r.values()]
    return [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.fixture
def restore_process_state():
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    yield
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, handler)


def test_dry_run_every_part_gives_a_figure_or_a_reason(tmp_path, restore_process_state):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert report["finished"] and report["dry_run"]
    parts = report["benchmarks"]
    assert set(gpu_check.PARTS) <= set(parts)
    for name in gpu_check.PARTS:
        sec = parts[name]
        assert sec["status"] in ("ok", "skipped", "error"), name
        if sec["status"] == "ok":
            assert _figures(sec), f"{name}: ok but no figure"
        else:
            assert sec["reason"].strip(), f"{name}: {sec['status']} without a reason"
        for row in sec.get("tables", {}).get("not measured", []):
            assert row["what"] and row["why"].strip()
    # On the CPU every part can run: the figures are real measurements of the scaled models.
    assert all(parts[n]["status"] == "ok" for n in ("encode", "train", "search", "tests")), \
        {n: parts[n].get("reason") for n in parts}
    main = parts["encode"]["tables"][gpu_check.MAIN_TABLE]
    assert {(r["arch"], r["kind"]) for r in main} == {(f"{a} (scaled)", k) for a in ("7b", "2b")
                                                      for k in gpu_check.DRY_PLAN.kinds}
    for r in main:
        assert r["TFLOPs/sample pruned"] < r["TFLOPs/sample full"] and r["flops ratio"] > 1
        assert r["speedup"]["median"] > 0 and r["efficiency"] > 0
    train = parts["train"]["tables"]["training step"]
    assert {r["grad ckpt"] for r in train} == {"off", "on"} and all(r["full samples/s"]["median"] > 0 for r in train)
    search = {r["path"]: r for r in parts["search"]["tables"]["exact search"]}
    assert search["torch fp32 (cpu)"]["overlap"] == 1.0 and search["torch fp16 (cpu)"]["overlap"] > 0.95
    tests = parts["tests"]["rows"][0]
    assert tests["failed"] == 0 and tests["errors"] == 0 and tests["skipped"] >= 1  # the cuda oracle, no GPU
    # The markdown is the rendering of the JSON, and shows its figures.
    assert md == gpu_check.render(report)
    assert "DRY RUN" in md and fmt_cell(main[0]["speedup"]) in md
    assert parts["table2"]["rows"][0]["source"].startswith("paper")


def test_a_failing_part_is_reported_and_the_rest_still_run(tmp_path, monkeypatch, restore_process_state):
    def boom(check):
        raise RuntimeError("CUDA error: an illegal memory access")

    def fine(check):
        return {"title": "fine", "rows": [{"x": 1.5}]}

    def overrun(check):  # a part that spends the whole global budget
        check.end = 0.0
        return fine(check)

    monkeypatch.setattr(gpu_check, "PART_FNS", {"encode": boom, "train": fine, "search": overrun, "tests": fine})
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--budget-s", "60"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["benchmarks"]
    assert parts["encode"]["status"] == "error" and "illegal memory access" in parts["encode"]["reason"]
    assert parts["train"]["status"] == parts["search"]["status"] == "ok" and parts["train"]["rows"] == [{"x": 1.5}]
    assert parts["tests"]["status"] == "skipped" and "deadline" in parts["tests"]["reason"]
    assert report["finished"] and (tmp_path / "gpu_check.md").read_text() == gpu_check.render(report)


def test_device_plan_is_params_yaml_gpu_setting():
    from puma.config import load_settings

    s = load_settings()
    plan = gpu_check.DEVICE_PLAN
    assert sorted(r.arch for r in s.bench.gpu_runs) == sorted(plan.archs)
    for r in s.bench.gpu_runs:
        assert (r.dtype, r.batch_size, r.k, tuple(r.k_sweep)) == (plan.dtype, plan.batch, plan.k, plan.k_sweep)
        assert (tuple(r.image_hw), r.min_pixels, r.max_pixels) == (plan.image_hw, plan.min_pixels, plan.max_pixels)
        assert set(plan.kinds) <= set(r.kinds)
    assert (s.bench.template_tokens, s.bench.text_tokens) == (plan.template_tokens, plan.text_tokens)
    assert (s.bench.lora_r, s.stage1.tau, tuple(s.bench.attn)) == (plan.lora_r, plan.tau, plan.attn)
    assert sum(dict(plan.caps).values()) >= plan.budget_s  # no part is starved by its own cap


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torch_topk_matches_numpy(device, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((3000, 64)).astype(np.float32)
    queries = rng.standard_normal((70, 64)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    pool, queries = pool.astype(np.float16).astype(np.float32), queries.astype(np.float16).astype(np.float32)
    want = numpy_topk(queries, pool, 10)  # (70, 10)
    t = {name: torch.from_numpy(x).to(device, dtype) for name, x in (("q", queries), ("p", pool))}
    scores, rows = torch_topk(t["q"], t["p"], 10, query_chunk=32)  # chunks of 32, 32, 6 queries
    assert rows.shape == (70, 10) and scores.dtype == torch.float32
    rows = rows.cpu().numpy()
    exact = (queries @ pool.T)[np.arange(70)[:, None], rows]
    assert np.all(np.diff(exact, axis=1) <= 1e-2)  # best first
    if dtype == torch.float32:
        assert (rows == want).mean() == 1.0
    else:  # fp16 scores round: the same set, order may swap among near ties
        assert np.mean([len(set(a) & set(b)) for a, b in zip(rows, want, strict=True)]) >= 9.5
    assert torch_topk(t["q"], t["p"][:5], 10)[1].shape == (70, 5)  # k above the pool size: the whole pool
