"""The ``puma`` command line. Each pipeline step is a subcommand group in its own module.

Heavy imports (torch, transformers, faiss, mlflow) happen inside commands, so ``puma --help`` is fast.
"""

from __future__ import annotations

import typer

from puma.cli import config, data, model, registry, retrieval, train

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
app.add_typer(config.app, name="config", help="Show the resolved settings and active profile; switch profiles.")
retrieval.register(app)  # top-level: embed, evaluate, search, report


def main() -> None:  # pragma: no cover - console entry
    app()
