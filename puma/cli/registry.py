"""``puma registry ...``: log a pipeline run to MLflow, register the model, run the promotion gate.

The work is in :mod:`puma.tracking`; these commands only parse options and print results. MLflow is
imported inside the commands so ``puma --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from puma.cli.common import settings_or_exit as _settings

app = typer.Typer(no_args_is_help=True)

PARAMS = typer.Option("params.yaml", "--params", help="params file")


def _write_json(path: Path, obj) -> None:
    from puma.io import write_json_atomic  # one atomic JSON writer for the project

    write_json_atomic(path, obj)


@app.command("register")
def register(
    model: Path = typer.Option(..., "--model", help="final merged model folder (e.g. artifacts/stage2/model)"),
    metrics: Path = typer.Option(..., "--metrics", help="evaluation metrics.json"),
    out: Path = typer.Option(Path("reports/registry.json"), "--out", help="summary JSON written here"),
    artifact: list[Path] = typer.Option([], "--artifact", help="extra file/folder to log (repeatable)"),
    promote_: bool = typer.Option(True, "--promote/--no-promote", help="run the promotion gate after"),
    run_name: str = typer.Option(None, "--run-name", help="MLflow parent run name"),
    params: str = PARAMS,
) -> None:
    """Log the pipeline run (parent + one nested run per DVC stage), register MODEL as `challenger`, gate it.

    A failed or partial evaluation is still recorded and registered (tagged incomplete) but never promoted.
    """
    from puma import tracking

    settings = _settings(params)
    if not settings.tracking.enabled:
        _write_json(out, {"tracking": "disabled"})
        typer.echo(f"tracking.enabled is false: nothing logged ({out})")
        return
    try:
        check = tracking.check_evaluation(tracking.read_metrics(metrics), settings.evaluate.pools)
        run = tracking.log_pipeline(settings, ".", metrics_path=metrics, artifacts=artifact,
                                    run_name=run_name)
        version = tracking.register_model(settings, run.run_id, model, check)
        decision = tracking.promote(settings, version) if promote_ else None
    except tracking.TrackingError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    summary = {
        "tracking_uri": run.tracking_uri,
        "experiment_id": run.experiment_id,
        "parent_run_id": run.run_id,
        "stage_runs": run.stage_runs,
        "model_name": settings.tracking.model_name,
        "version": version,
        "evaluation": check.reason,
        tracking.GATE_METRIC: check.scores.get(tracking.GATE_METRIC),
        "promotion": tracking.decision_dict(decision) if decision else None,
    }
    _write_json(out, summary)
    typer.echo(f"MLflow run {run.run_id} ({len(run.stage_runs)} stage runs) at {run.tracking_uri}")
    typer.echo(f"registered {settings.tracking.model_name} v{version} as @{tracking.CHALLENGER}; "
               f"{decision.reason if decision else 'gate not run'}")


@app.command("promote")
def promote(
    version: str = typer.Option(None, "--version", help="model version (default: the challenger)"),
    params: str = PARAMS,
) -> None:
    """Run the promotion gate: move `champion` only if the evaluation is complete and not worse."""
    from puma import tracking

    decision = tracking.promote(_settings(params), version)
    typer.echo(decision.reason)


@app.command("show")
def show(
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    params: str = PARAMS,
) -> None:
    """List the registered versions with aliases, k, lambda, global average and the gate's decision."""
    from puma import tracking

    rows = tracking.model_versions(_settings(params))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no registered versions")
    for r in rows:
        score = r[tracking.GATE_METRIC]
        typer.echo(f"v{r['version']:<4} {','.join(r['aliases']) or '-':<22} k={r['k']} lambda={r['lambda']} "
                   f"{tracking.GATE_METRIC}={'-' if score is None else f'{score:.2f}'}  {r['promotion'] or ''}")


@app.command("download")
def download(
    out: Path = typer.Option(..., "--out", help="folder to copy the model to"),
    uri: str = typer.Option(None, "--uri", help="model URI (default models:/<model_name>@champion)"),
    params: str = PARAMS,
) -> None:
    """Copy a registered model (default: the champion) to OUT; load it with PumaRetriever.from_pretrained."""
    from puma import tracking

    out.mkdir(parents=True, exist_ok=True)
    path = tracking.download_model(_settings(params), uri, dst=out)
    typer.echo(str(path))


@app.command("ui")
def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="address to serve on"),
    port: int = typer.Option(5000, "--port", help="port to serve on"),
    params: str = PARAMS,
) -> None:
    """Serve the MLflow UI for the configured local store (tracking.uri + tracking.artifact_location)."""
    import os
    import shutil

    from puma import tracking

    settings = _settings(params)
    if settings.tracking.uri.startswith(("http://", "https://")):
        typer.echo(f"tracking.uri is a server: open {settings.tracking.uri}")
        return
    _, _, exp_id = tracking.connect(settings, Path.cwd())
    cmd = tracking.ui_command(settings, Path.cwd(), host, port)
    exe = shutil.which(cmd[0])
    if exe is None:
        typer.echo("error: the mlflow command is not on PATH", err=True)
        raise typer.Exit(1)
    typer.echo(" ".join(cmd))
    typer.echo(f"the runs: {tracking.ui_links(f'http://{host}:{port}', exp_id)['experiment']}")
    os.execv(exe, cmd)
