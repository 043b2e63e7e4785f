"""Table-1 evaluation end to end on MBEIR-mini with the untrained pruned tiny model.

Checks the metrics file's exact shape, the seeded instruction record, reuse of embeddings on a
rerun, an oracle (recall from PumaRetriever.encode_* + numpy brute force), and global <= local.
"""

import json

import numpy as np
import pytest

from puma.config import load_settings
from puma.data.columns import TABLE1_COLUMNS
from puma.data.datasets import EvalView
from puma.evaluate import evaluate_table1
from puma.index import search_numpy
from puma.metrics import recall_at_k

NAMES = [c.name for c in TABLE1_COLUMNS]


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir, tmp_path_factory):
    from puma.model.prune import save_pruned

    return save_pruned(tiny_dir, 4, tmp_path_factory.mktemp("pruned") / "pruned")


@pytest.fixture(scope="module")
def retriever(pruned_dir):
    import torch

    from puma.model.retriever import PumaRetriever

    torch.set_num_threads(1)
    return PumaRetriever.from_pretrained(pruned_dir)


@pytest.fixture(scope="module")
def evaluated(retriever, pruned_dir, mbeir_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval"
    metrics = evaluate_table1(retriever, pruned_dir, mbeir_mini, out, load_settings(None))
    return out, metrics


def test_metrics_json_has_the_table1_shape_in_percent(evaluated):
    out, metrics = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics and list(on_disk) == ["local", "global"]
    for pool in ("local", "global"):
        table = on_disk[pool]
        assert list(table) == NAMES + ["avg", "single", "mixed", "multi"]
        assert all(0.0 <= v <= 100.0 for v in table.values())
        assert table["avg"] == pytest.approx(np.mean([table[n] for n in NAMES]), abs=0.01)
        assert table["multi"] == pytest.approx((table["oven_task8"] + table["infoseek_task8"]) / 2, abs=0.01)
    chance = json.loads((out / "chance.json").read_text())
    assert list(chance["local"]) == list(on_disk["local"])
    assert all(chance["global"][n] < chance["local"][n] for n in NAMES)  # bigger pool, lower chance


def test_metrics_ci_brackets_every_key_and_is_the_bootstrap_of_the_hits(evaluated):
    from puma.data.columns import GROUPS
    from puma.metrics import bootstrap_ci

    out, metrics = evaluated
    ci = json.loads((out / "ci_metrics.json").read_text())
    assert (ci["level"], ci["resamples"], ci["seed"]) == (0.95, 1000, 0)
    lines = [json.loads(x) for x in (out / "topk.jsonl").read_text().splitlines()]
    for pool in ("local", "global"):
        assert list(ci[pool]) == list(metrics[pool])
        for key, iv in ci[pool].items():
            assert iv["low"] <= metrics[pool][key] <= iv["high"], (pool, key)
        hits = {n: [x["hit"] for x in lines if x["pool"] == pool and x["column"] == n] for n in NAMES}
        assert ci[pool] == bootstrap_ci(hits, GROUPS, 1000, 0, 0.95)


def test_global_pool_never_beats_local(evaluated):
    # The global pool contains the local pool, so a positive can only drop in rank.
    _, metrics = evaluated
    assert all(metrics["global"][n] <= metrics["local"][n] for n in NAMES)


def test_per_query_records_and_seeded_instructions(evaluated, mbeir_mini):
    out, metrics = evaluated
    lines = [json.loads(x) for x in (out / "topk.jsonl").read_text().splitlines()]
    views = {c.name: EvalView(mbeir_mini, c, instruction_seed=0) for c in TABLE1_COLUMNS}
    assert len(lines) == 2 * sum(len(v) for v in views.values())
    for pool in ("local", "global"):
        for name in NAMES:
            hits = [x["hit"] for x in lines if x["pool"] == pool and x["column"] == name]
            assert 100 * np.mean(hits) == pytest.approx(metrics[pool][name], abs=0.01)
    recorded = [json.loads(x) for x in (out / "instructions.jsonl").read_text().splitlines()]
    expected = [dict(column=n, **c) for n, v in views.items() for c in v.instruction_choices]
    assert recorded == expected


def test_oracle_against_encode_and_numpy(evaluated, retriever, mbeir_mini):
    _, metrics = evaluated
    for name in ("cirr_task7", "webqa_task1", "nights_task4"):
        view = EvalView(mbeir_mini, name, instruction_seed=0)
        ids, items = zip(*[(did, item) for did, item, _ in view.pool_items("local")])
        docs = retriever.encode_document(list(items), batch_size=8).astype(np.float16)  # stored as fp16
        queries = retriever.encode_query(view.queries, batch_size=8)
        _, rows = search_numpy(queries, docs, 10)
        ranked = [[ids[r] for r in row] for row in rows]
        k = load_settings(None).evaluate.k_for(name)
        assert 100 * recall_at_k(ranked, view.relevant, k) == pytest.approx(metrics["local"][name], abs=0.01)


def test_rerun_reuses_embeddings(evaluated, retriever, pruned_dir, mbeir_mini, tmp_path):
    import shutil

    out = shutil.copytree(evaluated[0], tmp_path / "eval")  # keeps mtimes; the shared dir stays intact
    metrics = evaluated[1]
    shard = out / "embeddings" / "pools" / "cirr_task7" / "shards" / "00000.npy"
    before = shard.stat().st_mtime_ns
    again = evaluate_table1(retriever, pruned_dir, mbeir_mini, out, load_settings(None),
                            columns=[c for c in TABLE1_COLUMNS if c.name == "cirr_task7"])
    assert shard.stat().st_mtime_ns == before
    assert again["local"]["cirr_task7"] == metrics["local"]["cirr_task7"]


def test_report_from_the_evaluation(evaluated, mbeir_mini, tmp_path):
    from puma.report import load_examples, write_report

    out, _ = evaluated
    examples = load_examples(out, mbeir_mini, 3)
    assert len(examples) == 3 and all(len(e["candidates"]) == 5 for e in examples)
    path = write_report([out, out], tmp_path / "rep", names=["a", "b"], examples=examples, root=mbeir_mini)
    text = path.read_text()
    assert "| chance |" in text and "Comparison" in text and "VisualNews t→i" in text
    assert "k = 10 for Fashion200K and FashionIQ, 5 otherwise; hit rate" in text  # from eval_meta.json
    assert (tmp_path / "rep" / "plots" / "recall_by_column.csv").read_text().count("\n") == 17
    assert "data:image/jpeg;base64" in (tmp_path / "rep" / "examples.html").read_text()
    ci = json.loads((out / "ci_metrics.json").read_text())
    lo, hi = ci["local"]["avg"]["low"], ci["local"]["avg"]["high"]
    assert "95% bootstrap confidence intervals over queries (local pool)" in text
    assert f"{metrics_avg(out):.1f} [{lo:.1f}, {hi:.1f}]" in text
    # b is a: on the same queries the paired difference is exactly 0 [0, 0] (its own interval is not)
    assert "| b | local | +0.0 [+0.0, +0.0] |" in text
    assert "Modality errors" in text and text.count("| a |") == 5  # local, global, their intervals, the errors
    comparison = json.loads((tmp_path / "rep" / "comparison.json").read_text())
    assert comparison["base"] == "a" and comparison["runs"]["b"]["local"]["avg"] == {"diff": 0.0, "low": 0.0, "high": 0.0}


def metrics_avg(out):
    return json.loads((out / "metrics.json").read_text())["local"]["avg"]
