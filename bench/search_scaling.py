"""Global-search scaling: time and peak RSS of ``puma.index.search`` streaming over memory-mapped shards.

For each pool size ``n`` (default 10k, 100k, 1M) random unit-norm fp16 vectors (d = 1536) are written as
``.npy`` shards of ``--shard-rows`` rows; a *fresh process* then searches ``--nq`` queries for the top
``--k`` reading the shards with ``np.load(mmap_mode="r")`` one at a time, and reports its wall time and
peak resident memory (``ru_maxrss``; the import baseline is reported beside it). The top-k is compared
with the brute-force oracle :func:`puma.index.search_numpy` (whole pool in memory) for ``n <= --oracle-max``.
Run: ``python bench/search_scaling.py [--sizes 10000 100000 1000000]`` (one run per size: no repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM (reset by exec, unlike ``ru_maxrss``, which keeps
    the forking parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def make_pool(out: Path, n: int, dim: int, shard_rows: int, seed: int, base_rows: int = 16_384) -> list[Path]:
    """Random unit-norm fp16 shards ``out/NNNNN.npy`` (``n`` rows in all), written one at a time.

    Drawing 1.5G normal samples for the 1M pool takes longer than the search on a small loaded CPU, so
    ``base_rows`` random unit vectors are drawn once and every further chunk is the base with its
    coordinates randomly permuted and sign-flipped (exact in fp16: still unit-norm, all rows distinct).
    """
    from puma.index import l2_normalize

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = l2_normalize(rng.standard_normal((min(base_rows, n), dim), dtype=np.float32)).astype(np.float16)
    paths = []
    for j, lo in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - lo)
        parts, left = [], rows
        while left > 0:
            take = min(left, len(base))
            flip = rng.choice(np.array([-1, 1], np.float16), dim)
            parts.append(base[:take, rng.permutation(dim)] * flip if lo or parts else base[:take])
            left -= take
        path = out / f"{j:05d}.npy"
        np.save(path, np.concatenate(parts))
        paths.append(path)
    return paths


def child(pool_dir: Path, queries: Path, k: int, out: Path) -> None:
    """Search in this (fresh) process; print {seconds, peak_rss_mb, import_rss_mb}; save rows to ``out``."""
    from puma.index import Shard, search

    q = np.load(queries)
    base = _rss_mb()

    def shards():
        start = 0
        for path in sorted(pool_dir.glob("*.npy")):
            emb = np.load(path, mmap_mode="r")  # only the block being scored is resident
            yield Shard(emb, [str(i) for i in range(start, start + emb.shape[0])])
            start += emb.shape[0]

    t0 = time.perf_counter()
    res = search(q, shards(), k, use_gpu=False)
    seconds = time.perf_counter() - t0
    np.save(out, res.rows)
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(_rss_mb()), "import_rss_mb": round(base)}))


def run(sizes: list[int], dim: int, nq: int, k: int, shard_rows: int, oracle_max: int, work: Path) -> list[dict]:
    from puma.index import l2_normalize, search_numpy

    rng = np.random.default_rng(1)
    qpath = work / "queries.npy"
    np.save(qpath, l2_normalize(rng.standard_normal((nq, dim), dtype=np.float32)))
    rows_out = []
    for n in sizes:
        pool_dir = work / f"pool_{n}"
        t0 = time.perf_counter()
        paths = make_pool(pool_dir, n, dim, shard_rows, seed=n)
        made = time.perf_counter() - t0
        res_path = work / f"rows_{n}.npy"
        proc = subprocess.run([sys.executable, __file__, "--child", str(pool_dir), "--queries", str(qpath),
                               "--k", str(k), "--rows-out", str(res_path)],
                              check=True, capture_output=True, text=True, env=dict(os.environ))
        cell = {"n": n, "dim": dim, "nq": nq, "k": k, "shard_rows": shard_rows, "shards": len(paths),
                "pool_gb_fp16": round(n * dim * 2 / 1e9, 2), "make_s": round(made, 1),
                **json.loads(proc.stdout.strip().splitlines()[-1])}
        cell["candidates_per_s"] = round(n * nq / cell["seconds"])
        if n <= oracle_max:
            pool = np.concatenate([np.load(p) for p in paths]).astype(np.float32)
            t0 = time.perf_counter()
            _, oracle = search_numpy(np.load(qpath), pool, k)
            cell["oracle_s"] = round(time.perf_counter() - t0, 2)
            cell["topk_equals_oracle"] = bool(np.array_equal(np.load(res_path), oracle))
            del pool
        for p in paths:
            p.unlink()
        print(json.dumps(cell), flush=True)
        rows_out.append(cell)
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--shard-rows", type=int, default=65_536)
    ap.add_argument("--oracle-max", type=int, default=100_000, help="compare with the numpy oracle up to this n")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--queries", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.queries, args.k, args.rows_out)
        return
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        cells = run(args.sizes, args.dim, args.nq, args.k, args.shard_rows, args.oracle_max, Path(tmp))
    base = cells[0]
    for c in cells:
        c["time_ratio_vs_first"] = round(c["seconds"] / base["seconds"], 2)
        c["size_ratio_vs_first"] = round(c["n"] / base["n"], 2)
        c["rss_ratio_vs_first"] = round(c["peak_rss_mb"] / base["peak_rss_mb"], 2)
    print(json.dumps({"search_scaling": cells, "load_average": os.getloadavg(), "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
