"""The benchmark harness on fake timings: statistics, interleaving, ratios, report writer, run_all."""

from __future__ import annotations

import json
import types

import pytest

from bench import harness
from bench.run_all import run_one


class FakeClock:
    """A clock that advances only when a fake workload 'runs' (by the workload's own cost)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stats_median_quartiles_and_spread():
    s = harness.stats([4.0, 1.0, 3.0, 100.0, 2.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["n"] == 5
    assert (s["q1"], s["q3"]) == (2.0, 4.0)  # the outlier moves neither the median nor the IQR
    assert s["spread_pct"] == pytest.approx(200 / 3)
    one = harness.stats([2.5])
    assert one["median"] == 2.5 and one["spread_pct"] == 0.0
    with pytest.raises(ValueError):
        harness.stats([])


def test_paired_ratio_is_per_round():
    # Round 2 is twice as slow on both sides (drift): paired ratios stay 2, unpaired would not.
    r = harness.paired_ratio([2.0, 4.0, 2.0], [1.0, 2.0, 1.0])
    assert r["median"] == 2.0 and r["spread_pct"] == 0.0
    with pytest.raises(ValueError):
        harness.paired_ratio([1.0], [1.0, 2.0])


def test_interleaved_alternates_order_and_times_each_call():
    clock, calls = FakeClock(), []

    def work(name, cost):
        def fn():
            calls.append(name)
            clock.now += cost
        return fn

    times = harness.interleaved({"a": work("a", 2.0), "b": work("b", 0.5)}, repeats=4, warmup=1, clock=clock)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warmup, then ABBA...
    assert times == {"a": [2.0] * 4, "b": [0.5] * 4}
    with pytest.raises(ValueError):
        harness.interleaved({"a": work("a", 1.0)}, repeats=0)


def test_interleaved_min_time_repeats_fast_calls():
    clock, count = FakeClock(), {"fast": 0, "slow": 0}

    def work(name, cost):
        def fn():
            count[name] += 1
            clock.now += cost
        return fn

    times = harness.interleaved({"fast": work("fast", 0.01), "slow": work("slow", 1.0)}, repeats=3,
                                warmup=1, min_time=0.1, clock=clock)
    assert count == {"fast": 1 + 3 * 10, "slow": 1 + 3}  # fast: ceil(0.1 / 0.01) calls per sample
    assert times["fast"] == pytest.approx([0.01] * 3) and times["slow"] == pytest.approx([1.0] * 3)


def test_speed_row_throughput_speedup_efficiency():
    times = {"full": [2.0, 2.2, 1.8], "k=12": [1.0, 1.0, 1.0]}
    row = harness.speed_row(times, "full", "k=12", batch_size=4, flops_ratio=2.5)
    assert row["full samples/s"]["median"] == pytest.approx(2.0)
    assert row["k=12 samples/s"]["median"] == 4.0
    assert row["speedup"]["median"] == 2.0
    assert row["efficiency"] == pytest.approx(2.0 / 2.5)
    assert "efficiency" not in harness.speed_row(times, "full", "k=12", batch_size=4)
    assert "pruned samples/s" in harness.speed_row(times, "full", "k=12", batch_size=4, other_label="pruned")


def test_write_report_json_and_markdown(tmp_path):
    sec = {"title": "Pruned vs full", "status": "ok",
           "meta": {"dtype": "bfloat16", "shape": [2, 72], "inputs": {"text": "input_ids 2x72"}},
           "rows": [{"kind": "text", "speedup": harness.stats([2.0, 2.1, 1.9]), "efficiency": 0.95}],
           "notes": ["a note"]}
    report = {"started": "now", "wall_s": 3.0, "machine": {"cpu": "x"},
              "benchmarks": {"prune_speed": sec, "search": {"status": "skipped", "reason": "not there"}}}
    harness.write_report(report, tmp_path / "r" / "bench.json", tmp_path / "r" / "bench.md")
    assert json.loads((tmp_path / "r" / "bench.json").read_text()) == report
    md = (tmp_path / "r" / "bench.md").read_text()
    assert "| kind | speedup | efficiency |" in md and "| text | 2 ±5% | 0.95 |" in md
    assert "- shape: 2x72" in md and "- inputs:\n  - text: input_ids 2x72" in md and "**skipped**: not there" in md and "> a note" in md
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["bench.json", "bench.md"]


def test_run_one_skips_missing_and_reports_errors():
    missing = run_one("no_such_benchmark_xyz", settings=None)
    assert missing["status"] == "skipped" and "no_such_benchmark_xyz.py does not exist" in missing["reason"]

    def fake_import(sections):
        return lambda name: types.SimpleNamespace(run=sections[name.split(".")[1]])

    def boom(settings):
        raise RuntimeError("kaput")

    sections = {"ok": lambda settings: {"rows": [{"a": settings}]}, "noarg": lambda n=3: {"rows": [n]},
                "bad": boom, "notdict": lambda: [1]}
    imp = fake_import(sections)
    ok = run_one("ok", 7, import_module=imp)
    assert ok["status"] == "ok" and ok["rows"] == [{"a": 7}] and ok["wall_s"] >= 0
    assert run_one("noarg", 7, import_module=imp)["rows"] == [3]  # own defaults, settings not forced in
    err = run_one("bad", 7, import_module=imp)
    assert err["status"] == "error" and err["reason"] == "RuntimeError: kaput"
    assert run_one("notdict", 7, import_module=imp)["status"] == "error"


def test_headline_from_prune_speed_main_rows(tmp_path):
    from bench.run_all import headline

    speed = harness.stats([2.0, 2.2, 1.8])
    main = {"arch": "2b", "dtype": "bfloat16", "kind": "text", "k": "12/28", "GFLOPs full": 190.0,
            "speedup": speed, "flops ratio": 2.5, "efficiency": 0.8}
    sec = {"tables": {"main setting": [main], "k sweep": [dict(main, k="4/28")]}}
    rows = headline(sec)
    assert rows == [{"arch": "2b", "dtype": "bfloat16", "attn": None, "kind": "text", "batch": None,
                     "k": "12/28", "speedup": speed, "flops ratio": 2.5, "efficiency": 0.8}]
    md = harness.render_markdown({"headline": rows, "benchmarks": {}})
    assert md.index("## Headline") < md.index("## Machine") and "| 2b | bfloat16 | - | text |" in md


def test_synthetic_batch_and_weight_sharing_pruned_copy():
    """The tiny default: batch layout matches the image grid; the pruned copy shares every weight."""
    import torch

    from bench.archs import build_random, encode, make_batch, pruned_copy

    model = build_random("tiny")
    kw = {"template_tokens": 10, "text_tokens": 5, "image_hw": (480, 640), "min_pixels": 3136, "max_pixels": 12544}
    batch = make_batch(model.config, "image+text", 3, **kw)
    gh, gw = batch["image_grid_thw"][0, 1:].tolist()
    assert batch["pixel_values"].shape[0] == 3 * gh * gw and gh * gw <= 12544 // 14**2
    assert batch["input_ids"].shape == (3, 10 + 2 + gh * gw // 4 + 5)
    assert (batch["mm_token_type_ids"].sum(1) == gh * gw // 4).all()
    assert "pixel_values" not in make_batch(model.config, "text", 3, **kw)
    pruned = pruned_copy(model, 2)
    assert len(pruned.language_model.layers) == 2 and len(model.model.language_model.layers) == 8
    with torch.no_grad():
        assert encode(pruned, batch).shape == encode(model, batch).shape == (3, 64)
