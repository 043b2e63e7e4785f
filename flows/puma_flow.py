"""The Prefect flow ``puma``: run the DVC pipeline stage by stage, with retries, timeouts and live logs.

How the flow relates to DVC: ``dvc.yaml`` is the one definition of what a stage runs (its command,
deps, params and outs). The flow reads the stage graph from DVC, and each task runs
``dvc repro --single-item <stage>`` in topological order. So the flow and a plain ``dvc repro`` share
one cache, one ``dvc.lock`` and one repository lock, skip the same unchanged stages, and a stage
that trains or embeds is started by the same launcher (``python -m flows.launch``: torchrun /
accelerate with ``runtime.num_processes``) either way. What the flow adds: per-stage retries,
a hard per-stage timeout that kills the whole process group, the stage's output streamed into the
Prefect log line by line, parameters for the params file and ``-S``-style overrides, and a summary.

Run it: ``python flows/puma_flow.py`` (local, temporary Prefect server), or through a server and
worker: ``make prefect-up`` then ``prefect deployment run puma/full-pipeline --watch``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # a worker loads this file by path (entrypoint): make `flows` importable
    sys.path.insert(0, str(REPO))

from flows.result import ARTIFACT_KEY, result_markdown
from flows.summary import format_summary, pipeline_summary
from puma.tracking.cost import START_ENV

# Stages that put a model on the GPU (teacher embeddings, the two training stages, corpus embedding).
# Their tasks carry this tag; a Prefect tag concurrency limit (`prefect concurrency-limit create gpu 1`,
# made by flows/prefect_local.sh up, infra/local_stack.sh up and the compose worker) lets only that many
# run at once across all flow runs on the server, so two runs never train on one GPU together.
GPU_TAG = "gpu"
GPU_STAGES = frozenset({"teacher_cache", "stage1", "stage2", "embed", "evaluate"})


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero or ran past its timeout."""


def pipeline_stages(root: Path, targets: list[str] | None = None) -> list[str]:
    """Stage names of ``root/dvc.yaml`` in run order (dependencies first); with ``targets``, only those
    stages and what they depend on."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {s.name: s for s in graph.nodes}
        unknown = sorted(set(targets or []) - set(by_name))
        if unknown:
            raise ValueError(f"{root / 'dvc.yaml'}: no stage named {', '.join(unknown)} (have {sorted(by_name)})")
        keep = set(by_name) if not targets else {
            s.name for t in targets for s in [by_name[t], *nx.descendants(graph, by_name[t])]}
        # Kahn's order with name ties broken by dvc.yaml order, so the run order is stable.
        position = {name: i for i, name in enumerate(by_name)}
        order = list(nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: position[s.name]))
        return [s.name for s in order if s.name in keep]


def apply_overrides(root: Path, params_file: str | None, overrides: dict[str, Any] | None) -> list[str]:
    """Make ``root/params.yaml`` what this run asks for, exactly as ``dvc exp run -S`` would.

    ``params_file`` (another YAML with the same schema) replaces ``params.yaml``; ``overrides``
    (``{"mac.lambda": 0.5}``) are then applied with DVC's own ``-S`` code, which keeps comments. The
    workspace keeps the change, as after ``dvc exp run``. Returns the ``-S`` strings applied.
    """
    from puma.io import write_bytes_atomic

    target = root / "params.yaml"
    if params_file and Path(params_file).resolve() != target.resolve():
        src = Path(params_file) if Path(params_file).is_absolute() else root / params_file
        if not src.exists():
            raise FileNotFoundError(f"{src}: params file not found")
        write_bytes_atomic(target, src.read_bytes())
    sets = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (overrides or {}).items()]
    if sets:
        from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

        dvc_apply_overrides(target, sets)
    from puma.config import load_settings

    load_settings(target)  # fail before any stage runs, naming the bad key and line
    return sets


def run_streaming(cmd: list[str], cwd: Path, timeout_s: float, log, env: dict[str, str] | None = None) -> list[str]:
    """Run ``cmd``, sending each output line to ``log`` as it arrives; kill its process group on timeout.

    Returns the output lines; raises :class:`StageFailed` on a non-zero exit or a timeout.
    """
    # The interpreter's bin/ first, so a worker started without the venv activated finds dvc and puma.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True, env={**os.environ, "PATH": path, **(env or {})})
    timed_out = threading.Event()

    def kill() -> None:  # the stage may have started torchrun children: stop the whole group
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(5)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout_s, kill)
    timer.daemon = True
    timer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            log(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise StageFailed(f"{' '.join(cmd)}: timed out after {timeout_s:.0f}s")
    if rc != 0:
        tail = "\n".join(lines[-20:])
        raise StageFailed(f"{' '.join(cmd)}: exit status {rc}\n{tail}")
    return lines


def start_env(now: float | None = None) -> dict[str, str]:
    """``{PUMA_PIPELINE_START: unix seconds}`` for the stages of one pipeline run: the caller's value when
    it set one (``make run``), else now. The register stage logs ``pipeline.wall_s`` from it."""
    return {START_ENV: os.environ.get(START_ENV) or f"{time.time() if now is None else now:.3f}"}


@task(task_run_name="{stage}", retries=1, retry_delay_seconds=10)
def dvc_stage(stage: str, root: str, timeout_s: float = 4 * 3600, force: bool = False,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one DVC stage (``dvc repro --single-item``) with ``env`` added to its environment.

    DVC clears a stage's outs before running it; a retried training stage still resumes from its
    checkpoints, which live outside the outs under a fingerprint of code, params and inputs
    (puma/workdir.py), so a retry never resumes from checkpoints of another configuration.
    """
    logger = get_run_logger()
    cmd = ["dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    start = time.monotonic()
    lines = run_streaming(cmd, Path(root), timeout_s, lambda line: logger.info("[%s] %s", stage, line), env=env)
    skipped = any("didn't change, skipping" in line for line in lines)
    return {"stage": stage, "seconds": round(time.monotonic() - start, 1), "skipped": skipped}


@flow(name="puma", log_prints=True)
def puma(
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    stages: list[str] | None = None,
    force: bool = False,
    repo: str | None = None,
    stage_timeout_s: float = 4 * 3600,
    retries: int = 1,
) -> dict[str, Any]:
    """The PUMA pipeline: tiny -> pretrain, mbeir, nli -> prune -> teacher_cache -> stage1 -> stage2 -> embed -> evaluate -> report -> register.

    Args:
        params_file: params file to run with (copied over ``params.yaml``; default: use it as is).
        overrides: ``{"mac.lambda": 0.5, ...}`` applied like ``dvc exp run -S``.
        stages: run only these stages (and what they depend on); default: all.
        force: re-run ``stages`` (default: all) even when DVC finds them unchanged; their upstream
            stages still run only if changed (like ``dvc repro --force --single-item``).
        repo: the checkout to run in (default: the one this file is in).
        stage_timeout_s: hard limit per stage; the stage's process group is killed past it.
        retries: retries per stage (each retry re-runs the stage into a clean output folder; training
            stages resume from their last checkpoint).
    """
    root = Path(repo).resolve() if repo else REPO
    env = start_env()  # when this pipeline run started: the register stage logs its wall time
    sets = apply_overrides(root, params_file, overrides)
    if sets:
        print(f"params.yaml overrides: {' '.join(sets)}")
    order = pipeline_stages(root, stages)
    print(f"stages: {' -> '.join(order)}")
    results = []
    forced = set(stages or order) if force else set()
    for stage in order:
        run = dvc_stage.with_options(retries=retries, tags={GPU_TAG} if stage in GPU_STAGES else set())
        results.append(run(stage, str(root), stage_timeout_s, stage in forced, env))
    summary = {"stages": results, **pipeline_summary(root)}
    print(format_summary(summary))
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=result_markdown(root, results), key=ARTIFACT_KEY,
                             description="Table-1 scores, registry decision, MLflow links")
    return summary


if __name__ == "__main__":
    # `python flows/puma_flow.py [key=value ...]`: a local run with -S style overrides.
    pairs = dict(arg.split("=", 1) for arg in sys.argv[1:])
    puma(overrides=pairs or None)
