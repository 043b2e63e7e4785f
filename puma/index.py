"""Exact inner-product search on L2-normalised vectors, streaming over embedding shards.

The M-BEIR protocol (UniIR, decision 6) is exact search: faiss ``IndexFlatIP`` on L2-normalised
embeddings, so inner product == cosine similarity. The global test pool has about 5.6M candidates,
more than one wants in RAM (or GPU memory) at once, so :func:`search` reads the pool shard by shard
and keeps a running top-k per query: memory is bounded by one block of one shard plus (Q, k).

Ties are broken deterministically: equal scores rank the earlier pool row first. faiss itself does
not promise an order among ties (the CPU heap keeps the later id), so every per-block result is
re-sorted by (-score, row), and a query whose k-th and (k+1)-th scores tie inside a block is
recomputed exactly for that block. :func:`search_numpy` is the brute-force oracle with the same rule.

Queries are scored in blocks too, so memory is bounded by (query block x pool block), not by
(all queries x pool). The GPU build of faiss is used when present (the flat index sharded over all
GPUs), the CPU build otherwise, numpy where faiss is not installed; the results are the same up to
float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK_ROWS = 65_536  # pool rows converted to float32 at a time (400 MB at dim 1536)
DEFAULT_QUERY_BLOCK = 1_024  # queries scored at a time: the score tile is (1024, 65536) float32 = 256 MB


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
    """Number of GPUs faiss can use (0 for the CPU build, a machine without GPUs, or no faiss)."""
    try:
        import faiss
    except ImportError:
        return 0
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


class _NumpyFlatIP:
    """The part of faiss ``IndexFlatIP``'s interface :func:`search` uses, in numpy (when faiss is absent)."""

    def __init__(self) -> None:
        self.block: np.ndarray | None = None

    def reset(self) -> None:
        self.block = None

    def add(self, block: np.ndarray) -> None:
        self.block = block

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.block.T  # (q, n)
        rows = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        return np.take_along_axis(scores, rows, 1), rows  # unordered; the caller sorts by (-score, row)


def _flat_index(dim: int, use_gpu: bool):
    """An empty exact inner-product index; on GPUs, sharded over all of them (like UniIR); numpy without faiss."""
    try:
        import faiss
    except ImportError:
        return _NumpyFlatIP()
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
    """Top-k of one float32 block already in ``index`` (rows local to the block), ties made deterministic."""
    n = block.shape[0]
    kk = min(k, n)
    probe = min(kk + 1, n)  # one extra result reveals whether the k-th score ties with the next one
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


def _merge(best: tuple, s: np.ndarray, r: np.ndarray, ids: np.ndarray, k: int) -> tuple:
    """Running top-k (scores, rows, ids), each (q, k), merged with a block's (q, k'): ordered by (-score, row)."""
    all_s = np.concatenate([best[0], s], axis=1)  # (q, k + k')
    all_r = np.concatenate([best[1], r], axis=1)
    all_ids = np.concatenate([best[2], ids], axis=1)
    # Rows of -1 (empty slots) must lose every tie: give them a row larger than any real one.
    key_r = np.where(all_r < 0, np.iinfo(np.int64).max, all_r)
    order = np.lexsort((key_r, -all_s), axis=1)[:, :k]
    return tuple(np.take_along_axis(a, order, 1) for a in (all_s, all_r, all_ids))


def search(
    queries: np.ndarray,
    shards: Iterable[Shard],
    k: int,
    *,
    use_gpu: bool | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    query_block: int = DEFAULT_QUERY_BLOCK,
) -> SearchResult:
    """Exact top-k inner-product search of ``queries`` (Q, D) over a pool given as shards.

    Both sides are expected L2-normalised (then scores are cosine similarities). The pool is read once,
    one block of ``block_rows`` rows of one shard at a time (memory-mapped shards: only that block is
    resident), and scored against ``query_block`` queries at a time, so memory is bounded by
    (query_block x block_rows) plus the running (Q, k) top-k, never by the pool or (Q x pool).
    ``use_gpu=None`` uses GPU faiss when available (CPU faiss otherwise, numpy without faiss).
    Returns the top ``k`` per query ordered by (-score, pool row).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_rows < 1 or query_block < 1:
        raise ValueError(f"block_rows and query_block must be >= 1, got {block_rows}, {query_block}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries must be 2-D (Q, D), got shape {queries.shape}")
    nq, dim = queries.shape
    if use_gpu is None:
        use_gpu = faiss_gpu_count() > 0
    index = _flat_index(dim, use_gpu)
    best = [(np.full((hi - lo, k), -np.inf, dtype=np.float32), np.full((hi - lo, k), -1, dtype=np.int64),
             np.full((hi - lo, k), None, dtype=object))
            for lo, hi in ((lo, min(lo + query_block, nq)) for lo in range(0, nq, query_block))]
    for block, ids, start in _blocks(shards, block_rows):
        if block.shape[1] != dim:
            raise ValueError(f"pool dimension {block.shape[1]} != query dimension {dim}")
        if block.shape[0] == 0:
            continue
        index.reset()
        index.add(block)
        ids = np.asarray(ids, dtype=object)
        for b, lo in enumerate(range(0, nq, query_block)):
            s, r = _block_topk(index, queries[lo:lo + query_block], block, k)  # (q, k') with k' = min(k, n)
            best[b] = _merge(best[b], s, r + start, ids[r], k)
        del block
    if not best:
        return SearchResult(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), [])
    best_s, best_r, best_ids = (np.concatenate([b[i] for b in best]) for i in range(3))
    ids_out = [[i for i in row if i is not None] for row in best_ids]
    return SearchResult(scores=best_s, rows=best_r, ids=ids_out)


def search_numpy(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force oracle: full (Q, N) score matrix, then top-k by (-score, row).

    Returns ``(scores (Q, k'), rows (Q, k'))`` with k' = min(k, N).
    """
    queries = np.asarray(queries, dtype=np.float32)
    pool = np.asarray(pool, dtype=np.float32)
    return _exact_block_topk(queries, pool, min(k, pool.shape[0]))
