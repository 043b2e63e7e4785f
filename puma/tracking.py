"""MLflow tracking, the model registry and the promotion gate.

``mlflow`` is imported inside the functions that need it, so ``import puma.tracking`` is cheap and the
rest of the library never pulls it in. One pipeline run becomes one MLflow *parent* run (all of
``params.yaml`` flattened, the evaluation scores, ``metrics.json`` / report / ``params.yaml`` /
``dvc.lock`` / the git commit as artifacts) with one *nested* run per DVC stage, built from
``dvc.lock`` (the params that stage read, its command, the hashes of its deps and outs) and from the
logs the stage wrote (``*.jsonl`` rows with a ``step`` become per-step metrics, a ``metrics.json``
becomes final metrics). Logging after the stages ran keeps tracking out of the training code and
gives the same record whether the stages ran under ``dvc repro`` or the Prefect flow.

Registry: the final merged model folder is logged as the parent run's ``model`` artifact and
registered as a version of ``tracking.model_name`` with its k, lambda, scores and evaluation status
as tags, aliased ``challenger``. :func:`promote` is the gate that moves ``champion``: only a
*complete* evaluation on the same evaluation data whose global average is at least the champion's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from puma.config import Settings

CHALLENGER = "challenger"
CHAMPION = "champion"
# The gate's score: the plain mean of the 16 Table-1 columns on the global pool (paper Table 11).
GATE_METRIC = "global.avg"
PARENT_ENV = "PUMA_MLFLOW_PARENT_RUN_ID"  # set by a caller (e.g. the Prefect flow) to reuse its run
_SUMMARY_KEYS = ("avg", "single", "mixed", "multi")  # non-column keys of a metrics.json pool table
_MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
_MAX_METRICS_PER_BATCH = 1000


class TrackingError(RuntimeError):
    """Tracking or registry input is wrong (missing model, unreadable metrics, ...)."""


# ---------------------------------------------------------------- evaluation checks (no mlflow)


@dataclass(frozen=True)
class EvalCheck:
    """Whether a ``metrics.json`` is a complete evaluation, and its flattened scores.

    ``metrics.json`` (written by :func:`puma.evaluate.evaluate_table1`) is ``{pool: {column: percent,
    "avg": mean of the columns, "single"/"mixed"/"multi": group means}}`` for pool in local/global.
    """

    complete: bool
    reason: str
    scores: dict[str, float]  # "local.visualnews_task0" -> recall (percent), "global.avg" -> ...


def _expected_columns() -> list[str] | None:
    """Names of the 16 Table-1 columns, when the data package provides them."""
    try:
        from puma.data.columns import TABLE1_COLUMNS
    except ImportError:  # the columns module is optional for the tracking code
        return None
    return [getattr(c, "name", c) for c in TABLE1_COLUMNS]


def check_evaluation(metrics: dict[str, Any], pools: list[str], columns: list[str] | None = None) -> EvalCheck:
    """Decide whether ``metrics`` (a parsed ``metrics.json``) is a complete evaluation.

    Complete means: no ``status`` other than ``complete``, every pool in ``pools`` present with every
    expected column (``columns``, default the 16 Table-1 columns) and an ``avg``, all finite numbers.
    A failed or partial evaluation must never reach the champion alias, so anything missing is named.
    """
    columns = _expected_columns() if columns is None else columns
    problems: list[str] = []
    status = metrics.get("status", "complete")
    if status != "complete":
        problems.append(f"status is {status!r}")
    scores: dict[str, float] = {}
    for pool in pools:
        table = metrics.get(pool)
        if not isinstance(table, dict):
            problems.append(f"pool {pool!r} missing")
            continue
        want = list(columns) if columns else [k for k in table if k not in _SUMMARY_KEYS]
        for name in [*want, "avg"]:
            val = table.get(name)
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not math.isfinite(val):
                problems.append(f"{pool}.{name} missing or not a finite number")
                continue
            scores[f"{pool}.{name}"] = float(val)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
        return EvalCheck(False, f"incomplete evaluation: {shown}", scores)
    return EvalCheck(True, "complete", scores)


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a ``metrics.json``; a missing or malformed file is a :class:`TrackingError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrackingError(f"{path}: metrics file not found") from None
    except json.JSONDecodeError as e:
        raise TrackingError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise TrackingError(f"{path}:1: expected a JSON object, got {type(data).__name__}")
    return data


def step_rows(path: Path) -> list[dict[str, float]]:
    """Per-step numeric rows of a JSON-lines training log (rows without a ``step`` are skipped)."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrackingError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append({k: v for k, v in row.items() if _is_number(v)})
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flat_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flat_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif _is_number(obj):
        out[prefix] = float(obj)
    return out


# ---------------------------------------------------------------- lineage (dvc.lock, git)


def read_lock(root: Path) -> dict[str, dict[str, Any]]:
    """The stages of ``dvc.lock`` (lineage, not configuration): name -> {cmd, deps, params, outs}."""
    import yaml  # dvc.lock is DVC's record of what ran; params come from puma.config, never from here

    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    return dict(data.get("stages", {}))


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit sha or "unknown", whether tracked files differ from it)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


# ---------------------------------------------------------------- MLflow runs


def _mlflow(settings: Settings, root: Path):
    """Import mlflow, point it at the configured store and return (mlflow, client, experiment id)."""
    import mlflow
    from mlflow import MlflowClient

    uri = resolve_uri(settings.tracking.uri, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name(settings.tracking.experiment)
    if exp is None:
        art = settings.tracking.artifact_location
        if "://" not in art:  # a relative folder is relative to the repository, as a file URI
            art = (root / art).resolve().as_uri()
        exp_id = client.create_experiment(settings.tracking.experiment, artifact_location=art)
    else:
        exp_id = exp.experiment_id
    return mlflow, client, exp_id


def resolve_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///file.db`` absolute against ``root`` (so any cwd finds one store)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((root / uri[len("sqlite:///") :]).resolve())
    return uri


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])


def _log_metrics(client, run_id: str, values: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    items = [Metric(k, v, now, step) for k, v in values.items()]
    for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH])


def _log_steps(client, run_id: str, rows: list[dict[str, float]], prefix: str) -> int:
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    items = [Metric(f"{prefix}{k}", v, now, int(r["step"])) for r in rows for k, v in r.items() if k != "step"]
    for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH])
    return len(items)


def _stage_logs(root: Path, outs: list[dict[str, Any]]) -> tuple[list[Path], list[Path]]:
    """Training/eval logs among a stage's outs: (*.jsonl step logs, metrics.json files), top level only."""
    jsonl, metric_files = [], []
    for out in outs:
        path = root / out["path"]
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and f.suffix == ".jsonl":
                jsonl.append(f)
            elif f.is_file() and f.name.endswith("metrics.json"):
                metric_files.append(f)
    return jsonl, metric_files


@dataclass
class PipelineRun:
    """What :func:`log_pipeline` recorded."""

    run_id: str
    experiment_id: str
    stage_runs: dict[str, str]
    tracking_uri: str


def log_pipeline(
    settings: Settings,
    root: str | os.PathLike = ".",
    metrics_path: str | os.PathLike | None = None,
    artifacts: list[str | os.PathLike] = (),
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> PipelineRun:
    """Log one pipeline run: a parent run + one nested run per stage in ``dvc.lock``.

    ``parent_run_id`` (or ``$PUMA_MLFLOW_PARENT_RUN_ID``) reuses a run a caller opened; otherwise a new
    parent is created. Returns the ids; the parent is left FINISHED unless it was the caller's.
    """
    root = Path(root).resolve()
    _, client, exp_id = _mlflow(settings, root)
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    sha, dirty = git_commit(root)
    own = parent_run_id is None
    if own:
        parent = client.create_run(exp_id, run_name=run_name or f"pipeline-{sha[:8]}",
                                   tags={"puma.kind": "pipeline"})
        parent_run_id = parent.info.run_id
    client.set_tag(parent_run_id, "git.commit", sha)
    client.set_tag(parent_run_id, "git.dirty", str(dirty).lower())
    _log_params(client, parent_run_id, settings.flat())

    stage_runs: dict[str, str] = {}
    for name, stage in read_lock(root).items():
        child = client.create_run(exp_id, run_name=name, tags={
            "mlflow.parentRunId": parent_run_id, "puma.kind": "stage", "puma.stage": name,
            "dvc.cmd": str(stage.get("cmd", ""))[:5000], "git.commit": sha})
        cid = child.info.run_id
        stage_runs[name] = cid
        params = {k: v for f in (stage.get("params") or {}).values() for k, v in f.items()}
        if params:
            _log_params(client, cid, params)
        for dep in stage.get("deps") or []:
            client.set_tag(cid, f"dep.{dep['path']}", dep.get("md5", ""))
        for out in stage.get("outs") or []:
            client.set_tag(cid, f"out.{out['path']}", out.get("md5", ""))
        jsonl, metric_files = _stage_logs(root, stage.get("outs") or [])
        for f in jsonl:
            _log_steps(client, cid, step_rows(f), prefix="" if len(jsonl) == 1 else f"{f.stem}.")
        for f in metric_files:
            _log_metrics(client, cid, _flat_numbers(read_metrics(f)))
        client.set_terminated(cid, "FINISHED")

    if metrics_path is not None:
        scores = _flat_numbers(read_metrics(metrics_path))
        _log_metrics(client, parent_run_id, scores)
    extra = [Path(metrics_path)] if metrics_path is not None else []
    for item in [root / "params.yaml", root / "dvc.lock", *extra, *(Path(a) for a in artifacts)]:
        item = item if item.is_absolute() else root / item
        if item.is_dir():
            client.log_artifacts(parent_run_id, str(item), artifact_path=item.name)
        elif item.exists():
            client.log_artifact(parent_run_id, str(item))
    client.log_text(parent_run_id, f"{sha}{' (dirty)' if dirty else ''}\n", "git_commit.txt")
    if own:
        client.set_terminated(parent_run_id, "FINISHED")
    return PipelineRun(parent_run_id, exp_id, stage_runs, resolve_uri(settings.tracking.uri, root))


# ---------------------------------------------------------------- registry and gate


@dataclass(frozen=True)
class Decision:
    """Outcome of the promotion gate for one model version."""

    version: str
    promoted: bool
    reason: str
    champion_before: str | None
    champion_after: str | None


def register_model(
    settings: Settings,
    run_id: str,
    model_dir: str | os.PathLike,
    check: EvalCheck,
    root: str | os.PathLike = ".",
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``model_dir`` (a standalone merged checkpoint) to ``run_id`` and register it as a new version.

    The version carries k, lambda, the evaluation status and every score as tags and gets the
    ``challenger`` alias. Returns the version number (a string, as MLflow gives it).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise TrackingError(f"{model_dir}: not a checkpoint folder (no config.json)")
    _, client, _ = _mlflow(settings, Path(root).resolve())
    name = settings.tracking.model_name
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="PUMA layer-pruned Qwen2-VL retriever")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    all_tags = {
        "k": str(settings.model.prune_layers),
        "lambda": str(settings.mac.lambda_),
        "base": settings.model.base,
        "eval.status": "complete" if check.complete else "incomplete",
        "eval.reason": check.reason[:5000],
        "eval.data": f"{settings.data.source}:{settings.data.root}",
        **{f"score.{k}": f"{v:.4f}" for k, v in check.scores.items()},
        **(tags or {}),
    }
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=all_tags)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


def _score(version) -> float | None:
    raw = version.tags.get(f"score.{GATE_METRIC}")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def promote(settings: Settings, version: str | None = None, root: str | os.PathLike = ".") -> Decision:
    """The promotion gate: move ``champion`` to ``version`` (default: the challenger) or say why not.

    Promotes only when the version's evaluation is complete, it was evaluated on the same data as the
    champion, and its global average is >= the champion's (ties promote: the newer model wins).
    The decision and its reason are written as the version's ``promotion`` / ``promotion.reason`` tags.
    """
    from mlflow.exceptions import MlflowException

    _, client, _ = _mlflow(settings, Path(root).resolve())
    name = settings.tracking.model_name
    cand = (client.get_model_version(name, version) if version is not None
            else client.get_model_version_by_alias(name, CHALLENGER))
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    before = str(champ.version) if champ is not None else None
    score = _score(cand)
    if cand.tags.get("eval.status") != "complete" or score is None:
        why = cand.tags.get("eval.reason", "no score")
        promoted, reason = False, f"not promoted: evaluation failed or partial ({why})"
    elif champ is None:
        promoted, reason = True, f"promoted: no champion yet ({GATE_METRIC} {score:.2f})"
    elif champ.version == cand.version:
        promoted, reason = False, f"already champion ({GATE_METRIC} {score:.2f})"
    elif champ.tags.get("eval.data") != cand.tags.get("eval.data"):
        promoted, reason = False, (f"not promoted: evaluated on {cand.tags.get('eval.data')} but champion "
                                   f"v{champ.version} on {champ.tags.get('eval.data')} (not comparable)")
    else:
        best = _score(champ)
        if best is None or score >= best:
            promoted, reason = True, f"promoted: {GATE_METRIC} {score:.2f} >= champion v{champ.version} {best}"
        else:
            promoted, reason = False, (f"not promoted: {GATE_METRIC} {score:.2f} < champion "
                                       f"v{champ.version} {best:.2f}")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, cand.version)
    client.set_model_version_tag(name, cand.version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, cand.version, "promotion.reason", reason)
    after = str(cand.version) if promoted else before
    return Decision(str(cand.version), promoted, reason, before, after)


def model_versions(settings: Settings, root: str | os.PathLike = ".") -> list[dict[str, Any]]:
    """Every registered version, newest first: version, aliases, scores, promotion decision."""
    _, client, _ = _mlflow(settings, Path(root).resolve())
    name = settings.tracking.model_name
    from mlflow.exceptions import MlflowException

    try:  # search results leave aliases empty; the registered model holds alias -> version
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return []
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        mine = sorted(a for a, v in aliases.items() if str(v) == str(mv.version))
        rows.append({"version": str(mv.version), "aliases": mine, "run_id": mv.run_id,
                     "k": mv.tags.get("k"), "lambda": mv.tags.get("lambda"),
                     GATE_METRIC: _score(mv), "eval": mv.tags.get("eval.status"),
                     "promotion": mv.tags.get("promotion.reason")})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def download_model(settings: Settings, uri: str | None = None, root: str | os.PathLike = ".",
                   dst: str | os.PathLike | None = None) -> Path:
    """Local folder of a registered model (default ``models:/<name>@champion``)."""
    mlflow, _, _ = _mlflow(settings, Path(root).resolve())
    uri = uri or f"models:/{settings.tracking.model_name}@{CHAMPION}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))


def load_retriever(settings: Settings, uri: str | None = None, root: str | os.PathLike = ".", **kwargs):
    """A working :class:`~puma.model.retriever.PumaRetriever` from the registry (default: the champion)."""
    from puma.model.retriever import PumaRetriever

    return PumaRetriever.from_pretrained(download_model(settings, uri, root), **kwargs)


def decision_dict(d: Decision) -> dict[str, Any]:
    return asdict(d)
