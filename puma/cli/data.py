"""``puma data ...``: synthesise, validate, download and describe M-BEIR / NLI data."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


def _settings(params: str):
    from puma.config import ConfigError, load_settings

    try:
        return load_settings(params)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


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
                       scale=s.synth_scale if scale is None else scale)
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
