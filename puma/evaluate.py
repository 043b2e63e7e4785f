"""M-BEIR evaluation: Recall@k (hit rate), chance level, and the Table-1 metrics file.

Protocol (REFERENCE.md section 5, decision 6): queries are embedded with a seeded instruction,
candidates without; both are L2-normalised and searched exactly (:mod:`puma.index`). Each of the 16
Table-1 columns is scored against its own local pool and against the global pool (the concatenation
of all local test pools). Recall@k is UniIR's hit rate: a query counts 1 if any positive is in its
top k. ``metrics.json`` holds percentages::

    {"local": {"visualnews_task0": 31.2, ..., "avg": ..., "single": ..., "mixed": ..., "multi": ...},
     "global": {...}}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np

from puma.metrics import bootstrap_ci, chance_recall_at_k, hits_at_k, summarise

# ---------------------------------------------------------------- the Table-1 evaluation


def _check_files(root: Path, columns, split: str = "test") -> None:
    """Fail before any work when a column's files are missing (lists how many, names the first)."""
    from puma.data.columns import INSTRUCTIONS_FILE

    missing = [f for c in columns for f in c.files(split) if not (root / f).is_file()]
    if not (root / INSTRUCTIONS_FILE).is_file():
        missing.append(INSTRUCTIONS_FILE)
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} M-BEIR file(s) missing, e.g. {root / missing[0]} "
                                "(run `puma data synth` or `puma data download mbeir`)")


def _views(root: Path, columns, ev, say):
    """The :class:`EvalView` of each column (files checked first); says which positives are set aside."""
    from puma.data.columns import TABLE1_COLUMNS
    from puma.data.datasets import EvalView

    columns = list(columns or TABLE1_COLUMNS)
    _check_files(root, columns, ev.split)
    views = [EvalView(root, col, instruction_seed=ev.instruction_seed, split=ev.split) for col in columns]
    for v in views:
        if v.set_aside:
            say(f"{v.column.name}: {v.set_aside} positive(s) of another dataset are not in the local pool; set "
                "aside as UniIR does (not retrievable, the queries still count)")
    return views


def embed_table1(
    retriever,
    model_dir: str | os.PathLike,
    root: str | os.PathLike,
    embeddings: str | os.PathLike,
    settings,
    *,
    columns: Sequence | None = None,
    num_workers: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    progress: Callable[[str], None] | None = None,
) -> tuple[list, dict, list]:
    """Embed every local pool and every query file of ``evaluate.split`` into ``embeddings``.

    Layout: ``embeddings/pools/<column>/`` (each distinct local pool once, named after its first
    column; the global pool is their concatenation) and ``embeddings/queries/<column>/`` (queries with
    their seeded instruction, part of the store's identity). Stores are resumable; this process embeds
    the shards ``j % num_shards == shard_index`` of every store (the other processes' shards may still
    be missing when it returns). Returns ``(views, {pool path: store}, [query store per view])``.
    """
    from puma.embed import RetrieverEncoder

    say = progress or (lambda msg: None)
    root, embeddings = Path(root), Path(embeddings)
    views = _views(root, columns, settings.evaluate, say)
    kw = {"model_dir": model_dir, "settings": settings.embed, "say": say,
          "options": {"num_workers": num_workers, "shard_index": shard_index, "num_shards": num_shards}}
    pools = embed_pools(RetrieverEncoder(retriever, False), views, root, embeddings, **kw)
    queries = embed_view_queries(RetrieverEncoder(retriever, True), views, root, embeddings,
                                 settings.evaluate.instruction_seed, **kw)
    return views, pools, queries


# The params the embed stage reads (dvc.yaml): its finished shards are reused only under the same values.
EMBED_PARAMS = ("model.dtype", "model.attn_implementation", "model.ret_token", "prompt", "embed", "evaluate.split",
                "evaluate.instruction_seed", "runtime", "data.root")


def embed_workdir(settings, model_dir: str | os.PathLike, root: str | os.PathLike, out: str | os.PathLike):
    """The work directory (:mod:`puma.workdir`) the embed stage fills before it publishes ``out``.

    Keyed by the code, :data:`EMBED_PARAMS` and the content of the model and the data, so the shards a
    killed ``puma embed-all`` finished are reused by the next run of the same stage and by nothing else.
    """
    from puma.workdir import WorkDir, fingerprint

    return WorkDir(Path(out), fingerprint("embed", settings, EMBED_PARAMS, {"model": model_dir, "data": root}))


def evaluate_table1(
    retriever,
    model_dir: str | os.PathLike,
    root: str | os.PathLike,
    out: str | os.PathLike,
    settings,
    *,
    columns: Sequence | None = None,
    num_workers: int = 0,
    embeddings: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate on the Table-1 columns; returns (and writes) ``metrics.json``'s content.

    With ``embeddings`` (a directory written by :func:`embed_table1`, e.g. by the ``embed`` stage) the
    stores are only read, checked against the model, the data and the instruction seed, and searched:
    ``retriever`` may be None. Without it, everything is embedded first into ``out/embeddings``
    (resumable, reused by a rerun). Under ``out``: ``metrics.json``, ``ci_metrics.json`` (95% bootstrap
    intervals over queries for every key of ``metrics.json``: ``{pool: {key: {"low", "high"}}}``; its name
    ends in ``metrics.json`` so the evaluate stage's MLflow run logs them, e.g. ``local.avg.low``),
    ``chance.json``, ``topk.jsonl`` (per query and pool: ranked ids, scores, positives, hit),
    ``instructions.jsonl`` (the seeded choice per query) and ``eval_meta.json``. ``settings`` is the full
    :class:`puma.config.Settings`.
    """
    say = progress or (lambda msg: None)
    root, out = Path(root), Path(out)
    ev = settings.evaluate
    if embeddings is None:
        views, pools, query_stores = embed_table1(retriever, model_dir, root, out / "embeddings", settings,
                                                  columns=columns, num_workers=num_workers, progress=say)
    else:
        views = _views(root, columns, ev, say)
        pools, query_stores = open_table1(views, root, Path(embeddings), model_dir, ev.instruction_seed)
    query_embs = [st.load()[0] for st in query_stores]  # (Q_c, H) float32 per view
    results = search_pools(views, pools, query_embs, ev)
    return write_results(views, pools, results, ev, model_dir, root, out)


def _pool_dirs(views, embeddings: Path) -> dict:
    """``{local pool path: its store directory}``, each distinct pool once (named after its first column)."""
    dirs: dict = {}
    for view in views:
        dirs.setdefault(view.local_pool, embeddings / "pools" / view.column.name)
    return dirs


def _query_extra(root: Path, instruction_seed: int) -> dict:
    from puma.data.columns import INSTRUCTIONS_FILE
    from puma.io import file_sha256

    return {"instruction_seed": instruction_seed, "instructions_sha256": file_sha256(root / INSTRUCTIONS_FILE)}


def embed_pools(encoder, views, root: Path, embeddings: Path, *, model_dir, settings, say, options=None) -> dict:
    """Every distinct local pool once -> ``{pool path: EmbeddingStore}`` (the global pool is their
    concatenation: no re-embedding). ``settings`` is the ``embed`` section; ``options`` more
    :func:`puma.embed.embed_records` options (num_workers, shard_index, num_shards)."""
    from puma.embed import embed_pool

    pools = {}
    for pool, store_dir in _pool_dirs(views, embeddings).items():
        say(f"embedding pool {pool}")
        pools[pool] = embed_pool(encoder, pool, root, store_dir, model_dir=model_dir,
                                 shard_size=settings.shard_size, batch_size=settings.batch_size,
                                 dtype=settings.dtype, **(options or {}))
    return pools


def embed_view_queries(encoder, views, root: Path, embeddings: Path, instruction_seed: int, *, model_dir, settings,
                       say, options=None) -> list:
    """Each view's queries with their seeded instructions (part of the query store's identity):
    one :class:`EmbeddingStore` per view (float32)."""
    from puma.embed import embed_queries

    extra = _query_extra(root, instruction_seed)
    stores = []
    for view in views:
        say(f"embedding {len(view)} queries of {view.column.name}")
        stores.append(embed_queries(encoder, view.query_file, list(zip(view.qids, view.queries)),
                                    embeddings / "queries" / view.column.name, model_dir=model_dir, extra=extra,
                                    batch_size=settings.batch_size, shard_size=settings.shard_size,
                                    **(options or {})))
    return stores


def open_table1(views, root: Path, embeddings: Path, model_dir, instruction_seed: int) -> tuple[dict, list]:
    """The stores :func:`embed_table1` wrote, each checked finished and made from this model, these
    pools / query files and this instruction seed: ``({pool path: store}, [query store per view])``."""
    from puma.embed import EmbeddingError, EmbeddingStore, pool_manifest, query_manifest

    def opened(path: Path, expected: dict) -> EmbeddingStore:
        try:
            return EmbeddingStore.open(path).check(expected)
        except EmbeddingError as e:
            raise EmbeddingError(f"{e} (embeddings for {model_dir} from `puma embed-all`)") from None

    pools = {pool: opened(d, pool_manifest(pool, root, model_dir)) for pool, d in _pool_dirs(views, embeddings).items()}
    extra = _query_extra(root, instruction_seed)
    queries = [opened(embeddings / "queries" / v.column.name, query_manifest(v.query_file, len(v), model_dir, extra))
               for v in views]
    return pools, queries


def search_pools(views, pools: dict, query_embs: list[np.ndarray], ev) -> dict[str, list]:
    """``{pool setting: [SearchResult per view]}``: local per column; global once for all queries
    together (one pass over the big pool). ``ev`` is the ``evaluate`` section."""
    from puma.index import search

    top = ev.top_k_saved
    results: dict[str, list] = {}
    if "local" in ev.pools:
        results["local"] = [search(q, pools[v.local_pool].shards(), top) for v, q in zip(views, query_embs)]
    if "global" in ev.pools:
        res = search(np.concatenate(query_embs), (sh for st in pools.values() for sh in st.shards()), top)
        bounds = np.cumsum([0] + [len(q) for q in query_embs])
        results["global"] = [_slice(res, lo, hi) for lo, hi in pairwise(bounds)]
    return results


def write_results(views, pools: dict, results: dict[str, list], ev, model_dir, root: Path, out: Path) -> dict:
    """Metrics, chance level (EvalView checked that every positive is in the local pool) and the
    per-query records; writes them and ``eval_meta.json``, ``metrics.json`` last. Returns the metrics."""
    from puma.data.columns import GROUPS as COLUMN_GROUPS
    from puma.io import atomic_write, write_json_atomic

    global_size = sum(st.manifest["count"] for st in pools.values())
    recalls: dict[str, dict[str, float]] = {p: {} for p in results}
    hits: dict[str, dict[str, list[bool]]] = {p: {} for p in results}
    chance: dict[str, dict[str, float]] = {p: {} for p in results}
    topk_lines = []
    for i, view in enumerate(views):
        name, k = view.column.name, ev.k_for(view.column.name)
        for pool, per_view in results.items():
            res = per_view[i]
            hits[pool][name] = hits_at_k(res.ids, view.relevant, k)
            recalls[pool][name] = sum(hits[pool][name]) / len(hits[pool][name])
            size = view.pool_size if pool == "local" else global_size
            chance[pool][name] = chance_recall_at_k(size, [len(r) for r in view.relevant], k)
            for qi, qid in enumerate(view.qids):
                ranked = res.ids[qi]
                topk_lines.append({"column": name, "pool": pool, "qid": qid, "k": k,
                                   "hit": any(c in view.relevant[qi] for c in ranked[:k]), "ids": ranked,
                                   "scores": [round(float(s), 5) for s in res.scores[qi][: len(ranked)]],
                                   "positives": sorted(view.relevant[qi])})
    metrics = {pool: summarise(recalls[pool], COLUMN_GROUPS) for pool in recalls}
    instr_lines = [dict(column=v.column.name, **choice) for v in views for choice in v.instruction_choices]
    _write_jsonl(out / "topk.jsonl", topk_lines, atomic_write)
    _write_jsonl(out / "instructions.jsonl", instr_lines, atomic_write)
    write_json_atomic(out / "chance.json", {pool: summarise(chance[pool], COLUMN_GROUPS) for pool in chance})
    write_json_atomic(out / "eval_meta.json", {
        "model": str(model_dir), "data_root": str(root), "split": ev.split, "instruction_seed": ev.instruction_seed,
        "k": {v.column.name: ev.k_for(v.column.name) for v in views},
        "queries": {v.column.name: len(v) for v in views},
        "pool_sizes": {v.column.name: v.pool_size for v in views}, "global_pool_size": global_size,
        "pool_stores": {v.column.name: str(pools[v.local_pool].root) for v in views},  # read by the report
        # Positives of another dataset outside the local pool (OVEN/InfoSeek): not retrievable, query counted.
        "set_aside_positives": {v.column.name: v.set_aside for v in views}})
    write_json_atomic(out / "ci_metrics.json", {
        "level": ev.ci_level, "resamples": ev.bootstrap_resamples, "seed": ev.bootstrap_seed,
        "method": "percentile bootstrap over queries, within each column", "queries": {
            v.column.name: len(v) for v in views},
        **{pool: bootstrap_ci(hits[pool], COLUMN_GROUPS, ev.bootstrap_resamples, ev.bootstrap_seed, ev.ci_level)
           for pool in hits}})
    write_json_atomic(out / "metrics.json", metrics)  # last: its presence means the run finished
    return metrics


def describe_candidates(stores, wanted: set[str]) -> dict[str, tuple[str | None, str | None]]:
    """id -> (text, absolute image path) for ``wanted`` ids, read from the pools behind embedding stores.

    Streams each store's source pool (recorded in its manifest) and keeps only the wanted records.
    """
    from puma.data.schema import iter_candidates, resolve_image

    found: dict[str, tuple[str | None, str | None]] = {}
    for store in stores:
        source, root = store.manifest.get("source"), store.manifest.get("root")
        if store.manifest.get("kind") != "documents" or not source or not Path(source).is_file():
            continue
        for cand in iter_candidates(source):
            if cand.did in wanted:
                found[cand.did] = (cand.txt, resolve_image(root or ".", cand.img_path))
                if len(found) == len(wanted):
                    return found
    return found


def _slice(res, lo: int, hi: int):
    from puma.index import SearchResult

    return SearchResult(res.scores[lo:hi], res.rows[lo:hi], res.ids[lo:hi])


def _write_jsonl(path: Path, lines: list[dict], atomic_write) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.writelines(json.dumps(x) + "\n" for x in lines), mode="w")
