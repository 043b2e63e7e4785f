"""Memory plan (on paper) for exact search over the M-BEIR global test pool (~5.6M candidates).

Nothing here is typed in: the pool size is ``bench.global_pool_size``, the embedding width ``d`` is the
hidden size of each bundled Qwen2-VL config (the [RET] state), the block size is
:data:`puma.index.DEFAULT_BLOCK_ROWS`, the query count the M-BEIR test queries one column at most
(:data:`puma.index.DEFAULT_QUERY_BLOCK`), and the machine's RAM / GPU memory is read from this machine (``GPU_GIB`` for an
80 GB training GPU when there is none, the paper's A800/A100).

Rows: pool size in fp16/fp32, how many 80 GB GPUs a sharded flat index needs (at most
``GPU_FILL`` of each, the rest left to faiss' scratch and the query block), and the peak of
:func:`puma.index.search`'s streaming path on CPU (one fp32 block + the query block's scores).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/pool_plan.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from puma.index import DEFAULT_QUERY_BLOCK as QUERY_BLOCK  # queries scored at once

GPU_GIB = 80 * 1e9 / 2**30  # one 80 GB GPU (paper: A800/A100 80G), in GiB
GPU_FILL = 0.8  # share of a GPU the index may take
BYTES = {"float16": 2, "float32": 4}


def ram_gib() -> float:
    """Physical memory of this machine in GiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def gpu_gib() -> tuple[float, str]:
    """Memory of this machine's first GPU, or the paper's 80 GB GPU when there is none."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory / 2**30, props.name
    return GPU_GIB, "80 GB (paper's A800/A100; no GPU here)"


def plan_row(arch: str, dim: int, n: int, dtype: str, gpu: float, ram: float, block_rows: int) -> dict[str, Any]:
    """One pool/dtype row: sizes in GiB and the GPU count that holds it."""
    pool = n * dim * BYTES[dtype] / 2**30
    gpus = max(1, math.ceil(pool / (gpu * GPU_FILL)))
    # Streaming search: the pool stays on disk / in the page cache; resident = one block converted to
    # fp32 + (QUERY_BLOCK, block_rows) fp32 scores + the queries.
    stream = (block_rows * dim * 4 + QUERY_BLOCK * block_rows * 4 + QUERY_BLOCK * dim * 4) / 2**30
    return {"arch": arch, "d": dim, "candidates": n, "dtype": dtype, "pool GiB": pool,
            "GPUs needed": gpus, "GiB per GPU": pool / gpus,
            "fits in this RAM": pool < ram, "streaming peak GiB": stream,
            "full score matrix GiB (1024 q)": QUERY_BLOCK * n * 4 / 2**30}


def run(settings=None) -> dict[str, Any]:
    from puma.config import load_settings
    from puma.index import DEFAULT_BLOCK_ROWS
    from puma.model.flops import KNOWN_CONFIGS, load_config

    settings = settings or load_settings()
    n = settings.bench.global_pool_size
    gpu, gpu_name = gpu_gib()
    ram = ram_gib()
    rows = [plan_row(arch, load_config(arch).text_config.hidden_size, n, dtype, gpu, ram, DEFAULT_BLOCK_ROWS)
            for arch in KNOWN_CONFIGS for dtype in BYTES]
    return {"title": "Memory plan: exact search over the global pool",
            "meta": {"candidates": n, "GPU": f"{gpu:.1f} GiB ({gpu_name})", "GPU share for the index": GPU_FILL,
                     "RAM here GiB": ram, "block rows": DEFAULT_BLOCK_ROWS, "query block": QUERY_BLOCK,
                     "stored embedding dtype (embed.dtype)": settings.embed.dtype},
            "rows": rows,
            "notes": [("Computed, not measured. A flat (exact) index holds the raw vectors: pool GiB = N x d x "
                       "bytes. The embedding width d is the [RET] hidden state of the decoder (pruning keeps it)."),
                      ("puma.index.search streams shards, so the CPU peak is one block, not the pool; faiss GPU "
                       "shards the pool over the GPUs (UniIR's setup).")]}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2, default=str))
