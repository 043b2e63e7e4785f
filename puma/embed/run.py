"""The shard loop: stream records, embed the unfinished shards of this process, write them.

:func:`embed_records` is the loop over any ``(id, item)`` stream and any :class:`BatchEncoder`;
:func:`embed_pool` and :func:`embed_queries` are its M-BEIR front ends (they build the manifest).
The directory format is :mod:`puma.embed.store`'s; see :mod:`puma.embed` for the guarantees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from puma.embed.fingerprint import model_fingerprint
from puma.embed.prefetch import Prefetcher
from puma.embed.store import FORMAT, EmbeddingError, EmbeddingStore, start_manifest, write_shard
from puma.faults import fault_tick
from puma.io import file_sha256


class BatchEncoder(Protocol):
    """What :func:`embed_records` needs from a model.

    ``collate(items)`` turns a list of items into model inputs; it runs in data-loader worker
    processes, so it does the image decoding and preprocessing. ``forward(batch)`` runs the model
    and returns L2-normalised embeddings (B, dim) as float32 numpy.
    """

    dim: int

    def collate(self, items: list[Any]) -> Any: ...

    def forward(self, batch: Any) -> np.ndarray: ...


def _todo_shards(records: Iterable[tuple[str, Any]], todo: set[int], shard_size: int, count: int):
    """Stream ``records`` and yield ``(j, ids, items)`` for the shards in ``todo``, in order.

    Records of other shards are skipped without being kept. When the source is read to the end, its
    length must equal ``count``.
    """
    last = max(todo)
    chunk: list[tuple[str, Any]] = []
    j = 0
    for rec in records:
        chunk.append(rec)
        if len(chunk) == shard_size:
            if j in todo:
                yield j, [r[0] for r in chunk], [r[1] for r in chunk]
            chunk, j = [], j + 1
            if j > last:
                return  # nothing left for this process further down the source
    if chunk and j in todo:
        yield j, [r[0] for r in chunk], [r[1] for r in chunk]
    total = j * shard_size + len(chunk)
    if total != count:  # the source changed under us, or the count was wrong
        raise EmbeddingError(f"source yielded {total} records, manifest says {count}")


def _batches(shards, batch_size: int, length: Callable[[Any], Any] | None, pending: dict):
    """Split each shard into length-sorted batches tagged ``(j, rows, is_last)``.

    ``pending[j]`` receives the shard's ids when its first batch is produced.
    """
    for j, ids, items in shards:
        order = sorted(range(len(items)), key=lambda i: length(items[i])) if length else list(range(len(items)))
        pending[j] = ids
        starts = range(0, len(order), batch_size)
        for b, lo in enumerate(starts):
            rows = order[lo:lo + batch_size]
            yield (j, rows, b == len(starts) - 1), [items[i] for i in rows]


def embed_records(
    records: Iterable[tuple[str, Any]],
    out: str | os.PathLike,
    encoder: BatchEncoder,
    *,
    manifest: dict,
    shard_size: int,
    batch_size: int,
    dtype: str = "float16",
    shard_index: int = 0,
    num_shards: int = 1,
    num_workers: int = 0,
    length: Callable[[Any], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> EmbeddingStore:
    """Embed ``records`` ((id, item) pairs, streamed) into shards under ``out``; resume if started.

    ``manifest`` must carry ``count`` (number of records), ``source_sha256``, ``kind``,
    ``model_fingerprint`` and may carry anything else (``model``, ``source``, ``extra``). This process
    embeds shards ``j % num_shards == shard_index`` that are not finished yet.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    manifest = dict(manifest, format=FORMAT, shard_size=shard_size, dtype=dtype, dim=encoder.dim,
                    normalized=True)
    manifest.setdefault("extra", {})
    store = start_manifest(Path(out), manifest)
    # A resume verifies every finished shard's checksums: a changed or half-written one is embedded again.
    todo = {j for j in range(store.num_shards)
            if j % num_shards == shard_index and not store.is_done(j, verify=True)}
    for j in sorted(todo):
        if progress and any(p.exists() for p in store.shard_paths(j)):
            progress(f"shard {j:05d}: incomplete or corrupt ({store.shard_paths(j)[0]}); embedding it again")
    if progress:
        progress(f"{len(todo)} shard(s) to embed in {out} ({store.num_shards} in all)")
    if not todo:
        return store
    import torch

    pending: dict[int, list[str]] = {}
    shards = _todo_shards(records, todo, shard_size, manifest["count"])
    prefetch = Prefetcher(encoder.collate, num_workers)
    out_buf: np.ndarray | None = None
    try:
        with torch.inference_mode():
            for (j, rows, is_last), batch in prefetch.map(_batches(shards, batch_size, length, pending)):
                if out_buf is None:
                    out_buf = np.full((len(pending[j]), encoder.dim), np.nan, dtype=np.float32)
                emb = encoder.forward(batch)  # (B, dim)
                if len(emb) != len(rows):
                    raise EmbeddingError(f"encoder returned {len(emb)} embeddings for a batch of {len(rows)}")
                out_buf[rows] = emb
                if is_last:
                    if np.isnan(out_buf).any():  # a row never filled: the batches did not cover the shard
                        raise EmbeddingError(f"shard {j}: some rows were not embedded")
                    write_shard(store, j, out_buf, pending.pop(j))
                    out_buf = None
                    fault_tick("embed")  # test hook (puma/faults.py): off unless asked
                    if progress:
                        progress(f"shard {j:05d}: {store.shard_rows(j)} rows")
    finally:
        prefetch.close()
    return store


def count_records(path: str | os.PathLike) -> int:
    """Number of non-blank lines of a jsonl file (cheap: no JSON parsing)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def pool_manifest(pool: str | os.PathLike, root: str | os.PathLike, model_dir: str | os.PathLike) -> dict:
    """The input-side manifest of a candidate pool's store (what :func:`embed_pool` records)."""
    return {"kind": "documents", "model": str(model_dir), "model_fingerprint": model_fingerprint(model_dir),
            "source": str(pool), "source_sha256": file_sha256(pool), "count": count_records(pool),
            "root": str(root)}


def query_manifest(source: str | os.PathLike, count: int, model_dir: str | os.PathLike, extra: dict) -> dict:
    """The input-side manifest of a query file's store (what :func:`embed_queries` records)."""
    return {"kind": "queries", "model": str(model_dir), "model_fingerprint": model_fingerprint(model_dir),
            "source": str(source), "source_sha256": file_sha256(source), "count": count, "extra": extra}


def embed_pool(
    encoder: BatchEncoder,
    pool: str | os.PathLike,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_dir: str | os.PathLike,
    **options: Any,
) -> EmbeddingStore:
    """Embed the candidates of an M-BEIR pool jsonl (no instruction) into shards under ``out``.

    Image paths in the pool are relative to ``root``. The manifest records the model (path and
    fingerprint), the pool (path and sha256), dtype, dim and count; a rerun resumes. ``options`` are
    :func:`embed_records`'s (``shard_size``, ``batch_size``, ``dtype``, ``shard_index``,
    ``num_shards``, ``num_workers``, ``progress``).
    """
    from puma.data.schema import candidate_item, iter_candidates
    from puma.model.encoding import length_key

    manifest = pool_manifest(pool, root, model_dir)
    records = ((c.did, candidate_item(c, root)) for c in iter_candidates(pool))
    return embed_records(records, out, encoder, manifest=manifest, length=length_key, **options)


def embed_queries(
    encoder: BatchEncoder,
    source: str | os.PathLike,
    items: Sequence[tuple[str, dict]],
    out: str | os.PathLike,
    *,
    model_dir: str | os.PathLike,
    extra: dict,
    **options: Any,
) -> EmbeddingStore:
    """Embed (qid, item) pairs of one query file, items already carrying their instruction.

    ``extra`` must identify the instruction choice (seed, instructions file hash): it is part of the
    manifest's identity, so a different choice never reuses old query embeddings. Queries are kept
    in float32 unless ``options`` say otherwise (they are few; ``options`` as :func:`embed_records`).
    """
    from puma.model.encoding import length_key

    manifest = query_manifest(source, len(items), model_dir, extra)
    return embed_records(items, out, encoder, manifest=manifest, length=length_key,
                         **{"dtype": "float32", **options})
