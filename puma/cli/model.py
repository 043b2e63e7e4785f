"""``puma model ...``: the embedded tiny checkpoint, layer pruning and FLOPs."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("tiny")
def tiny(
    out: Path = typer.Option(..., "--out", help="directory to write the checkpoint to"),
    seed: int = typer.Option(0, "--seed", help="weights and tokenizer seed"),
    layers: int = typer.Option(8, "--layers", help="decoder layers of the tiny model"),
) -> None:
    """Write the tiny random Qwen2-VL (safetensors + tokenizer with [RET] + processor) to OUT."""
    from puma.model.tiny import save_tiny

    path = save_tiny(out, seed=seed, num_layers=layers)
    typer.echo(f"wrote tiny Qwen2-VL ({layers} layers, seed {seed}) to {path}")
