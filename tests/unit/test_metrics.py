"""Recall@k (M-BEIR hit rate), chance level and the Table-1 summary on hand-made cases."""

import math

import pytest

from puma.metrics import chance_recall_at_k, recall_at_k, summarise


def test_hit_rate_counts_a_query_once_if_any_positive_is_in_top_k():
    retrieved = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"], ["m", "n", "o"]]
    relevant = [{"b"}, {"z", "y"}, {"nope"}, {"m", "o"}]
    assert recall_at_k(retrieved, relevant, 1) == 1 / 4  # only query 4 hits at rank 1
    assert recall_at_k(retrieved, relevant, 2) == 3 / 4  # query 1 (b @2), query 2 (y @2), query 4
    assert recall_at_k(retrieved, relevant, 3) == 3 / 4  # query 3 never hits
    assert recall_at_k(retrieved, relevant, 50) == 3 / 4  # k beyond the list is fine


def test_hit_rate_is_not_fraction_of_positives_found():
    # Two of four positives found: still a full hit for the query (UniIR, not classic recall).
    assert recall_at_k([["a", "b", "c"]], [{"a", "b", "x", "y"}], 5) == 1.0


def test_relevant_may_be_any_collection_and_empty_sets_miss():
    assert recall_at_k([["a"], ["b"]], [["a"], []], 1) == 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must"):
        recall_at_k([["a"]], [{"a"}], 0)
    with pytest.raises(ValueError, match="relevant sets"):
        recall_at_k([["a"]], [{"a"}, {"b"}], 1)
    with pytest.raises(ValueError, match="zero queries"):
        recall_at_k([], [], 1)


def test_chance_level_closed_form():
    assert chance_recall_at_k(10, [1], 5) == pytest.approx(0.5)
    assert chance_recall_at_k(10, [2], 5) == pytest.approx(1 - math.comb(8, 5) / math.comb(10, 5))
    assert chance_recall_at_k(4, [1, 0], 10) == pytest.approx(0.5)  # pool smaller than k; no positive
    assert chance_recall_at_k(100, [3] * 7, 1) == pytest.approx(0.03)


def test_chance_level_matches_simulation():
    import random

    rng = random.Random(0)
    pool, pos, k, trials = 30, 2, 5, 20000
    hits = sum(bool({0, 1} & set(rng.sample(range(pool), k))) for _ in range(trials))
    assert hits / trials == pytest.approx(chance_recall_at_k(pool, [pos], k), abs=0.01)


def test_summarise_percent_avg_and_groups():
    recalls = {"a_task0": 0.5, "b_task1": 0.25, "c_task6": 1.0, "d_task8": 0.0}
    groups = {"a_task0": "single", "b_task1": "single", "c_task6": "mixed", "d_task8": "multi"}
    out = summarise(recalls, groups)
    assert out == {"a_task0": 50.0, "b_task1": 25.0, "c_task6": 100.0, "d_task8": 0.0,
                   "avg": 43.75, "single": 37.5, "mixed": 100.0, "multi": 0.0}
