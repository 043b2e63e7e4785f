"""`make bench`: run every benchmark in ``bench/`` and write ``reports/bench.json`` + ``reports/bench.md``.

Each ``bench/<name>.py`` exposes ``run(settings) -> dict`` (one report section, see
``bench/harness.py``). A benchmark whose module does not exist yet is reported as *skipped* with
the reason, one that fails as *error* with its message; nothing is filled in by hand. The report is
rewritten (atomically) after every benchmark, so an interrupted run still leaves a readable one.

    python bench/run_all.py                       # everything, CPU or GPU as available
    python bench/run_all.py --only prune_speed    # a subset
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import machine_info, write_report

# (module, what it compares, who writes it) in run order: cheap and self-contained first.
BENCHMARKS: list[tuple[str, str, str]] = [
    ("prune_speed", "Pruned vs full encode", "bench/prune_speed.py"),
    ("memory", "Peak memory, full vs pruned", "bench/memory.py"),
    ("pool_plan", "Memory plan for the global pool", "bench/pool_plan.py"),
    ("search", "faiss exact search vs numpy brute force", "Evaluation (bench/search.py)"),
    ("teacher_cache", "Stage-1 step: cached vs live teacher", "Training (bench/teacher_cache.py)"),
    ("pretrain_step", "Pretraining step: the default loss vs its naive oracle", "Training (bench/pretrain_step.py)"),
    ("embed_pipeline", "puma embed vs raw forward", "Evaluation (bench/embed_pipeline.py)"),
]
BUDGET_S = 15 * 60  # `make bench` must finish within this on 2 CPU cores


def run_one(name: str, settings: Any, import_module: Callable = importlib.import_module) -> dict[str, Any]:
    """Run ``bench.<name>.run`` and return its section with ``status`` (ok / skipped / error) and ``wall_s``."""
    t0 = time.perf_counter()
    try:
        module = import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name in (f"bench.{name}", "bench"):
            return {"status": "skipped", "reason": f"bench/{name}.py does not exist (yet)", "wall_s": 0.0}
        return _error(e, t0)
    except Exception as e:  # noqa: BLE001  a module that fails to import is broken, not missing
        return _error(e, t0)
    fn = getattr(module, "run", None)
    if not callable(fn):
        return {"status": "skipped", "reason": f"bench/{name}.py has no run() function", "wall_s": 0.0}
    try:
        # run(settings=...) gets the typed config; a run() with only its own defaulted knobs, none.
        section = fn(settings=settings) if "settings" in inspect.signature(fn).parameters else fn()
    except Exception as e:  # noqa: BLE001  one failing benchmark must not cost the others' figures
        return _error(e, t0)
    if not isinstance(section, dict):
        return {"status": "error", "reason": f"run() returned {type(section).__name__}, not a dict",
                "wall_s": time.perf_counter() - t0}
    section.setdefault("status", "ok")
    section["wall_s"] = time.perf_counter() - t0
    return section


HEADLINE_KEYS = ("arch", "dtype", "attn", "kind", "batch", "k", "speedup", "flops ratio", "efficiency")


def headline(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The main-k rows of ``prune_speed`` reduced to speedup, FLOPs ratio and efficiency."""
    tables = section.get("tables", {})
    main = next((rows for title, rows in tables.items() if title.startswith("main")), [])
    return [{k: row.get(k) for k in HEADLINE_KEYS} for row in main]


def _error(e: BaseException, t0: float) -> dict[str, Any]:
    return {"status": "error", "reason": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=-4), "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    names = [n for n, _, _ in BENCHMARKS]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=names, help="run just these benchmarks")
    ap.add_argument("--json", default="reports/bench.json", help="JSON report path")
    ap.add_argument("--md", default="reports/bench.md", help="markdown report path")
    ap.add_argument("--params", default=None, help="params file (default: params.yaml)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from puma.config import load_settings

    settings = load_settings(args.params)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "schema": 1,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": {k: v for k, v in settings.flat().items() if k.startswith(("bench.", "seed"))},
        "benchmarks": {},
    }
    for name, title, owner in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        print(f"[bench] {name}: {title} ...", flush=True)
        section = run_one(name, settings)
        torch.set_num_threads(threads)  # a benchmark may change the thread count; the next gets it back
        section.setdefault("title", title)
        section.setdefault("owner", owner)
        report["benchmarks"][name] = section
        if name == "prune_speed" and section["status"] == "ok":
            report["headline"] = headline(section)
        report["wall_s"] = time.perf_counter() - t0
        write_report(report, args.json, args.md)
        print(f"[bench] {name}: {section['status']} in {section['wall_s']:.0f} s"
              + (f" ({section['reason']})" if section["status"] != "ok" else ""), flush=True)
    over = report.get("wall_s", 0) > BUDGET_S
    report["within_budget"] = not over
    write_report(report, args.json, args.md)
    print(f"[bench] wrote {args.json} and {args.md} in {report.get('wall_s', 0):.0f} s"
          + (f" (over the {BUDGET_S} s budget)" if over else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
