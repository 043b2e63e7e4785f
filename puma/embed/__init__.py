"""Sharded, resumable embedding of a candidate pool (or a query file) to fp16 ``.npy`` shards.

Layout of an output directory::

    OUT/manifest.json            model, source file + sha256, kind, dtype, dim, count, shard size
    OUT/shards/00000.npy         (<= shard_size, dim) embeddings, L2-normalised, stored as ``dtype``
    OUT/shards/00000.ids         the ids of those rows, one per line, in order

Shard j holds records ``[j * shard_size, (j + 1) * shard_size)`` of the source, so a shard's content
depends only on the source, the model and the shard size. Each file is written atomically
(:func:`puma.io.atomic_write`); the ``.npy`` goes last and marks the shard finished. A run killed at
any moment (even ``kill -9``) leaves only finished shards and temporaries, and the next run skips the
finished ones: the result is byte-identical to one clean run.

Shards are split over processes (or GPUs) by ``shard_index`` / ``num_shards``: process i embeds the
shards j with ``j % num_shards == i``. The source is streamed once and only one shard of records
(plus its embeddings) is held at a time, so memory does not grow with the pool.

Image decoding and preprocessing (``collate``) run in worker processes that live for the whole run
(:class:`Prefetcher`), a bounded number of batches ahead, so the model's forward is not starved;
within a shard, items are batched in length order (:func:`puma.model.encoding.length_key`) and
restored afterwards (less padding), the sentence-transformers way.

One concern per module:

- :mod:`puma.embed.store`: the directory format, its manifest and :class:`EmbeddingStore` (reading,
  checking and writing shards).
- :mod:`puma.embed.fingerprint`: :func:`model_fingerprint`, the identity of a checkpoint directory.
- :mod:`puma.embed.prefetch`: :class:`Prefetcher`, the process pool that collates ahead of the model.
- :mod:`puma.embed.run`: the shard loop (:func:`embed_records`) and its M-BEIR front ends
  (:func:`embed_pool`, :func:`embed_queries`).
- :mod:`puma.embed.encoder`: :class:`RetrieverEncoder`, the adapter from :class:`puma.PumaRetriever`.

Nothing here imports torch at module level (the shard loop and the encoder import it when they run).
"""

from puma.embed.encoder import RetrieverEncoder
from puma.embed.fingerprint import model_fingerprint
from puma.embed.prefetch import Prefetcher
from puma.embed.run import (
    BatchEncoder,
    count_records,
    embed_pool,
    embed_queries,
    embed_records,
    pool_manifest,
    query_manifest,
)
from puma.embed.store import FORMAT, IDENTITY_KEYS, MANIFEST, EmbeddingError, EmbeddingStore

__all__ = [
    "FORMAT",
    "IDENTITY_KEYS",
    "MANIFEST",
    "BatchEncoder",
    "EmbeddingError",
    "EmbeddingStore",
    "Prefetcher",
    "RetrieverEncoder",
    "count_records",
    "embed_pool",
    "embed_queries",
    "embed_records",
    "model_fingerprint",
    "pool_manifest",
    "query_manifest",
]

