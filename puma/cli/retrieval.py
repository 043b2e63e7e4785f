"""Top-level retrieval commands: ``puma embed``, ``puma evaluate``, ``puma search``, ``puma report``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the retrieval commands to the root app (filled by the evaluation module)."""
