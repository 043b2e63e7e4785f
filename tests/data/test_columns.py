from puma.config import EvaluateSettings
from puma.data.columns import DATASET_IDS, GROUPS, TABLE1_COLUMNS, TASKS, column
from puma.data.schema import MODALITIES


def test_sixteen_columns_in_table1_order():
    names = [c.name for c in TABLE1_COLUMNS]
    assert names == [
        "visualnews_task0", "mscoco_task0", "fashion200k_task0", "webqa_task1", "visualnews_task3", "mscoco_task3",
        "fashion200k_task3", "nights_task4", "edis_task2", "webqa_task2", "oven_task6", "infoseek_task6",
        "fashioniq_task7", "cirr_task7", "oven_task8", "infoseek_task8",
    ]
    assert [GROUPS[n] for n in names].count("single") == 8
    assert [GROUPS[n] for n in names].count("mixed") == 6
    assert [GROUPS[n] for n in names].count("multi") == 2


def test_real_dataset_ids_all_task_types_and_modalities():
    assert DATASET_IDS == {"VisualNews": 0, "Fashion200K": 1, "WebQA": 2, "EDIS": 3, "NIGHTS": 4, "OVEN": 5,
                           "InfoSeek": 6, "FashionIQ": 7, "CIRR": 8, "MSCOCO": 9}
    assert {c.task_id for c in TABLE1_COLUMNS} == set(TASKS) == {0, 1, 2, 3, 4, 6, 7, 8}
    used = {c.query_modality for c in TABLE1_COLUMNS} | {c.cand_modality for c in TABLE1_COLUMNS}
    assert used == set(MODALITIES)
    assert column("cirr_task7").query_modality == "image,text" and column("cirr_task7").cand_modality == "image"


def test_file_names_follow_mbeir():
    coco = column("mscoco_task3")
    assert coco.query_file == "query/test/mbeir_mscoco_task3_test.jsonl"
    assert coco.pool_file == "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"
    assert column("cirr_task7").pool_file == "cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl"
    assert column("cirr_task7").qrels_file == "qrels/test/mbeir_cirr_task7_test_qrels.txt"


def test_k_comes_from_params():
    ev = EvaluateSettings()
    ks = {c.name: c.k(ev) for c in TABLE1_COLUMNS}
    assert {n for n, k in ks.items() if k == 10} == {"fashion200k_task0", "fashion200k_task3", "fashioniq_task7"}
    assert column("cirr_task7").k(EvaluateSettings(k_default=7)) == 7


def test_unknown_column_lists_the_known_ones():
    import pytest

    with pytest.raises(KeyError, match="visualnews_task0"):
        column("coco_task0")
