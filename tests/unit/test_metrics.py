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


def _naive_bootstrap(hits, groups, resamples, seed, level):
    """The same draws as bootstrap_ci, aggregated with plain Python loops (its oracle)."""
    import math

    import numpy as np

    from puma.data.columns import GROUP_NAMES

    rng = np.random.default_rng(seed)
    draws = {c: rng.integers(0, len(h), size=(resamples, len(h))) for c, h in hits.items()}
    per_key: dict[str, list[float]] = {}
    for b in range(resamples):
        col_means = {}
        for c, h in hits.items():
            col_means[c] = sum(float(h[i]) for i in draws[c][b]) / len(h)
            per_key.setdefault(c, []).append(col_means[c])
        per_key.setdefault("avg", []).append(sum(col_means.values()) / len(col_means))
        for g in GROUP_NAMES:
            m = [v for c, v in col_means.items() if groups[c] == g]
            if m:
                per_key.setdefault(g, []).append(sum(m) / len(m))

    def pct(xs, q):  # numpy's default (linear) percentile
        xs = sorted(xs)
        pos = (len(xs) - 1) * q / 100.0
        lo, hi = math.floor(pos), math.ceil(pos)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    tail = 100.0 * (1 - level) / 2
    return {k: {"low": round(100 * pct(v, tail), 2), "high": round(100 * pct(v, 100 - tail), 2)}
            for k, v in per_key.items()}


def _hits_fixture():
    import random

    r = random.Random(3)
    groups = {"a": "single", "b": "single", "c": "mixed", "d": "multi"}
    sizes = {"a": 40, "b": 25, "c": 60, "d": 9}
    rates = {"a": 0.2, "b": 0.7, "c": 0.5, "d": 0.1}
    return {c: [r.random() < rates[c] for _ in range(n)] for c, n in sizes.items()}, groups


def test_bootstrap_ci_matches_the_naive_loop_and_is_seeded():
    from puma.metrics import bootstrap_ci

    hits, groups = _hits_fixture()
    ci = bootstrap_ci(hits, groups, resamples=300, seed=7)
    assert ci == _naive_bootstrap(hits, groups, 300, 7, 0.95)
    assert ci == bootstrap_ci(hits, groups, resamples=300, seed=7)  # deterministic
    assert ci != bootstrap_ci(hits, groups, resamples=300, seed=8)
    assert set(ci) == {"a", "b", "c", "d", "avg", "single", "mixed", "multi"}


def test_bootstrap_ci_contains_the_point_estimate_and_has_the_binomial_width():
    import math

    from puma.metrics import bootstrap_ci

    hits, groups = _hits_fixture()
    ci = bootstrap_ci(hits, groups, resamples=2000, seed=0)
    recalls = {c: sum(h) / len(h) for c, h in hits.items()}
    point = summarise(recalls, groups)
    for key, iv in ci.items():
        assert iv["low"] <= point[key] <= iv["high"], key
        assert iv["low"] < iv["high"], key
    p, n = recalls["c"], len(hits["c"])
    normal = 2 * 1.96 * 100 * math.sqrt(p * (1 - p) / n)
    width = {k: iv["high"] - iv["low"] for k, iv in ci.items()}
    assert 0.8 * normal < width["c"] < 1.2 * normal
    assert width["avg"] < width["c"]  # the average of 4 columns is tighter
    all_hit = bootstrap_ci({"a": [True] * 5}, {"a": "single"}, resamples=50)
    assert all_hit["a"] == {"low": 100.0, "high": 100.0}
    with pytest.raises(ValueError, match="zero queries"):
        bootstrap_ci({"a": []}, {"a": "single"})
