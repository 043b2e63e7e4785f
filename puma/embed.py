"""Sharded, resumable embedding of a candidate pool (or a query file) to fp16 ``.npy`` shards.

Layout of an output directory::

    OUT/manifest.json            model, source file + sha256, kind, dtype, dim, count, shard size
    OUT/shards/00000.npy         (<= shard_size, dim) embeddings, L2-normalised, stored as ``dtype``
    OUT/shards/00000.ids         the ids of those rows, one per line, in order

Shard j holds records ``[j * shard_size, (j + 1) * shard_size)`` of the source, so a shard's content
depends only on the source, the model and the shard size. Each file is written to a temporary name
and moved into place with ``os.replace``; the ``.npy`` goes last and marks the shard finished. A run
killed at any moment (even ``kill -9``) leaves only finished shards and temporaries, and the next
run skips the finished ones: the result is byte-identical to one clean run.

Shards are split over processes (or GPUs) by ``shard_index`` / ``num_shards``: process i embeds the
shards j with ``j % num_shards == i``. The source is streamed once and only one shard of records
(plus its embeddings) is held at a time, so memory does not grow with the pool.

Image decoding and preprocessing (``collate``) run in worker processes that live for the whole run
(:class:`Prefetcher`), a bounded number of batches ahead, so the model's forward is not starved;
within a shard, items are batched in length order and restored afterwards (less padding), the
sentence-transformers way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from puma.index import Shard

MANIFEST = "manifest.json"
FORMAT = "puma-embeddings/1"
# Manifest fields that must match for a rerun to reuse finished shards.
IDENTITY_KEYS = ("format", "kind", "model_fingerprint", "source_sha256", "count", "shard_size", "dtype",
                 "dim", "extra")


class EmbeddingError(RuntimeError):
    """An embedding directory is incomplete, corrupt, or was made from different inputs."""


class BatchEncoder(Protocol):
    """What :func:`embed_records` needs from a model.

    ``collate(items)`` turns a list of items into model inputs; it runs in data-loader worker
    processes, so it does the image decoding and preprocessing. ``forward(batch)`` runs the model
    and returns L2-normalised embeddings (B, dim) as float32 numpy.
    """

    dim: int

    def collate(self, items: list[Any]) -> Any: ...

    def forward(self, batch: Any) -> np.ndarray: ...


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model_dir: str | os.PathLike, full_hash_limit: int = 4 << 30) -> str:
    """Identity of a checkpoint dir: sha256 over config.json and the weight files.

    Weights are hashed in full up to ``full_hash_limit`` bytes in all (every model this project
    trains by default); above it (7B: 15 GB) only names, sizes and safetensors headers, to keep a
    resume check from reading the whole checkpoint.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    config = model_dir / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    weights = sorted(model_dir.glob("*.safetensors"))
    full = sum(w.stat().st_size for w in weights) <= full_hash_limit
    for w in weights:
        h.update(f"{w.name}:{w.stat().st_size}".encode())
        h.update(bytes.fromhex(file_sha256(w)) if full else _safetensors_header(w))
    return h.hexdigest()


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(min(n, 1 << 26))


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write via ``write(fileobj)`` to a temp file beside ``path``, then ``os.replace`` it in."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n"), mode="w")


@dataclass
class EmbeddingStore:
    """A (possibly partial) embedding directory written by :func:`embed_records`."""

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

    def is_done(self, j: int) -> bool:
        """A shard is finished when its .npy (written last) exists with the expected shape."""
        npy, ids = self.shard_paths(j)
        if not (npy.is_file() and ids.is_file()):
            return False
        try:
            arr = np.load(npy, mmap_mode="r")
        except (ValueError, OSError):
            return False
        return arr.shape == (self.shard_rows(j), self.manifest["dim"])

    def missing(self) -> list[int]:
        return [j for j in range(self.num_shards) if not self.is_done(j)]

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

    def load(self) -> tuple[np.ndarray, list[str]]:
        """Everything in memory as float32 (for small pools, queries and tests): (N, D), N ids."""
        embs, ids = [], []
        for shard in self.shards():
            embs.append(np.asarray(shard.embeddings, dtype=np.float32))
            ids.extend(shard.ids)
        dim = self.manifest["dim"]
        return (np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)), ids


def _start_manifest(out: Path, manifest: dict) -> EmbeddingStore:
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


_WORKER_COLLATE: Callable[[list[Any]], Any] | None = None


def _worker_init(collate: Callable[[list[Any]], Any]) -> None:
    # Runs in each forked worker: the collate function (processor inside) is inherited, not pickled.
    global _WORKER_COLLATE
    import torch

    torch.set_num_threads(1)  # one core per worker, as torch's DataLoader does
    _WORKER_COLLATE = collate


def _worker_collate(items: list[Any]) -> Any:
    return _WORKER_COLLATE(items)


class Prefetcher:
    """Runs ``collate`` (image decoding + preprocessing) in worker processes, ahead of the model.

    Unlike a per-shard ``DataLoader``, the workers live for the whole run, so shard boundaries cost
    no worker start-up and the next shard's first batches are prepared while the current shard's
    last ones run. At most ``2 * num_workers`` batches are in flight (bounded memory). Results come
    back in submission order. ``num_workers=0`` collates inline.
    """

    def __init__(self, collate: Callable[[list[Any]], Any], num_workers: int):
        self.collate, self.pool, self.depth = collate, None, max(2 * num_workers, 1)
        if num_workers > 0:
            import torch.multiprocessing as tmp  # registers shared-memory pickling of tensors

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked tokenizers must not use threads
            self.pool = tmp.get_context("fork").Pool(num_workers, initializer=_worker_init, initargs=(collate,))

    def map(self, tagged_items: Iterable[tuple[Any, list[Any]]]) -> Iterator[tuple[Any, Any]]:
        """(tag, items) -> (tag, collated batch), in order."""
        if self.pool is None:
            for tag, items in tagged_items:
                yield tag, self.collate(items)
            return
        from collections import deque

        pending: deque = deque()
        for tag, items in tagged_items:
            pending.append((tag, self.pool.apply_async(_worker_collate, (items,))))
            if len(pending) >= self.depth:
                tag0, res = pending.popleft()
                yield tag0, res.get()
        while pending:
            tag0, res = pending.popleft()
            yield tag0, res.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


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


def _write_shard(store: EmbeddingStore, j: int, emb: np.ndarray, ids: Sequence[str]) -> None:
    npy, ids_path = store.shard_paths(j)
    bad = [i for i in ids if "\n" in i or not i]
    if bad:
        raise EmbeddingError(f"shard {j}: ids must be non-empty single-line strings, got {bad[0]!r}")
    atomic_write(ids_path, lambda f: f.write("".join(f"{i}\n" for i in ids)), mode="w")
    arr = emb.astype(store.manifest["dtype"])
    atomic_write(npy, lambda f: np.save(f, arr, allow_pickle=False))  # last: marks the shard done


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
    store = _start_manifest(Path(out), manifest)
    todo = {j for j in range(store.num_shards) if j % num_shards == shard_index and not store.is_done(j)}
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
                    _write_shard(store, j, out_buf, pending.pop(j))
                    out_buf = None
                    if progress:
                        progress(f"shard {j:05d}: {store.shard_rows(j)} rows")
    finally:
        prefetch.close()
    return store


# ---------------------------------------------------------------- the model side


class RetrieverEncoder:
    """:class:`BatchEncoder` over a :class:`puma.PumaRetriever`: the same prompts and states as its
    ``encode_query`` / ``encode_document``, with the preprocessing split off for worker processes.

    ``collate`` is a picklable partial of :func:`puma.model.encoding.collate` holding only the
    processor and prompt settings, so worker processes never touch the model; ``forward`` moves the
    batch to the model's device, takes the ``[RET]`` states and L2-normalises them in float32.
    """

    def __init__(self, retriever, is_query: bool):
        from functools import partial

        from puma.model.encoding import collate
        from puma.model.retriever import qwen_config

        self.model = retriever.model
        self.is_query = is_query
        self.collate = partial(collate, retriever.processor, is_query=is_query,
                               prompt_settings=retriever.prompt, ret_token=retriever.ret_token)
        self.dim = int(qwen_config(self.model).text_config.hidden_size)

    def forward(self, batch) -> np.ndarray:
        import torch.nn.functional as F

        from puma.model.encoding import ret_states

        device = next(self.model.parameters()).device
        states = ret_states(self.model, batch.to(device))  # (B, H)
        return F.normalize(states.float(), dim=-1).cpu().numpy()


def count_records(path: str | os.PathLike) -> int:
    """Number of non-blank lines of a jsonl file (cheap: no JSON parsing)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def item_length(item: dict) -> tuple[bool, int]:
    """Sort key that groups images and similar text lengths into the same batches."""
    return item.get("image") is not None, len(item.get("text") or "") + len(item.get("instruction") or "")


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

    manifest = {"kind": "documents", "model": str(model_dir), "model_fingerprint": model_fingerprint(model_dir),
                "source": str(pool), "source_sha256": file_sha256(pool), "count": count_records(pool),
                "root": str(root)}
    records = ((c.did, candidate_item(c, root)) for c in iter_candidates(pool))
    return embed_records(records, out, encoder, manifest=manifest, length=item_length, **options)


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
    manifest = {"kind": "queries", "model": str(model_dir), "model_fingerprint": model_fingerprint(model_dir),
                "source": str(source), "source_sha256": file_sha256(source), "count": len(items), "extra": extra}
    return embed_records(items, out, encoder, manifest=manifest, length=item_length,
                         **{"dtype": "float32", **options})
