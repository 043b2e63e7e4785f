"""The embedding directory format: ``manifest.json`` plus ``shards/NNNNN.{npy,ids,sha256}`` (see :mod:`puma.embed`).

:class:`EmbeddingStore` reads a (possibly partial) directory; :func:`start_manifest` creates one or
checks that an existing one was made from the same inputs; :func:`write_shard` writes one finished
shard: its ``.ids``, its ``.npy``, then (last: marks it done) ``.sha256``, the checksums of both, which a
resume and :meth:`EmbeddingStore.check` verify (a search after ``check`` reads shapes only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from puma.index import Shard
from puma.io import atomic_write, file_sha256, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "puma-embeddings/2"  # /2: every shard has a .sha256 record
# Manifest fields that must match for a rerun to reuse finished shards.
IDENTITY_KEYS = ("format", "kind", "model_fingerprint", "source_sha256", "count", "shard_size", "dtype",
                 "dim", "extra")


class EmbeddingError(RuntimeError):
    """An embedding directory is incomplete, corrupt, or was made from different inputs."""


@dataclass
class EmbeddingStore:
    """A (possibly partial) embedding directory written by :func:`puma.embed.embed_records`."""

    root: Path
    manifest: dict

    @classmethod
    def open(cls, root: str | os.PathLike) -> EmbeddingStore:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise EmbeddingError(f"{path}: no manifest (not an embedding directory, or never started)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise EmbeddingError(f"{path}:{e.lineno}: manifest is not valid JSON: {e.msg}") from None
        if manifest.get("format") != FORMAT:
            raise EmbeddingError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        return cls(root, manifest)

    @property
    def num_shards(self) -> int:
        return -(-self.manifest["count"] // self.manifest["shard_size"])

    def shard_rows(self, j: int) -> int:
        size, count = self.manifest["shard_size"], self.manifest["count"]
        return min(size, count - j * size)

    def shard_paths(self, j: int) -> tuple[Path, Path]:
        base = self.root / "shards" / f"{j:05d}"
        return base.with_suffix(".npy"), base.with_suffix(".ids")

    def sum_path(self, j: int) -> Path:
        return self.root / "shards" / f"{j:05d}.sha256"

    def is_done(self, j: int, verify: bool = False) -> bool:
        """A shard is finished when its .sha256 record (written last) exists and its .npy has the expected
        shape; with ``verify`` also when both files' checksums equal the record's."""
        npy, ids = self.shard_paths(j)
        record = self.sum_path(j)
        if not (npy.is_file() and ids.is_file() and record.is_file()):
            return False
        try:
            arr = np.load(npy, mmap_mode="r")
        except (ValueError, OSError):
            return False
        if arr.shape != (self.shard_rows(j), self.manifest["dim"]):
            return False
        if verify:
            try:
                sums = json.loads(record.read_text())
            except (json.JSONDecodeError, OSError):
                return False
            return sums == {"npy": file_sha256(npy), "ids": file_sha256(ids)}
        return True

    def missing(self, verify: bool = False) -> list[int]:
        return [j for j in range(self.num_shards) if not self.is_done(j, verify)]

    def shard(self, j: int) -> Shard:
        """Shard j, memory-mapped (only the pages searched are read)."""
        npy, ids_path = self.shard_paths(j)
        if not self.is_done(j):
            raise EmbeddingError(f"{npy}: shard {j} is missing or incomplete; rerun `puma embed` to finish it")
        ids = ids_path.read_text().splitlines()
        emb = np.load(npy, mmap_mode="r")
        if len(ids) != emb.shape[0]:
            raise EmbeddingError(f"{ids_path}: {len(ids)} ids for {emb.shape[0]} embeddings")
        return Shard(emb, ids)

    def shards(self) -> Iterator[Shard]:
        """All shards in order; raises if the directory is incomplete."""
        missing = self.missing()
        if missing:
            raise EmbeddingError(f"{self.root}: {len(missing)} of {self.num_shards} shards unfinished "
                                 f"(first: {missing[0]}); rerun `puma embed` with the same arguments")
        for j in range(self.num_shards):
            yield self.shard(j)

    def check(self, expected: dict) -> EmbeddingStore:
        """Raise unless this store is finished and was made from ``expected``'s inputs (the identity
        keys ``expected`` carries: a reader that did not embed checks it is reading the right store)."""
        diff = [k for k in IDENTITY_KEYS if k in expected and self.manifest.get(k) != expected[k]]
        if diff:
            raise EmbeddingError(f"{self.root / MANIFEST}: made with different {', '.join(diff)} "
                                 f"(e.g. {diff[0]}: {self.manifest.get(diff[0])!r} != {expected[diff[0]]!r}); "
                                 "re-run `puma embed-all`")
        missing = self.missing(verify=True)  # checksums: a shard changed after it was written is caught here
        if missing:
            raise EmbeddingError(f"{self.shard_paths(missing[0])[0]}: {len(missing)} of {self.num_shards} shards "
                                 f"of {self.root} unfinished or failing their checksum (first: {missing[0]}); "
                                 "re-run `puma embed-all` to embed them again")
        return self

    def load(self) -> tuple[np.ndarray, list[str]]:
        """Everything in memory as float32 (for small pools, queries and tests): (N, D), N ids."""
        embs, ids = [], []
        for shard in self.shards():
            embs.append(np.asarray(shard.embeddings, dtype=np.float32))
            ids.extend(shard.ids)
        dim = self.manifest["dim"]
        return (np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)), ids


def finished_shards(root: str | os.PathLike) -> tuple[int, int, list[Path]]:
    """Over every store started under ``root``: ``(finished shards, stores, shards with files but not
    finished)``; the last are half-written or corrupt (a truncated ``.npy``) and will be embedded again."""
    done, stores, broken = 0, 0, []
    for manifest in sorted(Path(root).rglob(MANIFEST)):
        store = EmbeddingStore.open(manifest.parent)
        stores += 1
        missing = store.missing(verify=True)
        done += store.num_shards - len(missing)
        broken += [store.shard_paths(j)[0] for j in missing if any(p.exists() for p in store.shard_paths(j))]
    return done, stores, broken


def start_manifest(out: Path, manifest: dict) -> EmbeddingStore:
    """Create ``out`` with ``manifest``, or check that an existing one matches (resume)."""
    path = out / MANIFEST
    (out / "shards").mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = EmbeddingStore.open(out).manifest
        diff = [k for k in IDENTITY_KEYS if old.get(k) != manifest.get(k)]
        if diff:
            raise EmbeddingError(
                f"{path}: existing embeddings were made with different {', '.join(diff)} "
                f"(e.g. {diff[0]}: {old.get(diff[0])!r} != {manifest.get(diff[0])!r}); "
                "use another --out or delete it")
    else:
        write_json_atomic(path, manifest)
    return EmbeddingStore(out, manifest)


def write_shard(store: EmbeddingStore, j: int, emb: np.ndarray, ids: Sequence[str]) -> None:
    """Write shard ``j``: its ids, then its embeddings as the manifest's dtype (last: marks it done)."""
    npy, ids_path = store.shard_paths(j)
    bad = [i for i in ids if "\n" in i or not i]
    if bad:
        raise EmbeddingError(f"shard {j}: ids must be non-empty single-line strings, got {bad[0]!r}")
    atomic_write(ids_path, lambda f: f.write("".join(f"{i}\n" for i in ids)), mode="w")
    arr = emb.astype(store.manifest["dtype"])
    atomic_write(npy, lambda f: np.save(f, arr, allow_pickle=False))
    write_json_atomic(store.sum_path(j), {"npy": file_sha256(npy), "ids": file_sha256(ids_path)})  # last: done
