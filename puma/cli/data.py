"""``puma data ...``: synthesise, validate, download and describe M-BEIR / NLI data."""

from __future__ import annotations

from pathlib import Path

import typer

from puma.cli.common import settings_or_exit as _settings

app = typer.Typer(no_args_is_help=True)


def _stage1_dataset(what: str):
    """The registered stage-1 dataset ``what`` (puma.data.stage1_datasets), else a usage error."""
    from puma.data.stage1_datasets import STAGE1_DATASETS

    if what not in STAGE1_DATASETS:
        raise typer.BadParameter(f"expected mbeir or one of {', '.join(STAGE1_DATASETS)}, got {what!r}")
    return STAGE1_DATASETS[what]


@app.command("synth")
def synth(
    out: Path = typer.Option(None, "--out", help="dataset root to write (default: data.root)"),
    seed: int = typer.Option(None, "--seed", help="generator seed (default: data.synth_seed)"),
    scale: float = typer.Option(None, "--scale", help="size multiplier (default: data.synth_scale)"),
    params: str = typer.Option("params.yaml", "--params", help="params file"),
) -> None:
    """Write MBEIR-mini (synthetic M-BEIR, exact layout) under OUT. Same seed -> same bytes."""
    from puma.data.synth import synth_mbeir

    s = _settings(params).data
    root = synth_mbeir(out or s.root, seed=s.synth_seed if seed is None else seed,
                       scale=s.synth_scale if scale is None else scale, eval_scale=s.synth_eval_scale)
    typer.echo(f"wrote MBEIR-mini to {root}")


@app.command("synth-nli")
def synth_nli_cmd(
    out: Path = typer.Option(None, "--out", help="csv to write (default: data.nli_path)"),
    rows: int = typer.Option(None, "--rows", help="number of rows (default: data.nli_rows)"),
    seed: int = typer.Option(None, "--seed", help="generator seed (default: data.synth_seed)"),
    params: str = typer.Option("params.yaml", "--params", help="params file"),
) -> None:
    """Write a synthetic NLI csv with SimCSE's columns (sent0,sent1,hard_neg)."""
    from puma.data.synth import synth_nli

    s = _settings(params).data
    path = synth_nli(out or s.nli_path, rows=s.nli_rows if rows is None else rows,
                     seed=s.synth_seed if seed is None else seed)
    typer.echo(f"wrote {path}")


@app.command("validate")
def validate_cmd(
    path: Path = typer.Argument(None, help="M-BEIR root or NLI csv (default: data.root)"),
    no_images: bool = typer.Option(False, "--no-image-open", help="only check images exist (do not open them)"),
    max_shown: int = typer.Option(200, "--max-shown", help="print at most this many problems (all are counted)"),
    report: Path = typer.Option(None, "--report", help="also write {ok, counts, problems} as JSON here"),
    params: str = typer.Option("params.yaml", "--params", help="params file"),
) -> None:
    """Check a dataset root (or an NLI csv); print every problem as file:line and exit 1 if any."""
    from puma.data.validate import validate, write_report

    path = path or _settings(params).data.root
    problems, counts = validate(path, check_images=not no_images)
    if report:
        write_report(report, path, problems, counts)
    for p in problems[:max_shown]:
        typer.echo(str(p), err=True)
    if problems:
        more = f" ({len(problems) - max_shown} not shown)" if len(problems) > max_shown else ""
        typer.echo(f"{path}: {len(problems)} problem(s){more}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{path}: ok ({', '.join(f'{v} {k}' for k, v in counts.items())})")


@app.command("stats")
def stats_cmd(
    root: Path = typer.Argument(None, help="M-BEIR root (default: data.root)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a markdown table"),
    params: str = typer.Option("params.yaml", "--params", help="params file"),
) -> None:
    """Queries and candidates per Table-1 column with chance-level Recall@5/@10 (and @k)."""
    import json

    from puma.data.schema import DataError
    from puma.data.stats import dataset_stats, format_stats

    settings = _settings(params)
    try:
        stats = dataset_stats(root or settings.data.root, settings.evaluate.k_for)
    except DataError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


@app.command("download")
def download_cmd(
    what: str = typer.Argument(..., help="mbeir | a stage-1 dataset (nli)"),
    out: Path = typer.Option(None, "--out", help="M-BEIR root / dataset file (default: data.root / its params path)"),
    split: list[str] = typer.Option(None, "--split", help="M-BEIR split(s) to fetch (default: data.download_splits)"),
    images: bool = typer.Option(None, "--images/--no-images", help="fetch, join and extract the ~170 GB image "
                                                                  "archive (default: data.download_images)"),
    params: str = typer.Option("params.yaml", "--params", help="params file"),
) -> None:
    """Download M-BEIR (TIGER-Lab/M-BEIR) or SimCSE NLI from the Hugging Face hub; resumable, verified."""
    from puma.data.download import DownloadError, download_mbeir

    s = _settings(params).data
    try:
        if what == "mbeir":
            path = download_mbeir(out or s.root, split or s.download_splits,
                                  s.download_images if images is None else images, log=typer.echo)
        else:
            spec = _stage1_dataset(what)
            path = spec.download(out or spec.path(s), typer.echo)
    except DownloadError as e:
        typer.echo(f"download failed: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"downloaded to {path}")


@app.command("prepare")
def prepare_cmd(
    what: str = typer.Argument(..., help="mbeir | a stage-1 dataset (nli)"),
    out: Path = typer.Option(None, "--out", help="M-BEIR root / dataset file (default: data.root / its params path)"),
    params: str = typer.Option("params.yaml", "--params", help="params file"),
) -> None:
    """Make the data a run needs, by data.source: synth -> generate it, hub -> download it; then validate."""
    from puma.data.download import DownloadError, download_mbeir
    from puma.data.synth import synth_mbeir
    from puma.data.validate import validate

    s = _settings(params).data
    spec = None if what == "mbeir" else _stage1_dataset(what)
    target = out or (s.root if spec is None else spec.path(s))
    try:
        if spec is not None and s.source == "synth":
            spec.synth(target, s)
        elif spec is not None:
            spec.download(target, typer.echo)
        elif s.source == "synth":
            synth_mbeir(target, seed=s.synth_seed, scale=s.synth_scale, eval_scale=s.synth_eval_scale)
        else:
            download_mbeir(target, s.download_splits, s.download_images, log=typer.echo)
    except DownloadError as e:
        typer.echo(f"download failed: {e}", err=True)
        raise typer.Exit(1) from None
    # Image pixels are checked by `puma data validate`; here only that they exist (cheap on real M-BEIR).
    problems, counts = validate(target, check_images=False) if spec is None else spec.check(target)
    for p in problems[:50]:
        typer.echo(str(p), err=True)
    if problems:
        typer.echo(f"{target}: {len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{target}: ready ({s.source}; {', '.join(f'{v} {k}' for k, v in counts.items())})")
