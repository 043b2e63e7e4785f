"""``puma config``: show the resolved settings and the active profile; ``puma config use PROFILE`` switches."""

from __future__ import annotations

from pathlib import Path

import typer

from puma.cli.common import settings_or_exit

app = typer.Typer(invoke_without_command=True)
PARAMS = typer.Option("params.yaml", "--params", help="params file")


@app.callback()
def show(
    ctx: typer.Context,
    params: str = PARAMS,
    flat: bool = typer.Option(False, "--flat", help="print dotted key=value lines"),
) -> None:
    """Validate params.yaml (+ PUMA_ env overrides), print the active profile (stderr) and the settings."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from puma.profiles import active_profile, check_against_arch

    settings = settings_or_exit(params)
    typer.echo(active_profile(settings).describe(), err=True)
    for problem in check_against_arch(settings):
        typer.echo(f"warning: {problem}", err=True)
    if flat:
        for key, val in settings.flat().items():
            typer.echo(f"{key}={val}")
    else:
        typer.echo(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))


@app.command("use")
def use(
    profile: str = typer.Argument(..., help="profile name (profiles/<name>.yaml): default, paper-2b, paper-7b, ..."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params file to rewrite"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the diff, write nothing"),
) -> None:
    """Rewrite params.yaml to PROFILE (key edits in place, comments kept); print the unified diff."""
    from puma.config import ConfigError
    from puma.profiles import apply_switch, plan_switch

    try:
        switch = plan_switch(profile, params)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    diff = switch.diff(params)
    typer.echo(diff if diff else f"{params} already is profile {profile}; nothing to change")
    for w in switch.warnings:
        typer.echo(f"warning: {w}", err=True)
    if not dry_run:
        apply_switch(switch, params)
        typer.echo(f"{params}: profile {profile}" + (" (written)" if diff else ""), err=True)


@app.command("profiles")
def profiles() -> None:
    """List the profiles (profiles/*.yaml) with their first comment line."""
    from puma.profiles import PROFILE_DIR, list_profiles

    for name in list_profiles():
        first = (PROFILE_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        typer.echo(f"{name:<14}{first}")
