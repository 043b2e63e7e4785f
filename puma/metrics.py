"""Retrieval metrics: M-BEIR Recall@k (a hit rate), its chance level, and the per-pool summary.

Pure functions of ranked id lists and relevant sets, shared by evaluation (:mod:`puma.evaluate`) and
the dataset statistics (:mod:`puma.data.stats`); nothing here embeds or reads files.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from puma.data.columns import GROUP_NAMES

AVG_KEY = "avg"  # the plain mean over the columns
SUMMARY_KEYS = (AVG_KEY, *GROUP_NAMES)  # the non-column keys of one pool table in metrics.json


def recall_at_k(retrieved: Sequence[Sequence[str]], relevant: Sequence[Collection[str]], k: int) -> float:
    """M-BEIR Recall@k: the fraction of queries with at least one relevant id in their top ``k``.

    ``retrieved``: one ranked id list per query (best first); ``relevant``: one id set per query.
    A query with no relevant ids counts 0. Returns a fraction in [0, 1].
    """
    if not retrieved:
        raise ValueError("recall_at_k of zero queries is undefined")
    hits = hits_at_k(retrieved, relevant, k)
    return sum(hits) / len(hits)


def hits_at_k(retrieved: Sequence[Sequence[str]], relevant: Sequence[Collection[str]], k: int) -> list[bool]:
    """Per query: whether a relevant id is in its top ``k`` (the terms :func:`recall_at_k` averages)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} ranked lists but {len(relevant)} relevant sets")
    out = []
    for ranked, rel in zip(retrieved, relevant):
        rel = rel if isinstance(rel, (set, frozenset)) else set(rel)
        out.append(any(cand in rel for cand in list(ranked)[:k]))
    return out


def chance_recall_at_k(pool_size: int, num_relevant: Sequence[int], k: int) -> float:
    """Expected Recall@k of a uniformly random ranking: mean over queries of 1 - C(N-p, k) / C(N, k).

    ``num_relevant``: per query, how many of its positives are in the pool of size ``pool_size``.
    """
    if not num_relevant:
        raise ValueError("chance level of zero queries is undefined")
    total = 0.0
    for p in num_relevant:
        miss = 1.0  # probability that none of the p positives lands in the first k slots
        for i in range(min(k, pool_size)):
            miss *= max(pool_size - p - i, 0) / (pool_size - i)
        total += 1.0 - miss
    return total / len(num_relevant)


def summarise(recalls: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, float]:
    """Percent table of one pool setting: the columns, ``avg`` (plain mean) and the group means.

    ``recalls``: column -> fraction; ``groups``: column -> one of :data:`puma.data.columns.GROUP_NAMES`.
    """
    out = {col: round(100.0 * val, 2) for col, val in recalls.items()}
    if recalls:
        out[AVG_KEY] = round(100.0 * sum(recalls.values()) / len(recalls), 2)
    for group in GROUP_NAMES:
        members = [recalls[c] for c in recalls if groups.get(c) == group]
        if members:
            out[group] = round(100.0 * sum(members) / len(members), 2)
    return out


def bootstrap_ci(
    hits: Mapping[str, Sequence[bool]], groups: Mapping[str, str], resamples: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals (percent) over queries for every column and summary key.

    ``hits``: column -> per-query hit (0/1); ``groups``: column -> group. Each resample draws every
    column's queries with replacement (within the column, as Table 1's columns are scored separately),
    and recomputes the column recalls, ``avg`` (plain mean of the columns) and the group means from the
    same draw. Returns ``{key: {"low": .., "high": ..}}`` with the keys of :func:`summarise`. Deterministic for
    ``seed``: the columns draw in the order of ``hits``, each a ``(resamples, n)`` index matrix.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    samples: dict[str, np.ndarray] = {}  # key -> (resamples,) fraction
    for col, h in hits.items():
        arr = np.asarray(h, dtype=np.float64)
        if arr.size == 0:
            raise ValueError(f"{col}: a confidence interval of zero queries is undefined")
        idx = rng.integers(0, arr.size, size=(resamples, arr.size))
        samples[col] = arr[idx].mean(axis=1)
    if samples:
        samples[AVG_KEY] = np.mean([samples[c] for c in hits], axis=0)
    for group in GROUP_NAMES:
        members = [samples[c] for c in hits if groups.get(c) == group]
        if members:
            samples[group] = np.mean(members, axis=0)
    tail = 100.0 * (1.0 - level) / 2.0
    return {key: {"low": round(100.0 * float(np.percentile(v, tail)), 2),
                  "high": round(100.0 * float(np.percentile(v, 100.0 - tail)), 2)} for key, v in samples.items()}
