"""Helpers every ``puma`` command group shares."""

from __future__ import annotations

import os

import typer


def settings_or_exit(params: str | os.PathLike):
    """``load_settings(params)``, or print the config error (one line per problem) and exit 2."""
    from puma.config import ConfigError, load_settings

    try:
        return load_settings(params)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
