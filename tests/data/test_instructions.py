from collections import Counter

import pytest

from puma.data.columns import TABLE1_COLUMNS
from puma.data.instructions import choose_instruction, load_instructions, write_instructions
from puma.data.schema import DataError


def test_table_covers_every_column_with_four_phrasings(tmp_path):
    write_instructions(tmp_path / "i.tsv")
    table = load_instructions(tmp_path / "i.tsv")
    for col in TABLE1_COLUMNS:
        assert len(table[(col.dataset_id, col.query_modality, col.cand_modality)]) == 4


def test_choice_is_seeded_pure_and_recorded(tmp_path):
    write_instructions(tmp_path / "i.tsv")
    table = load_instructions(tmp_path / "i.tsv")
    picks = [choose_instruction(table, f"9:{n}", 9, "text", "image", seed=0) for n in range(200)]
    assert picks == [choose_instruction(table, f"9:{n}", 9, "text", "image", seed=0) for n in range(200)]
    counts = Counter(i for i, _ in picks)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 25  # all four used, roughly evenly
    for index, text in picks:
        assert table[(9, "text", "image")][index] == text
    other = [choose_instruction(table, f"9:{n}", 9, "text", "image", seed=1)[0] for n in range(200)]
    assert other != [i for i, _ in picks]


def test_missing_key_is_a_clear_error(tmp_path):
    write_instructions(tmp_path / "i.tsv")
    with pytest.raises(DataError, match="no instruction row for dataset 9, image -> image"):
        choose_instruction(load_instructions(tmp_path / "i.tsv"), "9:1", 9, "image", "image", 0)


def test_header_names_decide_the_column_order(tmp_path):
    p = tmp_path / "i.tsv"
    p.write_text("Dataset ID\tDataset\tQuery Modality\tCandidate Modality\tp1\tp2\n"
                 "9\tMSCOCO\ttext\timage\tFind it.\tShow it.\n")
    assert load_instructions(p) == {(9, "text", "image"): ["Find it.", "Show it."]}
    p.write_text("a\tb\tc\td\te\n" "text\timage\tMSCOCO\t9\tFind it.\n")  # unknown names: UniIR's order
    assert load_instructions(p) == {(9, "text", "image"): ["Find it."]}
