"""Dataset statistics per Table-1 column (``puma data stats ROOT``): sizes and chance-level recall.

Chance level is the expected Recall@k of a uniformly random ranking (:func:`puma.metrics.chance_recall_at_k`),
computed per query from its number of positives, so a trained retriever's numbers can be read against it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from puma.data.columns import TABLE1_COLUMNS
from puma.data.datasets import EvalView
from puma.data.schema import iter_candidates
from puma.metrics import chance_recall_at_k


def dataset_stats(root: str | Path, k_for: Callable[[str], int]) -> dict:
    """``{"columns": [ {column, group, queries, local_pool, positives_per_query, k, chance_local@5,
    chance_local@10, chance_local@k, chance_global@5, chance_global@10}, ...], "global_pool": N}``.

    ``k_for``: column name -> k (the CLI passes ``Settings.evaluate.k_for``).
    """
    rows = []
    global_size = None
    for col in TABLE1_COLUMNS:
        view = EvalView(root, col)
        if global_size is None:
            global_size = sum(1 for _ in iter_candidates(view.global_pool))
        npos = [len(r) for r in view.relevant]
        k = k_for(col.name)
        rows.append({
            "column": col.name, "group": col.group, "queries": len(view), "local_pool": view.pool_size,
            "positives_per_query": round(sum(npos) / len(npos), 2), "k": k,
            "chance_local@5": chance_recall_at_k(view.pool_size, npos, 5),
            "chance_local@10": chance_recall_at_k(view.pool_size, npos, 10),
            "chance_local@k": chance_recall_at_k(view.pool_size, npos, k),
            "chance_global@5": chance_recall_at_k(global_size, npos, 5),
            "chance_global@10": chance_recall_at_k(global_size, npos, 10),
        })
    return {"columns": rows, "global_pool": global_size}


def format_stats(stats: dict) -> str:
    """A markdown table of :func:`dataset_stats` (percentages for chance levels)."""
    head = ("| column | group | queries | local pool | pos/query | k | chance R@5 | chance R@10 | "
            "chance R@k | global R@5 |")
    lines = [head, "|" + "---|" * 10]
    for r in stats["columns"]:
        lines.append(f"| {r['column']} | {r['group']} | {r['queries']} | {r['local_pool']} | "
                     f"{r['positives_per_query']} | {r['k']} | {100 * r['chance_local@5']:.1f} | "
                     f"{100 * r['chance_local@10']:.1f} | {100 * r['chance_local@k']:.1f} | "
                     f"{100 * r['chance_global@5']:.2f} |")
    n_q = sum(r["queries"] for r in stats["columns"])
    lines.append(f"\n{len(stats['columns'])} columns, {n_q} test queries, global test pool "
                 f"{stats['global_pool']} candidates")
    return "\n".join(lines)
