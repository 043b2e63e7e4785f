"""The ``puma`` command line. Each pipeline step is a subcommand group in its own module.

Heavy imports (torch, transformers, faiss, mlflow) happen inside commands, so ``puma --help`` is fast.
"""

from __future__ import annotations

import typer

from puma.cli import data, model, registry, retrieval, train

app = typer.Typer(
    name="puma",
    help="PUMA: layer-pruned Qwen2-VL universal multimodal retriever.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data", help="Download, synthesise and validate M-BEIR / NLI data.")
app.add_typer(model.app, name="model", help="Tiny default checkpoint, layer pruning, FLOPs.")
app.add_typer(train.app, name="train", help="Stage 1 (self-distillation) and stage 2 (MAC) training.")
app.add_typer(registry.app, name="registry", help="MLflow tracking, model registry and promotion.")
retrieval.register(app)  # top-level: embed, evaluate, search, report


@app.command("config")
def show_config(
    params: str = typer.Option("params.yaml", "--params", help="params file"),
    flat: bool = typer.Option(False, "--flat", help="print dotted key=value lines"),
) -> None:
    """Validate params.yaml (+ PUMA_ env overrides) and print the resolved settings."""
    import json

    from puma.cli.common import settings_or_exit

    settings = settings_or_exit(params)
    if flat:
        for key, val in settings.flat().items():
            typer.echo(f"{key}={val}")
    else:
        typer.echo(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))


def main() -> None:  # pragma: no cover - console entry
    app()
