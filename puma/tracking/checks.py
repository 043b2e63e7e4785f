"""Evaluation checks and log parsing (no mlflow): is a ``metrics.json`` complete, what do the logs hold."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puma.data.columns import TABLE1_COLUMNS
from puma.metrics import SUMMARY_KEYS


class TrackingError(RuntimeError):
    """Tracking or registry input is wrong (missing model, unreadable metrics, ...)."""


@dataclass(frozen=True)
class EvalCheck:
    """Whether a ``metrics.json`` is a complete evaluation, and its flattened scores.

    ``metrics.json`` (written by :func:`puma.evaluate.evaluate_table1`) is ``{pool: {column: percent,
    "avg": mean of the columns, "single"/"mixed"/"multi": group means}}`` for pool in local/global.
    """

    complete: bool
    reason: str
    scores: dict[str, float]  # "local.visualnews_task0" -> recall (percent), "global.avg" -> ...


def check_evaluation(metrics: dict[str, Any], pools: list[str], columns: list[str] | None = None) -> EvalCheck:
    """Decide whether ``metrics`` (a parsed ``metrics.json``) is a complete evaluation.

    Complete means: no ``status`` other than ``complete``, every pool in ``pools`` present with every
    expected column (``columns``, default the 16 Table-1 columns) and an ``avg``, all finite numbers.
    A failed or partial evaluation must never reach the champion alias, so anything missing is named.
    """
    columns = [c.name for c in TABLE1_COLUMNS] if columns is None else columns
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
        want = list(columns) if columns else [k for k in table if k not in SUMMARY_KEYS]
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
            rows.append({k: v for k, v in row.items() if is_number(v)})
    return rows


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flat_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict, keyed by their dotted path."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif is_number(obj):
        out[prefix] = float(obj)
    return out
