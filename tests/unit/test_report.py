"""Report helpers that need no evaluation run: the k phrase and the summary-key order."""

import pytest

from puma.config import EvaluateSettings
from puma.data.columns import TABLE1_COLUMNS
from puma.metrics import SUMMARY_KEYS
from puma.report import TABLE_KEYS, k_sentence, table1_markdown


def test_k_sentence_names_datasets_or_columns():
    ev = EvaluateSettings()
    assert k_sentence({c.name: ev.k_for(c.name) for c in TABLE1_COLUMNS}) == \
        "k = 10 for Fashion200K and FashionIQ, 5 otherwise"
    # Only one of Fashion200K's two columns at 10: the column is named, not the dataset.
    assert k_sentence({"fashion200k_task0": 10, "fashion200k_task3": 5, "cirr_task7": 5}) == \
        "k = 10 for fashion200k_task0, 5 otherwise"
    assert k_sentence({"cirr_task7": 5, "mscoco_task0": 5}) == "k = 5 for every column"


def test_table_keys_are_the_metrics_summary_keys_in_table_order():
    assert sorted(TABLE_KEYS) == sorted(SUMMARY_KEYS) and TABLE_KEYS[-1] == "avg"
    head = table1_markdown({"run": {}}).splitlines()[0]
    assert head.endswith("| Single | Mixed | Multi | Avg |")


def test_ci_markdown_shows_point_and_interval_per_key():
    from puma.report import ci_markdown

    keys = [c.name for c in TABLE1_COLUMNS] + list(TABLE_KEYS)
    points = {"run": {k: 10.0 for k in keys}}
    cis = {"run": {k: {"low": 8.25, "high": 12.5} for k in keys}}
    row = ci_markdown(points, cis).splitlines()[2]
    assert row.count("10.0 [8.2, 12.5]") == len(keys)


def test_seed_summary_is_the_t_interval():
    import statistics

    from puma.report import seed_summary

    s = seed_summary([10.0, 12.0, 14.0])
    half = 4.303 * statistics.stdev([10.0, 12.0, 14.0]) / 3 ** 0.5
    assert s == {"mean": 12.0, "low": round(12 - half, 2), "high": round(12 + half, 2), "n": 3}
    assert seed_summary([5.0]) == {"mean": 5.0, "low": 5.0, "high": 5.0, "n": 1}


def test_ablation_table_from_dvc_exp_csv(tmp_path):
    from puma.report import parse_exp_csv, write_ablation

    text = ("Experiment,rev,artifacts/eval/metrics.json:local.avg,artifacts/eval/metrics.json:global.avg,seed\n"
            "workspace,-,20.0,10.0,0\n"
            "t5-mac-s0,abc,20.0,10.0,0\nt5-mac-s1,abd,22.0,12.0,1\nt5-mac-s2,abe,24.0,11.0,2\n"
            "t5-no-mac-s0,abf,18.0,9.0,0\n")
    rows = parse_exp_csv(text)
    assert rows == {"t5-mac": {0: {"local.avg": 20.0, "global.avg": 10.0}, 1: {"local.avg": 22.0, "global.avg": 12.0},
                               2: {"local.avg": 24.0, "global.avg": 11.0}},
                    "t5-no-mac": {0: {"local.avg": 18.0, "global.avg": 9.0}}}
    md = write_ablation(rows, "table5", tmp_path, paper={"MAC": {"local.avg": 50.0}}).read_text()
    assert "| t5-mac | 3 | 22.0 [" in md and "| paper: MAC | – | 50.0 |" in md
    assert (tmp_path / "table5.csv").read_text().count("\n") == 5  # header + 2 rows x 2 keys
    with pytest.raises(ValueError, match="<csv>:2"):
        parse_exp_csv("Experiment,m/metrics.json:local.avg\nx-s0,abc\n".replace("abc", "oops"))


def test_parse_exp_csv_reads_bare_metric_columns():
    """`dvc exp show --csv` with one metrics file (the pipeline's) names the columns by key alone."""
    from puma.report import parse_exp_csv

    text = "Experiment,rev,local.avg,global.avg,seed\nt5-mac-s1,abc123,17.19,7.03,1\nworkspace,-,,,0\n"
    assert parse_exp_csv(text) == {"t5-mac": {1: {"local.avg": 17.19, "global.avg": 7.03}}}
    # DVC lists a running experiment with its baseline's metrics (State "Running"): not a result yet
    text = ("Experiment,rev,State,local.avg\nt3-mac-s2,1561e89,Running,17.51\nt3-mac-s1,c040dd9,,16.41\n"
            "t3-mac-s3,c040dda,Queued,17.51\nt3-mac-s4,c040ddb,Success,15.0\n")
    assert parse_exp_csv(text) == {"t3-mac": {1: {"local.avg": 16.41}, 4: {"local.avg": 15.0}}}


def test_parse_exp_csv_keeps_shared_base_and_own_base_runs_apart():
    """ablations/run.sh --vary-base names its runs NAME-bSEED (each seed pretrained its own base): they are a
    different experiment from NAME-sSEED (one shared base), and neither is read as the other."""
    from puma.report import parse_exp_csv

    text = "Experiment,rev,local.avg\nt5-mac-s0,a,17.0\nt5-mac-b0,b,9.0\nt5-mac-b1,c,4.0\nt5-mac-bx,d,1.0\n"
    assert parse_exp_csv(text) == {"t5-mac": {0: {"local.avg": 17.0}}}
    assert parse_exp_csv(text, "b") == {"t5-mac": {0: {"local.avg": 9.0}, 1: {"local.avg": 4.0}}}
    with pytest.raises(ValueError, match="marker"):
        parse_exp_csv(text, "x")



def test_ablation_report_keeps_the_tables_rows_in_order_with_aliases_and_the_papers(tmp_path):
    """`puma ablation-report TABLE` reports only the rows of ablations/TABLE.exp (a repository's `dvc exp show`
    lists every table's experiments), in the file's order; --alias reads a row from the experiment it was
    measured under; the paper's rows of that table are printed beside them."""
    from typer.testing import CliRunner

    from puma.cli import app
    from puma.report import exp_rows, select_rows

    exp = tmp_path / "table3.exp"
    exp.write_text("# comment\nt3-none   -S stage1.enabled=false  # trailing\n\nt3-distill-mac\nt3-mac -S x=1\n")
    assert exp_rows(exp) == {"t3-none": {"stage1.enabled": "false"}, "t3-distill-mac": {}, "t3-mac": {"x": "1"}}
    csv_text = ("Experiment,rev,local.single,local.avg,global.avg\n"
                "t3-mac-s0,a,9,12.0,5.0\nt5-mac-s0,b,9,20.0,9.0\nt5-mac-s1,c,9,22.0,10.0\nt5-no-mac-s0,d,9,1.0,1.0\n")
    rows, missing = select_rows({"t5-mac": {0: {"local.avg": 1.0}}, "t3-mac": {0: {"local.avg": 2.0}}},
                                list(exp_rows(exp)), {"t3-distill-mac": "t5-mac"})
    assert list(rows) == ["t3-distill-mac", "t3-mac"] and missing == ["t3-none"]
    (tmp_path / "exp.csv").write_text(csv_text)
    (tmp_path / "other.csv").write_text("Experiment,global.avg,local.avg\nt5-mac-s2,11.0,24.0\n")  # another clone's
    res = CliRunner().invoke(app, ["ablation-report", "table3", "--csv", str(tmp_path / "exp.csv"),
                                   "--csv", str(tmp_path / "other.csv"), "--exp", str(exp),
                                   "--alias", "t3-distill-mac=t5-mac", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "table3.md").read_text().splitlines()
    table = [line.split(" | ")[0] for line in md if line.startswith("| t")]
    assert table == ["| t3-distill-mac", "| t3-mac"]  # file order, t5-no-mac left out
    assert any(line.startswith("| t3-distill-mac | 3 | 9.0 [9.0, 9.0] | 22.0 [") for line in md)
    assert any("paper: (Table 3) distillation + MAC" in line and "44.2" in line for line in md)
    assert "no experiments for t3-none" in res.output
    bad = CliRunner().invoke(app, ["ablation-report", "table3", "--csv", str(tmp_path / "exp.csv"), "--alias", "x"])
    assert bad.exit_code == 2
    (tmp_path / "bad.exp").write_text("row -S a=1\nrow2 a=1\n")
    with pytest.raises(ValueError, match="bad.exp:2"):
        exp_rows(tmp_path / "bad.exp")
    # --vary-base reads the runs that pretrained a base per seed (NAME-bSEED), and only those
    (tmp_path / "vb.csv").write_text(csv_text + "t5-mac-b0,e,9,4.0,2.0\nt5-mac-b1,f,9,8.0,3.0\n")
    res = CliRunner().invoke(app, ["ablation-report", "table3", "--vary-base", "--csv", str(tmp_path / "vb.csv"),
                                   "--exp", str(exp), "--alias", "t3-distill-mac=t5-mac", "--out", str(tmp_path / "vb")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "vb" / "table3.md").read_text()
    assert "| t3-distill-mac | 2 | 9.0 [9.0, 9.0] | 6.0 [" in md and "| t3-mac |" not in md
    res = CliRunner().invoke(app, ["ablation-report", "table3", "--vary-base", "--csv", str(tmp_path / "exp.csv"),
                                   "--exp", str(exp), "--out", str(tmp_path / "none")])
    assert res.exit_code == 1 and "NAME-bSEED" in res.output
    # --paired ROW: each other row's difference from it on the same seed
    (tmp_path / "pb.csv").write_text(csv_text + "t5-mac-b0,e,9,4.0,2.0\nt5-mac-b1,f,9,8.0,3.0\n"
                                     "t3-mac-b0,g,9,5.5,2.0\nt3-mac-b1,h,9,9.5,3.5\n")
    res = CliRunner().invoke(app, ["ablation-report", "table3", "--vary-base", "--csv", str(tmp_path / "pb.csv"),
                                   "--exp", str(exp), "--alias", "t3-distill-mac=t5-mac", "--out", str(tmp_path / "pb"),
                                   "--paired", "t3-distill-mac"])
    assert res.exit_code == 0, res.output
    assert "| t3-mac - t3-distill-mac | 2 | +0.0 [+0.0, +0.0] | +1.5 [+1.5, +1.5] |" in (tmp_path / "pb" / "table3.md").read_text()
    res = CliRunner().invoke(app, ["ablation-report", "table3", "--vary-base", "--csv", str(tmp_path / "pb.csv"),
                                   "--exp", str(exp), "--out", str(tmp_path / "pb2"), "--paired", "t3-none"])
    assert res.exit_code == 2 and "--paired t3-none" in res.output


def test_ablation_report_plots_against_an_override(tmp_path, monkeypatch):
    """--x KEY: the rows' values of that override are the plot's x (Figure 5: Recall against k)."""
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from puma.cli import app

    exp = tmp_path / "fig5-k.exp"
    exp.write_text("k2 -S model.prune_layers=2\nk8 -S model.prune_layers=8\n")
    (tmp_path / "exp.csv").write_text("Experiment,local.avg,global.avg\nk2-s0,10,4\nk2-s1,12,5\nk8-s0,18,9\n")
    args = ["ablation-report", "fig5-k", "--csv", str(tmp_path / "exp.csv"), "--exp", str(exp), "--out", str(tmp_path)]
    res = CliRunner().invoke(app, [*args, "--x", "model.prune_layers"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fig5-k.png").read_bytes()[:4] == b"\x89PNG"
    calls = []
    monkeypatch.setattr("puma.report._plot_against", lambda *a: calls.append(a[3]))
    assert CliRunner().invoke(app, args).exit_code == 0  # every row sets one key: plotted against it by default
    assert calls == [{"k2": 2.0, "k8": 8.0}]
    assert CliRunner().invoke(app, [*args, "--x", "mac.lambda"]).exit_code == 2  # no row sets it



def test_paired_differences_cancel_the_seed_and_match_the_naive_per_seed_difference(tmp_path):
    """Rows that differ by a constant on every seed, seeds that differ a lot: the rows' own intervals overlap,
    the paired difference is exact (zero width); a seed only one row has is left out of the pair."""
    import statistics

    from puma.report import paired_differences, write_ablation

    rows = {"none": {0: {"local.avg": 10.0, "global.avg": 2.0}, 1: {"local.avg": 5.0, "global.avg": 1.0},
                     2: {"local.avg": 4.0, "global.avg": 1.5}},
            "mac": {0: {"local.avg": 11.0, "global.avg": 2.5}, 1: {"local.avg": 6.0, "global.avg": 0.5},
                    2: {"local.avg": 5.0, "global.avg": 1.0}, 3: {"local.avg": 99.0, "global.avg": 9.0}}}
    d = paired_differences(rows, "none", ["local.avg", "global.avg"])
    assert list(d) == ["mac"]
    assert d["mac"]["local.avg"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    g = [2.5 - 2.0, 0.5 - 1.0, 1.0 - 1.5]  # the naive per-seed differences
    half = 4.303 * statistics.stdev(g) / 3 ** 0.5
    assert d["mac"]["global.avg"] == {"mean": round(statistics.fmean(g), 2), "low": round(statistics.fmean(g) - half, 2),
                                      "high": round(statistics.fmean(g) + half, 2), "n": 3}
    md = write_ablation(rows, "table3", tmp_path, paired="none").read_text()
    assert "row minus none" in md and "| mac - none | 3 | +1.0 [+1.0, +1.0] |" in md
    assert (tmp_path / "table3.paired.csv").read_text().count("\n") == 3  # header + 2 keys
    with pytest.raises(ValueError, match="paired reference 'nope'"):
        paired_differences(rows, "nope", ["local.avg"])


def _topk(path, hits):
    """An evaluation directory holding only topk.jsonl: ``hits`` = {(pool, column): [hit per query]}."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"column": col, "pool": pool, "qid": f"0:{i}", "k": 5, "hit": h, "ids": []})
             for (pool, col), hs in hits.items() for i, h in enumerate(hs)]
    (path / "topk.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_paired_comparison_is_the_recall_difference_with_a_paired_interval(tmp_path):
    """other - base on the same queries: the point is the difference of the recalls (column, group means,
    avg); the interval is a bootstrap of the per-query differences, so a run against itself gives exactly
    0 [0, 0] (two runs' own intervals would both be wide), and one better on a few queries of otherwise
    shared hits gives an interval above 0 that a naive loop over the same resample indices reproduces."""
    import numpy as np

    from puma.report import paired_comparison

    rng = np.random.default_rng(1)
    shared = rng.random(60) < 0.4
    better = shared.copy()
    better[np.flatnonzero(~shared)[:9]] = True  # 9 more hits of 60, the rest the same
    base = _topk(tmp_path / "a", {("local", "mscoco_task0"): shared.tolist(), ("local", "cirr_task7"): shared.tolist()})
    other = _topk(tmp_path / "b", {("local", "mscoco_task0"): better.tolist(), ("local", "cirr_task7"): shared.tolist()})
    same = paired_comparison(base, base)["local"]
    assert all(v == {"diff": 0.0, "low": 0.0, "high": 0.0} for v in same.values())
    got = paired_comparison(base, other, resamples=500, seed=3)["local"]
    assert got["mscoco_task0"]["diff"] == pytest.approx(100 * 9 / 60, abs=0.01)
    assert got["cirr_task7"]["diff"] == 0.0 and got["avg"]["diff"] == pytest.approx(100 * 9 / 120, abs=0.01)
    assert 0 < got["mscoco_task0"]["low"] < got["mscoco_task0"]["diff"] < got["mscoco_task0"]["high"]
    # the naive loop: the same seeded draws (columns in file order), differences of the drawn queries' recalls
    draws = np.random.default_rng(3)
    idx = draws.integers(0, 60, size=(500, 60))
    naive = [100 * (better[i].mean() - shared[i].mean()) for i in idx]
    assert got["mscoco_task0"]["low"] == pytest.approx(np.percentile(naive, 2.5), abs=0.01)
    assert got["mscoco_task0"]["high"] == pytest.approx(np.percentile(naive, 97.5), abs=0.01)


def test_paired_comparison_refuses_other_queries_and_names_the_file(tmp_path):
    from puma.report import paired_comparison, query_hits

    base = _topk(tmp_path / "a", {("local", "mscoco_task0"): [True, False, True]})
    fewer = _topk(tmp_path / "b", {("local", "mscoco_task0"): [True, False]})
    with pytest.raises(ValueError, match=r"b/topk.jsonl: local mscoco_task0: not the queries of"):
        paired_comparison(base, fewer)
    more = _topk(tmp_path / "c", {("local", "mscoco_task0"): [True, False, True], ("local", "cirr_task7"): [True]})
    with pytest.raises(ValueError, match="columns differ"):
        paired_comparison(base, more)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "topk.jsonl").write_text('{"column": "x", "pool": "local", "qid": "1", "hit": true}\n{oops\n')
    with pytest.raises(ValueError, match=r"d/topk.jsonl:2: not a per-query record"):
        query_hits(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no per-query records"):
        query_hits(tmp_path / "nothing")


def test_modality_errors_count_the_wrong_kind_in_the_global_top_k(tmp_path):
    """The share of each global query's top-k whose modality is not its positive's, per column (local records
    and candidates past k ignored), against a naive count; group means via summarise; a missing pool named."""
    import json

    from puma.data.columns import COLUMNS_BY_NAME
    from puma.report import modality_errors, modality_errors_of_runs

    root = tmp_path / "mbeir"
    cands = {"5:1": "image", "5:2": "text", "5:3": "image", "5:4": "image,text", "9:1": "text", "9:2": "image"}
    for col, dids in (("mscoco_task0", ["5:1", "5:2", "5:3", "5:4"]), ("cirr_task7", ["9:1", "9:2"])):
        pool = root / COLUMNS_BY_NAME[col].pool_file
        pool.parent.mkdir(parents=True, exist_ok=True)
        pool.write_text("".join(json.dumps({"did": d, "txt": "x" if "text" in cands[d] else None,
                                            "img_path": "a.jpg" if "image" in cands[d] else None,
                                            "modality": cands[d], "src_content": None}) + "\n" for d in dids))
    recs = [  # (column, pool, k, ids, positives)
        ("mscoco_task0", "global", 2, ["5:2", "9:2", "5:4"], ["5:1"]),   # text: wrong, 9:2 image: right
        ("mscoco_task0", "global", 2, ["5:4", "9:1"], ["5:3"]),          # both wrong
        ("mscoco_task0", "local", 2, ["5:2", "5:4"], ["5:1"]),           # local: not counted
        ("cirr_task7", "global", 3, ["9:2", "5:1", "5:2"], ["9:2"]),     # one wrong of 3
    ]
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "topk.jsonl").write_text("".join(json.dumps({"column": c, "pool": p, "qid": f"q{i}", "k": k, "hit": False,
                                                       "ids": ids, "positives": pos}) + "\n"
                                           for i, (c, p, k, ids, pos) in enumerate(recs)))
    naive: dict = {}
    for c, p, k, ids, pos in recs:
        if p == "global":
            w, n = naive.get(c, (0, 0))
            naive[c] = (w + sum(cands[i] not in {cands[q] for q in pos} for i in ids[:k]), n + k)
    got = modality_errors(ev, root)
    assert got["mscoco_task0"] == pytest.approx(100 * naive["mscoco_task0"][0] / 4) == pytest.approx(75.0)
    assert got["cirr_task7"] == pytest.approx(100 / 3, abs=0.01)
    assert got["avg"] == pytest.approx((75.0 + 100 / 3) / 2, abs=0.01)
    assert got["single"] == got["mscoco_task0"] and got["mixed"] == got["cirr_task7"] and "multi" not in got
    assert modality_errors_of_runs([ev, ev], root) == [got, got]  # one read of the pools for both runs
    (root / COLUMNS_BY_NAME["cirr_task7"].pool_file).unlink()
    with pytest.raises(FileNotFoundError, match="mbeir_cirr_task7_cand_pool.jsonl: the candidate pool"):
        modality_errors(ev, root)
    (ev / "topk.jsonl").write_text(json.dumps({"column": "cirr_task7", "pool": "local", "qid": "q", "k": 1,
                                               "hit": True, "ids": [], "positives": []}) + "\n")
    assert modality_errors(ev, root) == {}  # no global records
    (ev / "topk.jsonl").write_text(json.dumps({"column": "nope_task9", "pool": "global", "qid": "q", "k": 1,
                                               "hit": True, "ids": ["9:1"], "positives": ["9:1"]}) + "\n")
    with pytest.raises(ValueError, match=r"eval/topk.jsonl: not Table-1 columns: nope_task9"):
        modality_errors(ev, root)
