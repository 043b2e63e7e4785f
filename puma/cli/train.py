"""``puma train ...``: teacher cache, stage 1 (self-distillation) and stage 2 (MAC tuning).

Each command reads ``--params`` and writes under ``--out``. What survives a failed or killed run (the
checkpoints, the teacher cache's finished shards) lives outside ``OUT``, in
``OUT.parent/.puma-work/OUT.name/<fingerprint>/`` (:mod:`puma.workdir`), so a re-run of the same
stage (by hand, by ``dvc repro``, by the flow's retry) resumes from it when the code, params and inputs
are the same, and starts fresh (saying why) otherwise; it is removed once ``OUT`` is complete. Multi-process runs go through
``accelerate launch`` / ``torchrun`` around the same command (``runtime.num_processes``). The training
commands hand the loop its live step loggers (:func:`puma.tracking.step_loggers`: MLflow when
``tracking.enabled`` and ``tracking.live``); the library's training code never imports tracking.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from puma.cli.common import settings_or_exit

app = typer.Typer(no_args_is_help=True)

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file (+ PUMA_ env overrides)")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="show a progress bar")


def _launched_world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _step_loggers(settings) -> list:
    """The live step loggers the settings ask for (built by the tracking module; none when off)."""
    from puma.tracking import step_loggers

    return step_loggers(settings, ".")


def _report(summary: dict, out: Path, work=None) -> None:
    """Write OUT/metrics.json atomically and echo the summary, then drop the work directory (rank 0 only).

    metrics.json holds the stage's result (the same for a resumed run as for an uninterrupted one);
    ``resumed_from`` is echoed and kept in ``OUT/resume.json``.
    """
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    from puma.io import write_text_atomic

    write_text_atomic(out / "metrics.json", json.dumps({k: v for k, v in summary.items() if k != "resumed_from"},
                                                       indent=1))
    typer.echo(json.dumps(summary))
    if work is not None:
        work.finish()


def _preflight(settings, stage: str, model: Path, out: Path | None) -> dict:
    """Print the stage's resource plan (puma/resources.py); exit 2 before loading when it cannot fit."""
    from puma.resources import ResourceError, preflight

    try:
        return preflight(settings, stage, model, out, echo=typer.echo)
    except ResourceError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


def _write_plan(plan: dict, out: Path) -> None:
    import os

    from puma.resources import write_plan

    if plan and int(os.environ.get("RANK", "0")) == 0:
        write_plan(plan, out)


@app.command("teacher-cache")
def teacher_cache(
    out: Path = typer.Option(Path("artifacts/teacher_cache"), "--out", help="cache directory to write"),
    model: Path = typer.Option(Path("artifacts/pruned"), "--model", help="pruned student checkpoint (prompts, [RET])"),
    params: Path = PARAMS,
    batch_size: int = typer.Option(None, "--batch-size", help="teacher batch size [params embed.batch_size]"),
    progress: bool = PROGRESS,
) -> None:
    """Compute the frozen full-depth teacher's [RET] states for the stage-1 data once (sharded, safetensors).

    Stage 1 off (``stage1.enabled: false``): OUT gets only ``NOT_BUILT.json`` (the DVC stage stays cheap
    and its output defined). With ``distill_kind: none`` the cache is still built (stage 1 does not read
    it), so the stage reads one stage-1 key only.
    """
    from puma.train.stage1 import build_teacher_cache, teacher_cache_workdir

    settings = settings_or_exit(params)
    if not settings.stage1.enabled:
        from puma.io import atomic_dir, write_json_atomic

        with atomic_dir(out) as tmp:
            write_json_atomic(tmp / "NOT_BUILT.json", {
                "stage1.enabled": False, "reason": "stage 1 is off: no teacher is read"})
        typer.echo(f"stage1.enabled is false: teacher cache not built ({out}/NOT_BUILT.json)")
        return
    plan = _preflight(settings, "teacher-cache", model, None)
    work = teacher_cache_workdir(settings, model, out, batch_size)
    path = build_teacher_cache(settings, model, out, batch_size=batch_size, progress=progress, work=work)
    _write_plan(plan, out)  # after: the cache directory is replaced whole
    work.finish()
    typer.echo(f"wrote teacher cache to {path}")


@app.command("stage1")
def stage1(
    out: Path = typer.Option(Path("artifacts/stage1"), "--out", help="run directory; the model goes to OUT/model"),
    model: Path = typer.Option(Path("artifacts/pruned"), "--model", help="pruned checkpoint to train"),
    cache: Path = typer.Option(Path("artifacts/teacher_cache"), "--cache",
                               help="teacher cache (stage1.teacher: cache); built first when missing"),
    params: Path = PARAMS,
    progress: bool = PROGRESS,
) -> None:
    """Stage 1: LoRA + layer-pruned self-distillation (Eq. 2-4), then merge to OUT/model."""
    from puma.train.stage1 import (
        build_teacher_cache,
        needs_teacher,
        stage1_workdir,
        teacher_cache_workdir,
        train_stage1,
    )

    settings = settings_or_exit(params)
    if not settings.stage1.enabled:
        summary = train_stage1(settings, model, out)  # copies the pruned model to OUT/model
        typer.echo(f"stage1.enabled is false: copied {model} to {out}/model")
        _report(summary, out)
        return
    _preflight(settings, "stage1", model, out)
    if needs_teacher(settings.stage1) and settings.stage1.teacher == "cache" and not (cache / "meta.json").is_file():
        if _launched_world() > 1:  # the process group does not exist yet; the launcher's env says
            typer.echo(f"{cache}: no teacher cache; run `puma train teacher-cache --out {cache}` first", err=True)
            raise typer.Exit(2)
        typer.echo(f"{cache}: no teacher cache yet, building it")
        cache_work = teacher_cache_workdir(settings, model, cache)
        build_teacher_cache(settings, model, cache, progress=progress, work=cache_work)
        cache_work.finish()
    work = stage1_workdir(settings, model, out, cache)
    summary = train_stage1(settings, model, out, cache_dir=cache, progress=progress,
                           step_loggers=_step_loggers(settings), work=work)
    _report(summary, out, work)


@app.command("stage2")
def stage2(
    out: Path = typer.Option(Path("artifacts/stage2"), "--out", help="run directory; the model goes to OUT/model"),
    model: Path = typer.Option(Path("artifacts/stage1/model"), "--model", help="stage-1 checkpoint to train"),
    params: Path = PARAMS,
    progress: bool = PROGRESS,
) -> None:
    """Stage 2: a new LoRA on the stage-1 model, MAC loss (Eq. 6-8) on the union training set."""
    from puma.train.stage2 import stage2_workdir, train_stage2

    settings = settings_or_exit(params)
    _preflight(settings, "stage2", model, out)
    work = stage2_workdir(settings, model, out)
    summary = train_stage2(settings, model, out, progress=progress, step_loggers=_step_loggers(settings), work=work)
    _report(summary, out, work)
