"""Report helpers that need no evaluation run: the k phrase and the summary-key order."""

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
