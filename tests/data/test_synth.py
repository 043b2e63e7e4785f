"""MBEIR-mini: determinism, layout, validity, and that the tasks are defined by visible attributes."""

import csv
import hashlib
import json
from pathlib import Path

from PIL import Image

from puma.data.columns import GLOBAL_TEST_POOL, TABLE1_COLUMNS, UNION_TRAIN_QUERIES
from puma.data.corpus import tokenizer_corpus
from puma.data.instructions import load_instructions
from puma.data.schema import load_candidates, load_queries
from puma.data.synth import synth_mbeir, synth_nli
from puma.data.validate import validate


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, mbeir_mini):
    again = synth_mbeir(tmp_path / "again", seed=0, scale=0.25)
    assert _tree_digest(again) == _tree_digest(mbeir_mini)
    other = synth_mbeir(tmp_path / "other", seed=1, scale=0.25)
    a, b = _tree_digest(other), _tree_digest(mbeir_mini)
    assert a.keys() == b.keys() and a != b


def test_rewrite_replaces_atomically(tmp_path):
    out = synth_mbeir(tmp_path / "m", seed=0, scale=0.1)
    (out / "stale.txt").write_text("x")
    synth_mbeir(out, seed=0, scale=0.1)
    assert not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_validates_and_has_every_column(mbeir_mini):
    problems, counts = validate(mbeir_mini)
    assert problems == [], problems[:5]
    assert counts["queries"] > 0 and counts["images"] > 0
    for col in TABLE1_COLUMNS:
        queries = load_queries(mbeir_mini / col.query_file)
        cands = load_candidates(mbeir_mini / col.pool_file)
        assert {q.query_modality for q in queries} == {col.query_modality}
        assert {c.modality for c in cands} == {col.cand_modality}
        assert {q.task_id for q in queries} == {col.task_id}
        assert all(q.qid.startswith(f"{col.dataset_id}:") for q in queries)
        assert len(cands) > len(queries)  # distractors beyond the positives
    global_ids = [c.did for c in load_candidates(mbeir_mini / GLOBAL_TEST_POOL)]
    assert len(global_ids) == len(set(global_ids))


def test_images_fit_the_tiny_pixel_budget(mbeir_mini):
    path = next((mbeir_mini / "mbeir_images").rglob("*.jpg"))
    with Image.open(path) as im:
        assert im.mode == "RGB" and 3136 <= im.width * im.height <= 12544


def _scene(rec_src: str) -> dict:
    return json.loads(rec_src)


def test_positives_are_defined_by_attributes_and_unique_in_pool(mbeir_mini):
    """In every scene column the positive shows exactly the query's attributes and no other candidate
    does (so the answer is learnable and unambiguous); composed queries differ from their target in
    exactly the edited attribute."""
    for col in TABLE1_COLUMNS:
        if col.dataset not in ("VisualNews", "MSCOCO", "Fashion200K", "NIGHTS", "CIRR", "FashionIQ", "EDIS"):
            continue
        cands = {c.did: _scene(c.src_content)["scene"] for c in load_candidates(mbeir_mini / col.pool_file)}
        for q in load_queries(mbeir_mini / col.query_file):
            src = _scene(q.query_src_content)
            for did in q.pos_cand_list:
                assert cands[did] == src["scene"]
            same = [d for d, s in cands.items() if s == src["scene"]]
            assert sorted(same) == sorted(q.pos_cand_list), col.name
            if col.task_id == 7:
                diff = [k for k in src["scene"] if src["scene"][k] != src["reference"][k]]
                assert diff == [src["edit"]]


def test_text_mentions_the_attributes(mbeir_mini):
    col = next(c for c in TABLE1_COLUMNS if c.name == "mscoco_task0")
    for q in load_queries(mbeir_mini / col.query_file):
        s = _scene(q.query_src_content)["scene"]
        for attr in ("color", "shape", "size", "position"):
            assert s[attr] in q.query_txt


def test_union_train_covers_all_columns(mbeir_mini):
    cols = {json.loads(q.query_src_content)["column"] for q in load_queries(mbeir_mini / UNION_TRAIN_QUERIES)}
    assert cols == {c.name for c in TABLE1_COLUMNS}


def test_tokenizer_corpus_covers_every_word_written(mbeir_mini, nli_mini):
    words = {w for line in tokenizer_corpus(0) for w in line.replace(".", " ").replace(",", " ").replace("?", " ").split()}
    texts = []
    for path in mbeir_mini.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            obj = json.loads(line)
            texts.append(obj.get("query_txt") or obj.get("txt") or "")
    table = load_instructions(mbeir_mini / "instructions/query_instructions.tsv")
    texts += [p for prompts in table.values() for p in prompts]
    with open(nli_mini) as f:
        texts += [s for row in csv.reader(f) for s in row]
    missing = {w for t in texts for w in t.replace(".", " ").replace(",", " ").replace("?", " ").split()} - words
    missing = {w for w in missing if not w.isdigit()} - {"sent0", "sent1", "hard_neg"}  # years: digits
    assert not missing, sorted(missing)[:20]


def test_nli_is_deterministic_and_shaped_like_simcse(tmp_path, nli_mini):
    again = synth_nli(tmp_path / "n.csv", rows=64, seed=0)
    assert again.read_bytes() == Path(nli_mini).read_bytes()
    with open(nli_mini, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sent0", "sent1", "hard_neg"] and len(rows) == 65
    from puma.data import vocab

    def colours(s: str) -> set[str]:
        return {w.strip(".,") for w in s.split()} & set(vocab.COLORS)

    for s0, s1, neg in rows[1:]:
        assert s0 != s1 and s0 != neg
        assert colours(s1) == colours(s0)  # the same scene or entity (emblem and frame colours), another form
        assert abs(len(neg.split()) - len(s0.split())) <= 5  # the negative: sent0's form about a neighbour


def test_eval_scale_grows_test_queries_and_pools_only(tmp_path):
    """``eval_scale`` (data.synth_eval_scale) multiplies the test queries and the distractors, not train or val:
    narrower confidence intervals without a longer training."""
    import json as _json

    from puma.data.synth import MANIFEST, synth_mbeir

    small = _json.loads((synth_mbeir(tmp_path / "a", seed=0, scale=0.1) / MANIFEST).read_text())
    big = _json.loads((synth_mbeir(tmp_path / "b", seed=0, scale=0.1, eval_scale=3.0) / MANIFEST).read_text())
    assert big["eval_scale"] == 3.0 and small["eval_scale"] == 1.0
    assert big["queries"]["train"] == small["queries"]["train"] and big["queries"]["val"] == small["queries"]["val"]
    assert big["global_pool"]["train"] == small["global_pool"]["train"]
    assert big["queries"]["test"] >= 2.5 * small["queries"]["test"]
    assert big["global_pool"]["test"] >= 2 * small["global_pool"]["test"]
