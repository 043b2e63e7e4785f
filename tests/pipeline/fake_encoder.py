"""A deterministic stand-in encoder for the shard-machinery tests (no model needed).

Also a script: ``python fake_encoder.py OUT DELAY`` embeds 40 records into OUT with shard size 4,
sleeping DELAY seconds per batch (used by the ``kill -9`` resume test).
"""

import sys
import time
import zlib

import numpy as np


class FakeEncoder:
    """Embedding of an item = normalised Gaussian seeded by its text (independent of batching)."""

    dim = 8

    def __init__(self, delay=0.0):
        self.delay = delay

    def collate(self, items):
        return [zlib.crc32(it.encode()) for it in items]

    def forward(self, batch):
        time.sleep(self.delay)
        x = np.stack([np.random.default_rng(s).standard_normal(self.dim) for s in batch])
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def records(n):
    return ((f"9:{i}", "item number " + "x" * (i % 7) + str(i)) for i in range(n))


def manifest(n):
    return {"kind": "documents", "count": n, "source_sha256": "s" * 64, "model_fingerprint": "m" * 64,
            "model": "fake", "source": "fake.jsonl"}


if __name__ == "__main__":
    from puma.embed import embed_records

    out, delay, n = sys.argv[1], float(sys.argv[2]), 40
    embed_records(records(n), out, FakeEncoder(delay), manifest=manifest(n), shard_size=4, batch_size=2, length=len)
