"""A stand-in laid out exactly like the real M-BEIR hub repository, with the real files' quirks
(REFERENCE.md section 7): per-dataset train files and no train qrels, a val split, JPEG images in
per-dataset folders, null ``query_src_content`` / ``src_content``, queries without ``task_id``,
``{"did": ...}`` positive entries, OVEN positives naming InfoSeek candidates, and a differently spelled
instructions header. It downloads (only what the splits need), validates, and evaluates with no edit."""

import json

import pytest
from typer.testing import CliRunner

from puma.data.columns import GLOBAL_TEST_POOL, TABLE1_COLUMNS, column
from puma.data.datasets import EvalView
from puma.data.download import MBEIR_REPO, download_mbeir
from puma.data.validate import validate
from tests.data.test_download import FakeHub, make_hub_repo

CROSS = 2  # OVEN task-6 test queries given an extra positive from InfoSeek's pool


def _rewrite(path, fn):
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    path.write_text("".join(json.dumps(fn(i, obj)) + "\n" for i, obj in enumerate(lines)))


def _quirks(repo):
    for path in sorted(repo.glob("query/*/*.jsonl")):
        def q(i, obj):
            obj["query_src_content"] = None
            if i % 2:
                del obj["task_id"]  # the card's schema omits it; UniIR derives it
            if i % 3 == 0:
                obj["pos_cand_list"] = [{"did": d} for d in obj["pos_cand_list"]]
            return obj
        _rewrite(path, q)
    for path in sorted(repo.glob("cand_pool/*/*.jsonl")):
        _rewrite(path, lambda i, obj: {**obj, "src_content": None})
    oven, info = column("oven_task6"), column("infoseek_task6")
    foreign = [json.loads(x)["did"] for x in (repo / info.pool_file).read_text().splitlines()[:CROSS]]
    qpath, rpath = repo / oven.query_file, repo / oven.qrels_file
    queries = [json.loads(x) for x in qpath.read_text().splitlines()]
    for q, did in zip(queries, foreign):
        q["pos_cand_list"].append(did)
        rpath.write_text(rpath.read_text() + f"{q['qid']} 0 {did} 1 6\n")
    qpath.write_text("".join(json.dumps(q) + "\n" for q in queries))
    tsv = repo / "instructions/query_instructions.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    header = "\ufeffQuery Modality\tCandidate Modality\tDataset\tDataset ID\tPrompt 1\tPrompt 2\tPrompt 3\tPrompt 4\n"
    tsv.write_text(header + "".join(lines[1:]))


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory, mbeir_mini):
    tmp = tmp_path_factory.mktemp("real")
    repo = make_hub_repo(tmp / "hub", mbeir_mini, max_images=None)
    _quirks(repo)
    hub = FakeHub({MBEIR_REPO: repo})
    out = download_mbeir(tmp / "mbeir", ["val", "test"], images=True, client=hub, log=lambda *_: None)
    return out, hub


def test_download_takes_only_what_val_and_test_need(downloaded):
    out, hub = downloaded
    assert not (out / "query/train").exists() and not (out / "query/union_train").exists()
    assert (out / "query/union_val/mbeir_union_val.jsonl").is_file()
    assert next((out / "mbeir_images/oven_images").rglob("*.jpg"))
    assert len(set(hub.calls)) == len(hub.calls)


def test_the_real_format_validates_and_counts_cross_dataset_positives(downloaded):
    out, _ = downloaded
    problems, counts = validate(out, check_images=False)
    assert problems == [], [str(p) for p in problems[:5]]
    assert counts["cross_dataset_positives"] == CROSS
    line = json.loads((out / column("oven_task6").query_file).read_text().splitlines()[1])
    assert "task_id" not in line and line["query_src_content"] is None


def test_views_set_aside_foreign_positives_and_derive_tasks(downloaded):
    out, _ = downloaded
    for split in ("val", "test"):
        for col in TABLE1_COLUMNS:
            view = EvalView(out, col, split=split)
            assert len(view) > 0 and all(view.relevant)
            assert view.set_aside == (CROSS if (split, col.name) == ("test", "oven_task6") else 0)


def test_puma_evaluate_runs_on_it_with_no_edit(downloaded, tiny_dir, tmp_path):
    from puma.cli import app
    from puma.model.prune import save_pruned

    out, _ = downloaded
    model = save_pruned(tiny_dir, 4, tmp_path / "pruned")
    ev = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(out), "--out", str(ev),
                                   "--column", "oven_task6", "--column", "infoseek_task6"])
    assert res.exit_code == 0, res.output
    assert f"oven_task6: {CROSS} positive(s) of another dataset" in res.output
    meta = json.loads((ev / "eval_meta.json").read_text())
    assert meta["set_aside_positives"] == {"oven_task6": CROSS, "infoseek_task6": 0} and meta["split"] == "test"
    assert set(json.loads((ev / "metrics.json").read_text())) == {"local", "global"}
    assert (out / GLOBAL_TEST_POOL).is_file()
