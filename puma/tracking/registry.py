"""The model registry and the promotion gate.

The final merged model folder is logged as the parent run's ``model``, a pyfunc LoggedModel
(:mod:`.pyfunc`) with the scores as model metrics, and registered as a version of ``tracking.model_name``
with k, lambda and the evaluation status as tags, aliased ``challenger``. :func:`promote` is the gate that moves ``champion``: only a *complete* evaluation on the
same evaluation data whose global average is at least the champion's.

Concurrent registrations (two pipelines finishing at once): MLflow has no compare-and-set on an alias,
so :func:`promote` (1) runs under an exclusive lock where the store allows one (an ``flock`` on
``<store>.promote.lock`` beside a local SQLite or file store; a tracking server has no lock), and
(2) converges: after its decision it re-reads every version that is fully registered (status READY) with
a complete evaluation on the same data and points ``champion`` at the best of them (ties: the newest),
re-checking until the alias stays put. A version is only ever aliased once its model, scores and tags
are logged, so the champion is always a complete evaluation and, once the racers are done, the best.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from puma.config import Settings
from puma.faults import fault_delay
from puma.tracking.checks import EvalCheck, TrackingError
from puma.tracking.store import connect, is_server, resolve_uri

CHALLENGER = "challenger"
CHAMPION = "champion"
# The gate's score: the plain mean of the 16 Table-1 columns on the global pool (paper Table 11).
GATE_METRIC = "global.avg"


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
    """Log ``model_dir`` (a standalone merged checkpoint) as a pyfunc model of ``run_id``; register it.

    The model is an MLflow 3 LoggedModel of the run (:mod:`.pyfunc`: the checkpoint as its artifact, a
    signature, an input example, explicit pip requirements, so nothing is loaded or inferred here), with
    every score as a model metric. The version carries a few tags (k, lambda, base, the evaluation's
    status and data, the gate score) and gets the ``challenger`` alias. Returns the version number.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise TrackingError(f"{model_dir}: not a checkpoint folder (no config.json)")
    mlflow, client, _ = connect(settings, Path(root).resolve())
    name = settings.tracking.model_name
    info = log_pyfunc(mlflow, run_id, model_dir, check)
    from puma.tracking.cost import model_cost
    from puma.tracking.store import log_metrics

    log_metrics(client, run_id, model_cost(settings, model_dir))  # cost next to recall on the run
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="PUMA layer-pruned Qwen2-VL retriever (pyfunc: "
                                       "DataFrame text/image/instruction/role -> L2-normalised embeddings)")
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
        **({GATE_METRIC: f"{check.scores[GATE_METRIC]:.4f}"} if GATE_METRIC in check.scores else {}),
        **(tags or {}),
    }
    mv = mlflow.register_model(info.model_uri, name, tags=all_tags)  # models:/<model_id>: linked to it
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


def log_pyfunc(mlflow, run_id: str, model_dir: Path, check: EvalCheck):
    """Log the checkpoint as the run's ``model`` (a pyfunc LoggedModel) with the scores as model metrics."""
    from puma.model.flops import load_config
    from puma.tracking.pyfunc import CHECKPOINT, PumaPyfunc, input_example, pip_requirements, signature

    dim = load_config(model_dir).text_config.hidden_size
    # MLflow validates an input example by loading the model and predicting on it (a full checkpoint load
    # at registration, and a 2B/7B one is slow); pyfunc.log_model has no switch for it, so it is skipped
    # here. The pyfunc contract is tested instead (tests/pipeline/test_pyfunc.py).
    import mlflow.models.utils as model_utils

    skip = mock.patch.object(model_utils, "_validate_serving_input", lambda *a, **k: None)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None), skip:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=PumaPyfunc(), artifacts={CHECKPOINT: str(model_dir)},
            signature=signature(dim), input_example=input_example(),
            pip_requirements=pip_requirements(),
            tags={"eval.status": "complete" if check.complete else "incomplete"},
        )
        if check.scores:
            mlflow.log_metrics(check.scores, model_id=info.model_id)
    return info


def version_model_id(version) -> str | None:
    """The LoggedModel id of a model version (its ``model_id``, or its ``models:/<model_id>`` source;
    the SQL store in MLflow 3.17 leaves ``model_id`` empty on the versions it returns)."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _score(client, version) -> float | None:
    """The gate score of a version: its model's ``global.avg`` metric (older versions: the tag)."""
    model_id = version_model_id(version)
    if model_id:
        metrics = {m.key: m.value for m in (client.get_logged_model(model_id).metrics or [])}
        if GATE_METRIC in metrics:
            return float(metrics[GATE_METRIC])
    raw = version.tags.get(f"score.{GATE_METRIC}")  # registered before scores became model metrics
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


@contextmanager
def registry_lock(settings: Settings, root: str | os.PathLike = ".") -> Iterator[Path | None]:
    """An exclusive lock for promotions on a local store (``flock`` on ``<store>.promote.lock``); for a
    tracking server nothing (the convergence in :func:`promote` still applies). Yields the lock's path."""
    uri = resolve_uri(settings.tracking.uri, Path(root).resolve())
    if is_server(uri) or not uri.startswith(("sqlite:///", "file:", "/")):
        yield None
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?")[0] + ".promote.lock")
    else:
        path = Path(uri.removeprefix("file://")) / ".promote.lock"
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _best_complete(client, name: str, data: str | None):
    """The best fully registered version with a complete evaluation on ``data``: highest gate score,
    ties to the newest; None when there is none."""
    best, best_key = None, None
    for mv in client.search_model_versions(f"name='{name}'"):
        if str(getattr(mv, "status", "READY")) not in ("READY", "ModelVersionStatus.READY"):
            continue
        if mv.tags.get("eval.status") != "complete" or mv.tags.get("eval.data") != data:
            continue
        score = _score(client, mv)
        if score is None:
            continue
        key = (score, int(mv.version))
        if best_key is None or key > best_key:
            best, best_key = mv, key
    return best


def _converge(client, name: str, data: str | None, rounds: int = 5) -> str | None:
    """Point ``champion`` at :func:`_best_complete` until a re-read agrees; returns the champion's version."""
    from mlflow.exceptions import MlflowException

    current = None
    for _ in range(rounds):
        best = _best_complete(client, name, data)
        try:
            current = str(client.get_registered_model(name).aliases.get(CHAMPION) or "") or None
        except MlflowException:
            current = None
        if best is None or current == str(best.version):
            return current
        client.set_registered_model_alias(name, CHAMPION, best.version)
    return current


def promote(settings: Settings, version: str | None = None, root: str | os.PathLike = ".") -> Decision:
    """The promotion gate under :func:`registry_lock`, then convergence (see the module docstring)."""
    with registry_lock(settings, root):
        return _promote(settings, version, root)


def _promote(settings: Settings, version: str | None, root: str | os.PathLike) -> Decision:
    """The promotion gate: move ``champion`` to ``version`` (default: the challenger) or say why not.

    Promotes only when the version's evaluation is complete, it was evaluated on the same data as the
    champion, and its global average is >= the champion's (ties promote: the newer model wins).
    The decision and its reason are written as the version's ``promotion`` / ``promotion.reason`` tags.
    """
    from mlflow.exceptions import MlflowException

    _, client, _ = connect(settings, Path(root).resolve())
    name = settings.tracking.model_name
    cand = (client.get_model_version(name, version) if version is not None
            else client.get_model_version_by_alias(name, CHALLENGER))
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    before = str(champ.version) if champ is not None else None
    score = _score(client, cand)
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
        best = _score(client, champ)
        if best is None or score >= best:
            promoted, reason = True, f"promoted: {GATE_METRIC} {score:.2f} >= champion v{champ.version} {best}"
        else:
            promoted, reason = False, (f"not promoted: {GATE_METRIC} {score:.2f} < champion "
                                       f"v{champ.version} {best:.2f}")
    fault_delay("promote")  # test hook (puma/faults.py): widens the read-then-write window of a race
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, cand.version)
    client.set_model_version_tag(name, cand.version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, cand.version, "promotion.reason", reason)
    after = str(cand.version) if promoted else before
    if champ is None or champ.tags.get("eval.data") == cand.tags.get("eval.data"):
        # Another registration may have landed since the read above: converge on the best complete one.
        converged = _converge(client, name, cand.tags.get("eval.data"))
        if converged is not None and converged != after:
            reason += f"; champion converged to v{converged} (the best complete evaluation)"
            client.set_model_version_tag(name, cand.version, "promotion.reason", reason)
            after = converged
    return Decision(str(cand.version), promoted, reason, before, after)


def model_versions(settings: Settings, root: str | os.PathLike = ".") -> list[dict[str, Any]]:
    """Every registered version, newest first: version, aliases, scores, promotion decision."""
    _, client, _ = connect(settings, Path(root).resolve())
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
                     GATE_METRIC: _score(client, mv), "eval": mv.tags.get("eval.status"),
                     "promotion": mv.tags.get("promotion.reason")})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def download_model(settings: Settings, uri: str | None = None, root: str | os.PathLike = ".",
                   dst: str | os.PathLike | None = None) -> Path:
    """Local checkpoint folder of a registered model (default ``models:/<name>@champion``).

    For a pyfunc model that is its ``checkpoint`` artifact; a version logged as a plain folder (before
    the pyfunc model) is that folder.
    """
    mlflow, _, _ = connect(settings, Path(root).resolve())
    uri = uri or f"models:/{settings.tracking.model_name}@{CHAMPION}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    if (local / "MLmodel").is_file():
        from mlflow.models import Model

        arts = Model.load(str(local)).flavors.get("python_function", {}).get("artifacts", {})
        from puma.tracking.pyfunc import CHECKPOINT

        if CHECKPOINT in arts:
            return local / arts[CHECKPOINT]["path"]
    return local


def load_retriever(settings: Settings, uri: str | None = None, root: str | os.PathLike = ".", **kwargs):
    """A working :class:`~puma.model.retriever.PumaRetriever` from the registry (default: the champion)."""
    from puma.model.retriever import PumaRetriever

    return PumaRetriever.from_pretrained(download_model(settings, uri, root), **kwargs)


def decision_dict(d: Decision) -> dict[str, Any]:
    return asdict(d)
