from pathlib import Path

import pytest

from puma.data.columns import TABLE1_COLUMNS
from puma.data.datasets import EvalView, MBEIRTrain, NLIPairs
from puma.data.schema import DataError


def test_nli_pairs_are_text_items(nli_mini):
    ds = NLIPairs(nli_mini)
    assert len(ds) == 64
    item = ds[0]
    assert set(item) == {"query", "positive"}
    assert item["query"]["image"] is None and item["query"]["instruction"] is None and item["query"]["text"]


def test_mbeir_train_samples(mbeir_mini):
    ds = MBEIRTrain(mbeir_mini, seed=0)
    assert len(ds) == 16 * 12
    for i in range(0, len(ds), 7):
        s = ds[i]
        assert s["query_target_modality"] == s["cand_modality"]
        assert s["query"]["instruction"] and s["positive"]["instruction"] is None
        for item in (s["query"], s["positive"]):
            if item["image"] is not None:
                assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file()
        modality = ("image," if s["positive"]["image"] else "") + ("text" if s["positive"]["text"] else "")
        assert modality.strip(",") == s["cand_modality"]


def test_positive_and_instruction_are_seeded_per_epoch(mbeir_mini):
    a, b = MBEIRTrain(mbeir_mini, seed=0), MBEIRTrain(mbeir_mini, seed=0)
    multi = [i for i, q in enumerate(a.queries) if len(q.pos_cand_list) > 1]  # EDIS: two positives
    assert multi
    picks = {}
    for epoch in range(6):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]  # same seed -> same samples
        picks[epoch] = [(a[i]["did"], a[i]["instruction_index"]) for i in multi]
    assert len({tuple(p) for p in picks.values()}) > 1  # epochs draw different positives/instructions
    a.set_epoch(0)
    assert [(a[i]["did"], a[i]["instruction_index"]) for i in multi] == picks[0]


@pytest.mark.parametrize("col", TABLE1_COLUMNS, ids=lambda c: c.name)
def test_eval_view(mbeir_mini, col):
    view = EvalView(mbeir_mini, col.name, instruction_seed=0)
    assert len(view) == len(view.relevant) == len(view.instruction_choices) > 0
    assert view.local_pool.is_file() and view.global_pool.is_file()
    local = {did for did, _, _ in view.pool_items("local")}
    glob = {did for did, _, _ in view.pool_items("global")}
    assert all(rel and rel <= local <= glob for rel in view.relevant)
    assert [c["qid"] for c in view.instruction_choices] == view.qids
    assert all(q["instruction"] == c["instruction"] for q, c in zip(view.queries, view.instruction_choices))
    again = EvalView(mbeir_mini, col, instruction_seed=0)
    assert again.instruction_choices == view.instruction_choices


def test_eval_view_instruction_seed_changes_choices(mbeir_mini):
    a = EvalView(mbeir_mini, "mscoco_task0", instruction_seed=0).instruction_choices
    b = EvalView(mbeir_mini, "mscoco_task0", instruction_seed=1).instruction_choices
    assert [c["index"] for c in a] != [c["index"] for c in b]


def test_missing_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        EvalView(tmp_path, "mscoco_task0")
