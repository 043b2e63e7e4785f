"""Benchmark harness: interleaved A/B timing, robust statistics, machine metadata, report writer.

Every benchmark in ``bench/`` measures its sides *in the same process, interleaved*: round ``r`` runs
A, B, C, ... and round ``r + 1`` runs them in reverse order, so slow drift (thermal, another process
on the shared cores) hits every side equally. Ratios are computed per round (paired) and then
summarised, which cancels most of that drift.

A benchmark module exposes ``run(...) -> dict`` returning a *section*::

    {"title": str, "meta": {...dtype, batch, input shape...}, "rows": [ {flat values or Stats dicts} ],
     "notes": [str, ...]}

and :func:`write_report` turns ``{name: section}`` plus :func:`machine_info` into
``reports/bench.json`` and ``reports/bench.md`` (each written to a temporary file, then renamed).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from puma.io import write_text_atomic


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median and spread of repeated measurements.

    ``spread_pct`` is the interquartile range relative to the median (0 for one value), the figure
    shown as ``±`` in the markdown report; ``min``/``max`` are kept for the JSON reader.
    """
    if not values:
        raise ValueError("stats() needs at least one value")
    vals = sorted(float(v) for v in values)
    med = statistics.median(vals)
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    spread = (q3 - q1) / abs(med) * 100 if med else 0.0
    return {"median": med, "q1": q1, "q3": q3, "min": vals[0], "max": vals[-1], "n": len(vals),
            "spread_pct": spread}


def paired_ratio(numer: Sequence[float], denom: Sequence[float]) -> dict[str, float]:
    """Stats of the per-round ratios ``numer[i] / denom[i]`` (e.g. full time / pruned time = speedup)."""
    if len(numer) != len(denom):
        raise ValueError(f"paired_ratio: {len(numer)} vs {len(denom)} rounds")
    return stats([a / b for a, b in zip(numer, denom, strict=True)])


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    min_time: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, alternating the order every round; return seconds per call.

    ``warmup`` untimed rounds run first (allocator, oneDNN/cuBLAS kernel selection). ``sync`` is called
    before reading the clock (``torch.cuda.synchronize`` on a GPU, so queued kernels are counted).
    With ``min_time``, a callable faster than that is called ``ceil(min_time / t)`` times per sample
    (``t`` from its last warmup call) and the sample is the mean per call, so millisecond-scale calls
    are not drowned in timer and scheduler noise.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    sync = sync or (lambda: None)
    number = dict.fromkeys(names, 1)
    for _ in range(warmup):
        for name in names:
            t0 = clock()
            fns[name]()
            sync()
            if min_time > 0:
                number[name] = max(1, math.ceil(min_time / max(clock() - t0, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            t0 = clock()
            for _ in range(number[name]):
                fns[name]()
            sync()
            times[name].append((clock() - t0) / number[name])
    return times


def speed_row(times: Mapping[str, list[float]], base: str, other: str, batch_size: int,
              flops_ratio: float | None = None, other_label: str | None = None) -> dict[str, Any]:
    """One comparison row: throughput of both sides, paired speedup ``base/other``, efficiency.

    ``other_label`` names the second side's column (default ``other``), so rows comparing the base
    with different variants (k = 4, 8, ...) share one column.

    ``efficiency = speedup / flops_ratio``: 1.0 means the wall-clock gain is everything the FLOPs
    reduction allows (the paper's 7B: 1.96 / 2.11 = 0.926).
    """
    row: dict[str, Any] = {
        f"{base} samples/s": stats([batch_size / t for t in times[base]]),
        f"{other_label or other} samples/s": stats([batch_size / t for t in times[other]]),
        "speedup": paired_ratio(times[base], times[other]),
    }
    if flops_ratio is not None:
        row["flops ratio"] = flops_ratio
        row["efficiency"] = row["speedup"]["median"] / flops_ratio
    return row


def machine_info() -> dict[str, Any]:
    """Machine and library versions recorded beside every figure."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    flash = importlib.util.find_spec("flash_attn")  # optional; absent on CPU machines
    info["flash_attn"] = importlib.metadata.version("flash-attn") if flash else None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------------
# Report writer


def _fmt_num(x: float) -> str:
    # Three significant digits is the precision a median of a handful of runs deserves.
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def fmt_cell(value: Any) -> str:
    """Markdown text for one cell: a stats dict shows as ``median ±spread%``."""
    if isinstance(value, dict) and "median" in value:
        return f"{_fmt_num(value['median'])} ±{value['spread_pct']:.0f}%"
    if isinstance(value, float):
        return _fmt_num(value)
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value).replace("|", "\\|")


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt_cell(row.get(c)) for c in cols) + " |" for row in rows]
    return out


def render_markdown(report: Mapping[str, Any], title: str = "PUMA benchmarks",
                    producer: str = "`make bench` (bench/run_all.py)") -> str:
    """The human-readable report: machine, then one section per benchmark (meta lines + table)."""
    lines = [f"# {title}", "",
             (f"Run {report.get('started', '?')}, {report.get('wall_s', 0):.0f} s in all. "
              "Figures are medians of interleaved runs; `±` is the interquartile range relative to the "
              f"median. Ratios are paired per round. Produced by {producer}."), "",
             ]
    if report.get("headline"):
        lines += ["## Headline: pruned vs full encode, main k", "", *_table(report["headline"]), ""]
    lines += ["## Machine", ""]
    lines += [f"- {k}: {fmt_cell(v)}" for k, v in report.get("machine", {}).items()]
    for name, sec in report.get("benchmarks", {}).items():
        lines += ["", f"## {sec.get('title', name)} (`{name}`)", ""]
        status = sec.get("status", "ok")
        if status != "ok":
            lines += [f"**{status}**: {sec.get('reason', '')}"]
            continue
        for key, val in sec.get("meta", {}).items():
            if isinstance(val, dict) and "median" not in val:  # nested metadata: one sub-bullet each
                lines += [f"- {key}:"] + [f"  - {k}: {fmt_cell(v)}" for k, v in val.items()]
            else:
                lines += [f"- {key}: {fmt_cell(val)}"]
        if sec.get("wall_s") is not None:
            lines += [f"- wall time: {sec['wall_s']:.0f} s"]
        for group, rows in _row_groups(sec):
            lines += ["", f"**{group}**" if group else ""]
            lines += ["", *_table(rows)] if rows else ["(no rows)"]
        lines += [f"\n> {note}" for note in sec.get("notes", [])]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def _row_groups(sec: Mapping[str, Any]) -> list[tuple[str, list]]:
    # A section holds either "rows" (one table) or "tables" ({title: rows}); other keys are free JSON.
    if "tables" in sec:
        return list(sec["tables"].items())
    if "rows" in sec:
        return [("", sec["rows"])]
    extra = {k: v for k, v in sec.items() if k not in ("title", "status", "meta", "notes", "wall_s")}
    return [("", [{"result": json.dumps(extra, default=str)}])] if extra else []


def write_report(report: Mapping[str, Any], json_path: str | os.PathLike,
                 md_path: str | os.PathLike) -> None:
    """Write the report as JSON (machine-readable, every run value) and markdown (tables)."""
    write_text_atomic(json_path, json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(md_path, render_markdown(report))
