"""Helpers shared by the CLI groups."""

from __future__ import annotations

from pathlib import Path

import typer


def settings_or_exit(params: Path):
    """``load_settings(params)``, or print the ConfigError (file:line per problem) and exit 2."""
    from puma.config import ConfigError, load_settings

    try:
        return load_settings(params)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
