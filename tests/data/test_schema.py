import json

import pytest

from puma.data.schema import (
    DataError,
    candidate_problems,
    img_path_problem,
    iter_queries,
    load_qrels,
    parse_qrel_line,
    query_problems,
)

GOOD_Q = {"qid": "9:1", "query_txt": "a red circle", "query_img_path": None, "query_modality": "text",
          "query_src_content": None, "pos_cand_list": ["9:2"], "neg_cand_list": [], "task_id": 0}
GOOD_C = {"did": "9:2", "txt": None, "img_path": "mbeir_images/x.png", "modality": "image", "src_content": None}


def test_valid_records_have_no_problems():
    assert query_problems(GOOD_Q) == [] and candidate_problems(GOOD_C) == []


@pytest.mark.parametrize("change, expect", [
    ({"qid": "91"}, "not shaped"), ({"qid": "12:1"}, "unknown dataset id"), ({"qid": 3}, "must be a string"),
    ({"query_modality": "audio"}, "is not one of"), ({"query_modality": "image"}, "query_img_path is missing"),
    ({"task_id": "0"}, "task_id must be an integer"), ({"task_id": 5}, "not an M-BEIR task"),
    ({"pos_cand_list": "9:2"}, "must be a list"), ({"pos_cand_list": ["x"]}, "not shaped"),
    ({"query_txt": 7}, "must be a string or null"),
])
def test_query_problems(change, expect):
    probs = query_problems({**GOOD_Q, **change})
    assert any(expect in p for p in probs), probs


def test_candidate_modality_must_agree_and_path_stay_inside():
    assert any("txt is missing" in p for p in candidate_problems({**GOOD_C, "modality": "image,text"}))
    assert any("absolute" in p for p in candidate_problems({**GOOD_C, "img_path": "/etc/x.png"}))
    assert img_path_problem("a/../../x.png") and img_path_problem("C:/x.png") and not img_path_problem("a/b.png")
    # src_content may be absent or null (real M-BEIR); the others are required.
    assert candidate_problems({"did": "9:2"}) == ["missing field 'txt'", "missing field 'img_path'",
                                                  "missing field 'modality'"]


def test_loader_names_file_and_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps(GOOD_Q) + "\n" + json.dumps({**GOOD_Q, "qid": "9:2", "query_modality": "x"}) + "\n")
    with pytest.raises(DataError, match=rf"{p}:2: query_modality 'x'"):
        list(iter_queries(p))
    p.write_text(json.dumps(GOOD_Q) + "\n" + json.dumps(GOOD_Q) + "\n")
    with pytest.raises(DataError, match=rf"{p}:2: duplicate qid '9:1' \(first on line 1\)"):
        list(iter_queries(p))


def test_qrels():
    assert parse_qrel_line("9:1 0 9:2 1 0").did == "9:2"
    assert "5 whitespace-separated" in parse_qrel_line("9:1 0 9:2 1")


def test_qrels_loader(tmp_path):
    p = tmp_path / "r.txt"
    p.write_text("9:1 0 9:2 1 0\n9:1 0 9:3 1 0\n9:4 0 9:5 0 0\n")
    assert load_qrels(p) == {"9:1": {"9:2", "9:3"}}  # relevance 0 is not relevant
    p.write_text("9:1 0 9:2 1 0\n9:1 0 9:2 one 0\n")
    with pytest.raises(DataError, match=rf"{p}:2: relevance and task_id must be integers"):
        load_qrels(p)
