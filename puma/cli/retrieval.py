"""Top-level retrieval commands: ``puma embed``, ``puma embed-all``, ``puma evaluate``, ``puma search``, ``puma report``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from puma.cli.common import settings_or_exit as _settings

PARAMS = typer.Option("params.yaml", "--params", help="params file (plus PUMA_ env overrides)")


def _device(device: str | None, shard_index: int = 0) -> str:
    """Explicit device, else GPU ``shard_index % n_gpus`` when CUDA is present, else CPU."""
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return f"cuda:{shard_index % torch.cuda.device_count()}"
    return "cpu"


def _retriever(model: Path, settings, device: str):
    from puma.model.retriever import PumaRetriever

    if not (model / "config.json").is_file():
        typer.echo(f"{model}: not a checkpoint directory (no config.json)", err=True)
        raise typer.Exit(2)
    return PumaRetriever.from_pretrained(model, device=device, dtype=settings.model.dtype,
                                         attn_implementation=settings.model.attn_implementation)


def embed(
    model: Path = typer.Option(..., "--model", help="retriever checkpoint directory"),
    pool: Path = typer.Option(..., "--pool", help="M-BEIR candidate pool jsonl"),
    out: Path = typer.Option(..., "--out", help="output directory (shards + manifest); reruns resume"),
    root: Path | None = typer.Option(None, "--root", help="dataset root for img_path (default: data.root)"),
    shard_index: int = typer.Option(0, "--shard-index", help="this process embeds shards j % num-shards == i"),
    num_shards: int = typer.Option(1, "--num-shards", help="number of processes sharing the pool"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="default: embed.batch_size"),
    shard_size: int | None = typer.Option(None, "--shard-size", help="default: embed.shard_size"),
    workers: int | None = typer.Option(None, "--workers", help="data-loader workers (default: runtime.num_workers)"),
    device: str | None = typer.Option(None, "--device", help="default: cuda:<shard-index % GPUs> or cpu"),
    params: str = PARAMS,
) -> None:
    """Embed a candidate pool into fixed-size fp16 shards (atomic, resumable, splittable over processes)."""
    from puma.data.schema import DataError
    from puma.embed import EmbeddingError, RetrieverEncoder, embed_pool

    s = _settings(params)
    dev = _device(device, shard_index)
    retriever = _retriever(model, s, dev)
    try:
        store = embed_pool(
            RetrieverEncoder(retriever, is_query=False), pool, root or s.data.root, out, model_dir=model,
            shard_size=shard_size or s.embed.shard_size, batch_size=batch_size or s.embed.batch_size,
            dtype=s.embed.dtype, shard_index=shard_index, num_shards=num_shards,
            num_workers=s.runtime.num_workers if workers is None else workers, progress=typer.echo)
    except (DataError, EmbeddingError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    missing = store.missing()
    typer.echo(f"{out}: {store.num_shards - len(missing)}/{store.num_shards} shards done "
               f"({store.manifest['count']} candidates, dim {store.manifest['dim']}, {store.manifest['dtype']})")


def embed_all(
    model: Path = typer.Option(..., "--model", help="retriever checkpoint directory"),
    data: Path | None = typer.Option(None, "--data", help="M-BEIR root (default: data.root)"),
    out: Path = typer.Option(..., "--out", help="embeddings directory (pools/<column>/, queries/<column>/)"),
    column: list[str] = typer.Option(None, "--column", help="only these columns (e.g. cirr_task7); default all 16"),
    workers: int | None = typer.Option(None, "--workers", help="data-loader workers (default: runtime.num_workers)"),
    device: str | None = typer.Option(None, "--device", help="default: cuda:LOCAL_RANK or cpu"),
    stats: Path | None = typer.Option(None, "--stats", help="write this run's cost (seconds, samples/s, peak "
                                      "memory of rank 0) to this JSON file, a run record outside OUT"),
    params: str = PARAMS,
) -> None:
    """Embed every local pool and query file of evaluate.split (the `embed` stage); splits over torchrun ranks.

    Under ``python -m flows.launch`` each of the WORLD_SIZE processes embeds shards j % WORLD_SIZE == RANK of
    every store (on cuda:LOCAL_RANK where there are GPUs); after a barrier rank 0 checks every store is
    complete and writes ``complete.json``. The stores are filled in the stage's work directory
    (``OUT.parent/.puma-work/OUT.name/<key>/``, :func:`puma.evaluate.embed_workdir`) and published to OUT
    when complete, so a killed run (or a retried DVC stage, whose OUT DVC deletes first) resumes: only
    unfinished shards are embedded, and a crash loses at most one shard per process.
    """
    from puma import distributed
    from puma.data.schema import DataError
    from puma.embed import EmbeddingError
    from puma.embed.store import finished_shards
    from puma.evaluate import embed_table1, embed_workdir
    from puma.io import atomic_dir, write_json_atomic
    from puma.resources import peak_memory

    started = time.perf_counter()
    s = _settings(params)
    cols = _columns(column)
    rank, world, local_rank = distributed.launched()
    distributed.join_group()
    try:
        say = typer.echo if rank == 0 else (lambda msg: None)
        root = data or s.data.root
        work = embed_workdir(s, model, root, out)
        dest = work.prepare(log=say)
        done, stores, broken = finished_shards(dest)
        say(f"embed: resumed: {done} finished shard(s) in {stores} started store(s) in {dest}" if done
            else f"embed: no finished shard in {dest}; starting fresh")
        for path in broken:
            say(f"embed: {path}: incomplete or corrupt shard; embedding it again")
        retriever = _retriever(model, s, _device(device, local_rank))
        _, pools, queries = embed_table1(
            retriever, model, root, dest, s, columns=cols, shard_index=rank, num_shards=world,
            num_workers=s.runtime.num_workers if workers is None else workers, progress=say)
        distributed.barrier()  # every rank's shards are written
        if rank == 0:
            stores = list(pools.values()) + queries
            for st in stores:
                st.check({})  # finished
            write_json_atomic(dest / "complete.json", {
                "model": str(model), "model_fingerprint": stores[0].manifest["model_fingerprint"],
                "split": s.evaluate.split, "processes": world,
                "stores": {str(st.root.relative_to(dest)): st.manifest["count"] for st in stores}})
            with atomic_dir(out) as tmp:
                work.publish(tmp)
            work.finish()
            if stats is not None:
                # Cost of this run (the resumed part only, after a crash): not part of OUT, whose bytes are the
                # same for every run; the register stage logs these as run metrics (puma.tracking.cost).
                items = sum(st.manifest["count"] for st in stores)
                seconds = time.perf_counter() - started
                write_json_atomic(stats, {"seconds": round(seconds, 3), "items": items, "processes": world,
                                          "resumed_shards": done,
                                          "samples_per_s": round(items / seconds, 3) if done == 0 else None,
                                          **peak_memory()})
            typer.echo(f"{out}: {len(pools)} pool(s) ({sum(p.manifest['count'] for p in pools.values())} "
                       f"candidates), {len(queries)} query file(s) on {world} process(es)")
    except (DataError, EmbeddingError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        distributed.leave_group()


def _columns(column: list[str] | None):
    from puma.data.columns import column as column_by_name

    try:
        return [column_by_name(c) for c in column] if column else None
    except KeyError as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(2) from None


def evaluate(
    model: Path = typer.Option(..., "--model", help="retriever checkpoint directory"),
    data: Path | None = typer.Option(None, "--data", help="M-BEIR root (default: data.root)"),
    out: Path = typer.Option(..., "--out", help="evaluation directory (metrics.json, topk.jsonl, ...)"),
    column: list[str] = typer.Option(None, "--column", help="only these columns (e.g. cirr_task7); default all 16"),
    workers: int | None = typer.Option(None, "--workers", help="data-loader workers (default: runtime.num_workers)"),
    device: str | None = typer.Option(None, "--device"),
    embeddings: Path | None = typer.Option(None, "--embeddings",
                                           help="read these stores (from `puma embed-all`) instead of embedding"),
    params: str = PARAMS,
) -> None:
    """M-BEIR Table 1: all columns on their local pools and the global pool -> metrics.json (percent)."""
    import json

    from puma.data.schema import DataError
    from puma.embed import EmbeddingError
    from puma.evaluate import evaluate_table1
    from puma.metrics import SUMMARY_KEYS

    s = _settings(params)
    cols = _columns(column)
    retriever = None if embeddings else _retriever(model, s, _device(device))
    try:
        metrics = evaluate_table1(retriever, model, data or s.data.root, out, s, columns=cols,
                                  num_workers=s.runtime.num_workers if workers is None else workers,
                                  embeddings=embeddings, progress=typer.echo)
    except (DataError, EmbeddingError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({p: {k: metrics[p][k] for k in SUMMARY_KEYS if k in metrics[p]} for p in metrics}))
    typer.echo(f"wrote {out / 'metrics.json'}")


def search(
    query: str = typer.Argument("", help="query text (may be empty with --image)"),
    model: Path = typer.Option(..., "--model", help="retriever checkpoint directory"),
    index: list[Path] = typer.Option(..., "--index", help="embedding dir(s) from `puma embed`; several = one pool"),
    image: Path | None = typer.Option(None, "--image", help="query image"),
    instruction: str | None = typer.Option(None, "--instruction", help="task instruction for the query"),
    k: int = typer.Option(10, "-k", "--top-k", help="how many results"),
    device: str | None = typer.Option(None, "--device"),
    params: str = PARAMS,
) -> None:
    """Try the retriever: print the top-k candidates (rank, score, id, text / image path) for one query."""
    from itertools import chain

    from puma.embed import EmbeddingError, EmbeddingStore
    from puma.evaluate import describe_candidates
    from puma.index import search as exact_search

    if not query and image is None:
        typer.echo("error: give query text, --image, or both", err=True)
        raise typer.Exit(2)
    s = _settings(params)
    try:
        stores = [EmbeddingStore.open(d) for d in index]
        retriever = _retriever(model, s, _device(device))
        item = {"text": query or None, "image": str(image) if image else None, "instruction": instruction}
        q = retriever.encode_query([item])  # (1, H), normalised
        res = exact_search(q, chain.from_iterable(st.shards() for st in stores), k)
    except EmbeddingError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    info = describe_candidates(stores, set(res.ids[0]))
    for rank, (cid, score) in enumerate(zip(res.ids[0], res.scores[0]), 1):
        text, img = info.get(cid, (None, None))
        shown = " | ".join(x for x in (text, img) if x)
        typer.echo(f"{rank:3d}  {score:.4f}  {cid}  {shown}")


def report(
    eval_dirs: list[Path] = typer.Argument(..., help="evaluation directories (first = main run)"),
    out: Path = typer.Option(Path("reports"), "--out", help="report directory"),
    name: list[str] = typer.Option(None, "--name", help="run names, one per directory"),
    examples: int = typer.Option(4, "--examples", help="retrieved examples per report (image tasks)"),
    data: Path | None = typer.Option(None, "--data", help="M-BEIR root for thumbnails and the modality errors (default: data.root)"),
    params: str = PARAMS,
) -> None:
    """Markdown report (Table 1 local/global, chance, comparison) + DVC plots + examples with thumbnails."""
    from puma.report import load_examples, write_report

    s = _settings(params)
    try:
        root = data or s.data.root
        ex = load_examples(eval_dirs[0], root, examples) if examples else None
        path = write_report(eval_dirs, out, names=name or None, examples=ex, root=root)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {path}")


def ablation_report(
    table: str = typer.Argument(..., help="table name (ablations/TABLE.exp), e.g. table5"),
    exp_csv: list[Path] = typer.Option(..., "--csv", help="`dvc exp show --csv` output (experiments named "
                                       "NAME-sSEED); repeat it for experiments of several repositories"),
    out: Path = typer.Option(Path("reports/ablations"), "--out", help="directory for TABLE.md/.csv/.png"),
    exp: Path = typer.Option(None, "--exp", help="the table's row list (default: ablations/TABLE.exp)"),
    alias: list[str] = typer.Option(None, "--alias", help="ROW=EXPERIMENT: a row measured under another name "
                                    "(the same overrides and seeds), e.g. t3-distill-mac=t5-mac"),
    x: str = typer.Option(None, "--x", help="an override key of the list (e.g. model.prune_layers): plot the "
                          "averages against its value per row (default: the one key every row sets, if any)"),
    vary_base: bool = typer.Option(False, "--vary-base", help="read the experiments NAME-bSEED (ablations/run.sh "
                                   "--vary-base: each seed pretrained its own base) instead of NAME-sSEED"),
    paired: str = typer.Option(None, "--paired", help="a row: also every other row's difference from it on the "
                               "same seed (mean, 95% CI), which cancels the base's variance under --vary-base"),
) -> None:
    """Mean and 95% CI over seeds per row of an ablation table (ablations/run.sh calls this), only the rows
    of the table's list, in its order, with the paper's rows beside them (puma.report.PAPER_ABLATIONS)."""
    from puma.report import PAPER_ABLATIONS, exp_rows, parse_exp_csv, select_rows, write_ablation

    rows: dict = {}
    for path in exp_csv:
        try:
            for name, seeds in parse_exp_csv(path.read_text(), "b" if vary_base else "s").items():
                rows.setdefault(name, {}).update(seeds)
        except ValueError as e:
            typer.echo(f"error: {path}: {e}", err=True)
            raise typer.Exit(1) from None
    where = ", ".join(map(str, exp_csv))
    exp = exp or Path("ablations") / f"{table}.exp"
    pairs = [a.split("=", 1) for a in alias or []]
    if any(len(p) != 2 or not all(p) for p in pairs):
        typer.echo(f"error: --alias takes ROW=EXPERIMENT, got {alias}", err=True)
        raise typer.Exit(2)
    against = None
    if exp.is_file():
        try:
            listed = exp_rows(exp)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        rows, missing = select_rows(rows, list(listed), dict(pairs))
        keys = {k for sets in listed.values() for k in sets}
        if x is None and len(keys) == 1 and all(len(sets) == 1 for sets in listed.values()):
            x = next(iter(keys))  # every row sets one key (Figure 5: model.prune_layers): plot against it
            try:
                [float(sets[x]) for sets in listed.values()]
            except ValueError:
                x = None
        if x:
            try:
                against = {n: float(sets[x]) for n, sets in listed.items() if x in sets and n in rows}
            except ValueError as e:
                typer.echo(f"error: {exp}: {x} is not a number in every row ({e})", err=True)
                raise typer.Exit(2) from None
        if missing:
            typer.echo(f"warning: {where}: no experiments for {', '.join(missing)} (rows of {exp})", err=True)
    if not rows:
        typer.echo(f"error: {where}: no experiments named NAME-{'b' if vary_base else 's'}SEED with metrics", err=True)
        raise typer.Exit(1)
    if x and not against:
        typer.echo(f"error: no row of {exp} sets {x}", err=True)
        raise typer.Exit(2)
    if paired and paired not in rows:
        typer.echo(f"error: --paired {paired}: no such row with experiments ({', '.join(rows)})", err=True)
        raise typer.Exit(2)
    written = write_ablation(rows, table, out, paper=PAPER_ABLATIONS.get(table), x=against, x_label=x or "",
                             paired=paired)
    typer.echo(f"wrote {written}")


def register(app: typer.Typer) -> None:
    """Attach the retrieval commands to the root app."""
    app.command("embed")(embed)
    app.command("embed-all")(embed_all)
    app.command("evaluate")(evaluate)
    app.command("search")(search)
    app.command("report")(report)
    app.command("ablation-report")(ablation_report)
