"""Exact inner-product search on L2-normalised vectors, streaming over embedding shards.

The M-BEIR protocol (UniIR, decision 6) is exact search: faiss ``IndexFlatIP`` on L2-normalised
embeddings, so inner product == cosine similarity. The global test pool has about 5.6M candidates,
more than one wants in RAM (or GPU memory) at once, so :func:`search` reads the pool shard by shard
and keeps a running top-k per query: memory is bounded by one block of one shard plus (Q, k).

Ties are broken deterministically: equal scores rank the earlier pool row first. faiss itself does
not promise an order among ties (the CPU heap keeps the later id), so every per-block result is
re-sorted by (-score, row), and a query whose k-th and (k+1)-th scores tie inside a block is
recomputed exactly for that block. :func:`search_numpy` is the brute-force oracle with the same rule.

The GPU build of faiss is used when present (the flat index sharded over all GPUs), the CPU build
otherwise; the results are the same up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK_ROWS = 262_144  # rows of one shard converted to float32 at a time (1 GB at dim 1024)


@dataclass
class Shard:
    """One piece of a candidate pool: ``embeddings`` (N, D) float16/float32 and its ``ids`` (N,)."""

    embeddings: np.ndarray
    ids: Sequence[str]

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2:
            raise ValueError(f"shard embeddings must be 2-D (N, D), got shape {self.embeddings.shape}")
        if len(self.ids) != self.embeddings.shape[0]:
            raise ValueError(f"shard has {self.embeddings.shape[0]} embeddings but {len(self.ids)} ids")


@dataclass
class SearchResult:
    """Top-k per query, best first.

    ``scores`` (Q, k) float32 inner products; ``rows`` (Q, k) int64 positions in the concatenated pool
    (-1 where the pool has fewer than k candidates); ``ids`` Q lists of candidate ids (without the -1s).
    """

    scores: np.ndarray
    rows: np.ndarray
    ids: list[list[str]]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32: (N, D) -> (N, D)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def faiss_gpu_count() -> int:
    """Number of GPUs faiss can use (0 for the CPU build or a machine without GPUs)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def _flat_index(dim: int, use_gpu: bool):
    """An empty exact inner-product index; on GPUs, sharded over all of them (like UniIR)."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    if use_gpu:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True  # each GPU holds a slice of the block; results are merged by faiss
        index = faiss.index_cpu_to_all_gpus(index, co=options)
    return index


def _sort_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Order each query's candidates by (-score, row) and keep k: (Q, M) -> (Q, k).

    Rows of -1 (padding) carry -inf scores, so they sort last.
    """
    order = np.lexsort((rows, -scores), axis=1)[:, :k]  # last key is primary
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def _exact_block_topk(queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k of one float32 block with the (-score, row) tie rule: (Q, D), (N, D) -> (Q, k)."""
    scores = queries @ block.T  # (Q, N)
    rows = np.broadcast_to(np.arange(block.shape[0], dtype=np.int64), scores.shape)
    return _sort_topk(scores, rows, k)


def _block_topk(index, queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss top-k of one float32 block (rows local to the block), ties made deterministic."""
    n = block.shape[0]
    kk = min(k, n)
    probe = min(kk + 1, n)  # one extra result reveals whether the k-th score ties with the next one
    index.reset()
    index.add(block)
    scores, rows = index.search(queries, probe)  # (Q, probe)
    scores, rows = _sort_topk(scores, rows.astype(np.int64), probe)
    if probe > kk:
        tied = scores[:, kk - 1] == scores[:, kk]
        if tied.any():  # faiss chose among boundary ties arbitrarily: redo those queries exactly
            exact_s, exact_r = _exact_block_topk(queries[tied], block, kk)
            scores[tied, :kk], rows[tied, :kk] = exact_s, exact_r
    return scores[:, :kk], rows[:, :kk]


def _blocks(shards: Iterable[Shard], block_rows: int):
    """Yield (float32 block (n, D), ids of the block, first global row) over all shards in order."""
    start = 0
    for shard in shards:
        n = shard.embeddings.shape[0]
        for lo in range(0, n, block_rows):
            hi = min(lo + block_rows, n)
            yield np.ascontiguousarray(shard.embeddings[lo:hi], dtype=np.float32), shard.ids[lo:hi], start + lo
        start += n


def search(
    queries: np.ndarray,
    shards: Iterable[Shard],
    k: int,
    *,
    use_gpu: bool | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> SearchResult:
    """Exact top-k inner-product search of ``queries`` (Q, D) over a pool given as shards.

    Both sides are expected L2-normalised (then scores are cosine similarities). Shards are read one
    block at a time, so the pool never has to fit in memory. ``use_gpu=None`` uses GPU faiss when
    available. Returns the top ``k`` per query ordered by (-score, pool row).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries must be 2-D (Q, D), got shape {queries.shape}")
    nq, dim = queries.shape
    if use_gpu is None:
        use_gpu = faiss_gpu_count() > 0
    index = _flat_index(dim, use_gpu)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)  # running top-k, (Q, k)
    best_r = np.full((nq, k), -1, dtype=np.int64)
    best_ids = np.full((nq, k), None, dtype=object)
    for block, ids, start in _blocks(shards, block_rows):
        if block.shape[1] != dim:
            raise ValueError(f"pool dimension {block.shape[1]} != query dimension {dim}")
        if block.shape[0] == 0:
            continue
        s, r = _block_topk(index, queries, block, k)  # (Q, k') with k' = min(k, n)
        new_ids = np.asarray(ids, dtype=object)[r]  # (Q, k')
        all_s = np.concatenate([best_s, s], axis=1)  # (Q, k + k')
        all_r = np.concatenate([best_r, r + start], axis=1)
        all_ids = np.concatenate([best_ids, new_ids], axis=1)
        # Rows of -1 (empty slots) must lose every tie: give them a row larger than any real one.
        key_r = np.where(all_r < 0, np.iinfo(np.int64).max, all_r)
        order = np.lexsort((key_r, -all_s), axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, order, 1)
        best_r = np.take_along_axis(all_r, order, 1)
        best_ids = np.take_along_axis(all_ids, order, 1)
    ids_out = [[i for i in row if i is not None] for row in best_ids]
    return SearchResult(scores=best_s, rows=best_r, ids=ids_out)


def search_numpy(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force oracle: full (Q, N) score matrix, then top-k by (-score, row).

    Returns ``(scores (Q, k'), rows (Q, k'))`` with k' = min(k, N).
    """
    queries = np.asarray(queries, dtype=np.float32)
    pool = np.asarray(pool, dtype=np.float32)
    return _exact_block_topk(queries, pool, min(k, pool.shape[0]))
