"""Exact search throughput: ``puma.index.search`` (faiss, streaming over shards) vs numpy brute force.

Pool of ``n`` random L2-normalised vectors of dimension ``dim`` (default 100k x 1536, the 2B model's
hidden size) stored as float16 or float32, ``nq`` queries, top-``k``. Both sides return the same top
k (checked); numpy is the sensible baseline (one float32 matmul + argpartition), not the oracle's
full sort. Run: ``python bench/search.py [--n 100000 --dim 1536 --nq 1000]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import interleaved, paired_ratio, stats
from puma.index import Shard, faiss_gpu_count, l2_normalize, search
from puma.io import write_text_atomic


def numpy_topk(queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """Brute force: float32 (Q, N) scores, argpartition, sort the k: (Q, D), (N, D) -> rows (Q, k)."""
    scores = queries @ np.asarray(pool, dtype=np.float32).T  # (Q, N)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k) unordered
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def torch_topk(queries, pool, k: int, query_chunk: int = 2048):
    """Exact top-k by inner product on torch tensors (any device), chunked over the queries.

    ``queries`` (Q, D) and ``pool`` (N, D) share one dtype: float16 runs on the tensor cores with fp16
    scores, float32 in full fp32. Returns ``(scores (Q, k) float32, rows (Q, k) int64)``, best first;
    the order among equal scores is torch's (unlike :func:`puma.index.search`, which fixes it).
    """
    import torch

    out_s, out_r = [], []
    for lo in range(0, queries.shape[0], query_chunk):
        scores = queries[lo:lo + query_chunk] @ pool.T  # (q, N)
        s, r = torch.topk(scores, min(k, pool.shape[0]), dim=1)  # (q, k), sorted
        out_s.append(s.float())
        out_r.append(r)
    return torch.cat(out_s), torch.cat(out_r)


def run(n: int = 100_000, dim: int = 1536, nq: int = 1000, k: int = 10, shard_rows: int = 25_000,
        repeats: int = 3) -> dict:
    rng = np.random.default_rng(0)
    pool32 = l2_normalize(rng.standard_normal((n, dim), dtype=np.float32))
    queries = l2_normalize(rng.standard_normal((nq, dim), dtype=np.float32))
    ids = [f"c:{i}" for i in range(n)]
    rows, started = [], time.perf_counter()
    for dtype in ("float16", "float32"):
        pool = pool32.astype(dtype)
        shards = [Shard(pool[lo:lo + shard_rows], ids[lo:lo + shard_rows]) for lo in range(0, n, shard_rows)]
        res = search(queries, shards, k)
        agree = float((res.rows == numpy_topk(queries, pool, k)).mean())
        times = interleaved({"numpy": lambda pool=pool: numpy_topk(queries, pool, k),
                             "faiss": lambda shards=shards: search(queries, shards, k)}, repeats=repeats, warmup=1)
        rows.append({"pool dtype": dtype,
                     "numpy queries/s": stats([nq / t for t in times["numpy"]]),
                     "faiss queries/s": stats([nq / t for t in times["faiss"]]),
                     "faiss speedup": paired_ratio(times["numpy"], times["faiss"]),
                     "same top-k": agree})
    return {"title": "Exact search: faiss (streaming shards) vs numpy brute force",
            "meta": {"pool": [n, dim], "queries": nq, "k": k, "shard rows": shard_rows,
                     "faiss build": "gpu" if faiss_gpu_count() else "cpu", "repeats": repeats},
            "rows": rows, "wall_s": time.perf_counter() - started,
            "notes": [("fp16 pools are converted to float32 block by block (faiss and BLAS compute in fp32); "
                       "'same top-k' is the fraction of (query, rank) slots where both return the same row.")]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the section as JSON here")
    args = ap.parse_args()
    text = json.dumps(run(args.n, args.dim, args.nq, args.k, repeats=args.repeats), indent=2, default=str)
    if args.out:
        write_text_atomic(args.out, text + "\n")
    print(text)
