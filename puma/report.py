"""The evaluation report: a Table-1-shaped markdown table, DVC plots data, bars and retrieved examples.

Inputs are evaluation directories written by :func:`puma.evaluate.evaluate_table1` (``metrics.json``,
``chance.json``, ``topk.jsonl``). Outputs, under the report directory::

    report.md                 Table 1 (local and global) for every run + chance level, group means
    plots/recall_by_column.csv    column, local, global of the first run (DVC plot: bars per column)
    plots/runs.csv            run, pool, avg, single, mixed, multi (DVC plot: run comparison)
    comparison.json           every later run minus the first on the same queries, with paired intervals
                              (report.md also: the global pool's modality errors of every run, given the data root)
    recall_by_column.png      local vs global bars per column
    examples.html             a few queries of image tasks with thumbnails of their top-5
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from puma.data.columns import GROUP_NAMES, TABLE1_COLUMNS, TASKS
from puma.io import atomic_write, write_json_atomic
from puma.metrics import AVG_KEY

ARROW = {"text": "t", "image": "i", "image,text": "(i,t)"}
TABLE_KEYS = (*GROUP_NAMES, AVG_KEY)  # the summary keys of metrics.json in Table 1's order


def task_label(task_id: int) -> str:
    """``t→i`` style label of an M-BEIR task id."""
    q, c = TASKS[task_id]
    return f"{ARROW[q]}→{ARROW[c]}"


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def k_sentence(k: Mapping[str, int]) -> str:
    """The cut-offs an evaluation used (``eval_meta.json``'s ``k``: column -> k) as one phrase.

    The most common k is "otherwise"; the others name a dataset when all of its evaluated columns
    share that k, else the columns, e.g. ``k = 10 for Fashion200K and FashionIQ, 5 otherwise``.
    """
    from collections import Counter

    from puma.data.columns import COLUMNS_BY_NAME

    counts = Counter(k.values())
    if len(counts) <= 1:
        return f"k = {next(iter(counts), '?')} for every column"
    common = counts.most_common(1)[0][0]
    parts = []
    for value in sorted(counts, reverse=True):
        if value == common:
            continue
        cols = [c for c, v in k.items() if v == value]
        names = []
        for c in cols:
            ds = COLUMNS_BY_NAME[c].dataset if c in COLUMNS_BY_NAME else None
            whole = ds is not None and all(k[o] == value for o in k if COLUMNS_BY_NAME.get(o) and
                                           COLUMNS_BY_NAME[o].dataset == ds)
            name = ds if whole else c
            if name not in names:
                names.append(name)
        parts.append(f"{value} for {_join(names)}")
    return f"k = {', '.join(parts)}, {common} otherwise"


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def table1_markdown(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table: one row per run name, the 16 columns in paper order, group means and Avg."""
    head = [f"{c.dataset} {task_label(c.task_id)}" for c in TABLE1_COLUMNS] + [k.capitalize() for k in TABLE_KEYS]
    keys = [c.name for c in TABLE1_COLUMNS] + list(TABLE_KEYS)
    lines = ["| run | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for name, vals in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(vals.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def ci_markdown(points: Mapping[str, Mapping[str, float]],
                cis: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table of the bootstrap intervals: per run, every column and summary key as ``x [lo, hi]``."""
    keys = [c.name for c in TABLE1_COLUMNS] + list(TABLE_KEYS)
    head = [f"{c.dataset} {task_label(c.task_id)}" for c in TABLE1_COLUMNS] + [k.capitalize() for k in TABLE_KEYS]
    lines = ["| run | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for name, ci in cis.items():
        cells = [f"{_fmt(points[name].get(k))} [{_fmt(ci[k]['low'])}, {_fmt(ci[k]['high'])}]" if k in ci else "–"
                 for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def query_hits(eval_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, bool]]]:
    """Per pool, column and query id, whether the query hit (an evaluation's ``topk.jsonl``)."""
    out: dict[str, dict[str, dict[str, bool]]] = {}
    for rec in _topk_records(Path(eval_dir), ("pool", "column", "qid", "hit")):
        out.setdefault(rec["pool"], {}).setdefault(rec["column"], {})[rec["qid"]] = bool(rec["hit"])
    return out


def _topk_records(eval_dir: Path, keys: Sequence[str]) -> list[dict]:
    """The per-query records of an evaluation's ``topk.jsonl``, each checked to have ``keys``."""
    path = eval_dir / "topk.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-query records (run `puma evaluate` first)")
    out = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                out.append({k: rec[k] for k in keys})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a per-query record ({e})") from None
    return out


def paired_comparison(base_dir: str | os.PathLike, other_dir: str | os.PathLike, resamples: int = 1000,
                      seed: int = 0, level: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
    """``other`` minus ``base`` on the same queries, per pool and for every column and summary key: the
    difference of the recalls (points) and its paired percentile bootstrap interval (each resample draws
    queries and takes both runs' hits of the drawn queries, :func:`puma.metrics.bootstrap_ci` on the
    per-query differences). Two checkpoints evaluated on one test set differ per query far less than their
    own intervals suggest, so this says whether one is better where the two separate intervals overlap.
    The runs must have scored the same queries (same columns and query ids per pool), else ValueError."""
    from puma.data.columns import GROUPS as COLUMN_GROUPS
    from puma.metrics import bootstrap_ci, summarise

    base, other = query_hits(base_dir), query_hits(other_dir)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for pool in sorted(base.keys() & other.keys()):
        diffs: dict[str, list[float]] = {}
        for column, hits in base[pool].items():
            theirs = other[pool].get(column)
            if theirs is None or theirs.keys() != hits.keys():
                raise ValueError(f"{Path(other_dir) / 'topk.jsonl'}: {pool} {column}: not the queries of "
                                 f"{Path(base_dir) / 'topk.jsonl'} (a paired comparison needs the same test set)")
            diffs[column] = [float(theirs[q]) - float(hits[q]) for q in hits]  # the base run's order
        if other[pool].keys() != base[pool].keys():
            raise ValueError(f"{Path(other_dir) / 'topk.jsonl'}: {pool}: columns differ from {base_dir}'s")
        point = summarise({c: sum(d) / len(d) for c, d in diffs.items()}, COLUMN_GROUPS)
        ci = bootstrap_ci(diffs, COLUMN_GROUPS, resamples, seed, level)
        out[pool] = {k: {"diff": point[k], **ci[k]} for k in point}
    return out


def _text_bar(x: float, width: int = 30) -> str:
    n = round(width * max(0.0, min(x, 100.0)) / 100)
    return "█" * n + "·" * (width - n)


def bars_markdown(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Per-column local vs global recall as fixed-width text bars (readable in any viewer)."""
    lines = ["```"]
    for c in TABLE1_COLUMNS:
        for pool in ("local", "global"):
            if c.name in metrics.get(pool, {}):
                v = metrics[pool][c.name]
                lines.append(f"{c.name:20s} {pool:6s} {_text_bar(v)} {v:5.1f}")
    lines.append("```")
    return "\n".join(lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write, mode="w")


def write_plots(runs: Mapping[str, Mapping[str, Mapping[str, float]]], plots_dir: Path) -> list[Path]:
    """DVC plots data: per-column local/global of the first run, and the summary of every run."""
    first = next(iter(runs.values()))
    per_col = [[c.name, first.get("local", {}).get(c.name), first.get("global", {}).get(c.name)]
               for c in TABLE1_COLUMNS]
    summary = [[name, pool, *(m.get(pool, {}).get(k) for k in TABLE_KEYS)]
               for name, m in runs.items() for pool in ("local", "global") if pool in m]
    paths = [plots_dir / "recall_by_column.csv", plots_dir / "runs.csv"]
    _write_csv(paths[0], ["column", "local", "global"], per_col)
    _write_csv(paths[1], ["run", "pool", *TABLE_KEYS], summary)
    return paths


def bars_png(metrics: Mapping[str, Mapping[str, float]], path: Path,
             chance: Mapping[str, Mapping[str, float]] | None = None) -> Path | None:
    """Grouped bars (local vs global) per column as a PNG, chance level as black ticks.

    Returns None when matplotlib is unavailable.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [c.name for c in TABLE1_COLUMNS]
    fig, ax = plt.subplots(figsize=(12, 4))
    for offset, pool in ((-0.2, "local"), (0.2, "global")):
        vals = [metrics.get(pool, {}).get(n, 0.0) for n in names]
        xs = [i + offset for i in range(len(names))]
        ax.bar(xs, vals, width=0.4, label=pool)
        if chance and pool in chance:
            ax.scatter(xs, [chance[pool].get(n, 0.0) for n in names], marker="_", s=120, color="black",
                       label="chance" if pool == "local" else None, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Recall@k (%)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def _thumb(path: str | None, size: int = 96) -> str:
    """An <img> tag with an inline base64 JPEG thumbnail (the report is one self-contained file)."""
    if not path:
        return ""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except OSError:
        return f"<i>missing image {html.escape(str(path))}</i>"
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def examples_html(examples: Sequence[Mapping]) -> str:
    """HTML page: per example the query (instruction, text, image) and its ranked candidates.

    Each example: ``{"column", "qid", "instruction", "text", "image", "candidates": [{"id", "score",
    "text", "image", "positive"}]}`` (images are absolute paths).
    """
    out = ["<!doctype html><meta charset='utf-8'><title>PUMA retrieved examples</title>",
           ("<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px;max-width:160px;"
            "font-size:12px} .pos{background:#d4f7d4}</style><h1>Retrieved examples (local pool)</h1>")]
    for ex in examples:
        out.append(f"<h3>{html.escape(ex['column'])} · {html.escape(ex['qid'])}</h3><table><tr>")
        q = f"<b>query</b><br>{_thumb(ex.get('image'))}<br><i>{html.escape(ex.get('instruction') or '')}</i>"
        out.append(f"<td>{q}<br>{html.escape(ex.get('text') or '')}</td>")
        for rank, cand in enumerate(ex["candidates"], 1):
            cls = " class='pos'" if cand.get("positive") else ""
            out.append(f"<td{cls}>#{rank} {cand['score']:.3f}<br>{_thumb(cand.get('image'))}<br>"
                       f"{html.escape(cand.get('text') or '')}<br><small>{html.escape(cand['id'])}</small></td>")
        out.append("</tr></table>")
    return "\n".join(out)


def modality_errors(eval_dir: str | os.PathLike, root: str | os.PathLike) -> dict[str, float]:
    """Global pool: per column, the share (%) of the top-k candidates whose modality is none of the query's
    positives' (UniIR's modality errors), ``avg`` over columns and the group means; {} without global records.
    One evaluation's :func:`modality_errors_of_runs`."""
    return modality_errors_of_runs([eval_dir], root)[0]


def modality_errors_of_runs(eval_dirs: Sequence[str | os.PathLike], root: str | os.PathLike) -> list[dict[str, float]]:
    """:func:`modality_errors` of several evaluations, reading the candidate pools once for all of them. The global
    pool mixes every column's candidates, so a model that ranks by content but not by the instructed modality fills
    the top-k with the wrong kind (MAC's lowered temperature for the target modality weakens the pull of the other
    modalities' negatives). Reads each evaluation's ``topk.jsonl`` and ``eval_meta.json`` and the local pool files
    of their columns under the M-BEIR ``root`` (the union the global search ranked)."""
    from puma.data.columns import COLUMNS_BY_NAME
    from puma.data.columns import GROUPS as COLUMN_GROUPS
    from puma.data.schema import iter_candidates
    from puma.metrics import summarise

    root = Path(root)
    runs, pools = [], {}
    for d in map(Path, eval_dirs):
        records = [r for r in _topk_records(d, ("column", "pool", "k", "ids", "positives")) if r["pool"] == "global"]
        unknown = sorted({r["column"] for r in records} - COLUMNS_BY_NAME.keys())
        if unknown:
            raise ValueError(f"{d / 'topk.jsonl'}: not Table-1 columns: {', '.join(unknown)}")
        meta = json.loads((d / "eval_meta.json").read_text()) if (d / "eval_meta.json").is_file() else {}
        for column in {r["column"] for r in records}:
            pools.setdefault(root / COLUMNS_BY_NAME[column].pool_file_for(meta.get("split", "test")), d)
        runs.append(records)
    wanted = {c for records in runs for r in records for c in (*r["ids"][: r["k"]], *r["positives"])}
    modality: dict[str, str] = {}
    for pool, d in pools.items():
        if not pool.is_file():
            raise FileNotFoundError(f"{pool}: the candidate pool of a column in {d / 'topk.jsonl'} "
                                    "(pass the evaluation's M-BEIR root)")
        modality.update((c.did, c.modality) for c in iter_candidates(pool) if c.did in wanted)
    out = []
    for records in runs:
        wrong: dict[str, list[int]] = {}
        for r in records:
            top, targets = r["ids"][: r["k"]], {modality.get(p) for p in r["positives"]}
            counts = wrong.setdefault(r["column"], [0, 0])
            counts[0] += sum(modality.get(c) not in targets for c in top)
            counts[1] += len(top)
        out.append(summarise({c: w / n for c, (w, n) in wrong.items() if n}, COLUMN_GROUPS))
    return out


def load_examples(eval_dir: str | os.PathLike, root: str | os.PathLike, n: int, top: int = 5) -> list[dict]:
    """Up to ``n`` examples for :func:`examples_html`: the first query of each image column (local pool).

    Reads ``topk.jsonl`` / ``instructions.jsonl`` of an evaluation directory and resolves texts and
    image paths from the query file and the column's pool (only the few records needed are kept).
    """
    from puma.data.columns import COLUMNS_BY_NAME
    from puma.data.schema import iter_queries, resolve_image
    from puma.embed import EmbeddingStore
    from puma.evaluate import describe_candidates

    eval_dir, root = Path(eval_dir), Path(root)
    topk_path = eval_dir / "topk.jsonl"
    if not topk_path.is_file():
        raise FileNotFoundError(f"{topk_path}: no per-query results (run `puma evaluate` first)")
    instr = {}
    if (eval_dir / "instructions.jsonl").is_file():
        for line in (eval_dir / "instructions.jsonl").read_text().splitlines():
            rec = json.loads(line)
            instr[(rec["column"], rec["qid"])] = rec["instruction"]
    picked: dict[str, dict] = {}
    with topk_path.open() as f:
        for line in f:
            rec = json.loads(line)
            col = COLUMNS_BY_NAME.get(rec["column"])
            if (rec["pool"] != "local" or col is None or rec["column"] in picked
                    or "image" not in col.query_modality + col.cand_modality):
                continue
            picked[rec["column"]] = rec
            if len(picked) == n:
                break
    meta_path = eval_dir / "eval_meta.json"
    stores = json.loads(meta_path.read_text()).get("pool_stores", {}) if meta_path.is_file() else {}
    examples = []
    for name, rec in picked.items():
        col = COLUMNS_BY_NAME[name]
        query = next((q for q in iter_queries(root / col.query_file) if q.qid == rec["qid"]), None)
        store = EmbeddingStore.open(stores.get(name) or eval_dir / "embeddings" / "pools" / name)
        ids = rec["ids"][:top]
        info = describe_candidates([store], set(ids))
        examples.append({
            "column": name, "qid": rec["qid"], "instruction": instr.get((name, rec["qid"])),
            "text": query.query_txt if query else None,
            "image": resolve_image(root, query.query_img_path) if query else None,
            "candidates": [{"id": cid, "score": score, "text": info.get(cid, (None, None))[0],
                            "image": info.get(cid, (None, None))[1], "positive": cid in rec["positives"]}
                           for cid, score in zip(ids, rec["scores"])],
        })
    return examples


def write_report(
    eval_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    names: Sequence[str] | None = None,
    examples: Sequence[Mapping] | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write report.md (+ plots, PNG, examples.html) comparing one or more evaluation directories; with the
    M-BEIR ``root`` also the global pool's modality errors (:func:`modality_errors`) of every run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = [Path(d) for d in eval_dirs]
    if not dirs:
        raise ValueError("write_report needs at least one evaluation directory")
    names = list(names) if names else [d.name for d in dirs]
    runs, cis = {}, {}
    for name, d in zip(names, dirs):
        path = d / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics.json (run `puma evaluate` first)")
        runs[name] = json.loads(path.read_text())
        if (d / "ci_metrics.json").is_file():
            cis[name] = json.loads((d / "ci_metrics.json").read_text())
    chance_path = dirs[0] / "chance.json"
    chance = json.loads(chance_path.read_text()) if chance_path.is_file() else None
    meta_path = dirs[0] / "eval_meta.json"
    note = "hit rate as in UniIR. Chance = expected Recall@k of a random ranking."
    if meta_path.is_file():
        note = f"{k_sentence(json.loads(meta_path.read_text())['k'])}; {note}"
    else:
        note = note[0].upper() + note[1:]
    md = ["# PUMA on M-BEIR: Recall@k (%)", "", note, ""]
    for pool in ("local", "global"):
        rows = {n: m[pool] for n, m in runs.items() if pool in m}
        if chance and pool in chance:
            rows["chance"] = chance[pool]
        if rows:
            md += [f"## {pool.capitalize()} pool", "", table1_markdown(rows), ""]
        pool_ci = {n: ci[pool] for n, ci in cis.items() if pool in ci and pool in runs[n]}
        if pool_ci:
            level = round(100 * next(iter(cis.values())).get("level", 0.95))
            md += [f"{level}% bootstrap confidence intervals over queries ({pool} pool):", "",
                   ci_markdown({n: runs[n][pool] for n in pool_ci}, pool_ci), ""]
        if pool == "global" and root is not None and rows:
            scored = [(n, d) for n, d in zip(names, dirs) if (d / "topk.jsonl").is_file()]
            errors = {n: e for (n, _), e in zip(scored, modality_errors_of_runs([d for _, d in scored], root)) if e}
            if errors:
                md += [("Modality errors: the share (%) of each query's global top-k whose modality is not its "
                        "positive's (the instruction names the modality to retrieve):"), "",
                       table1_markdown(errors), ""]
    if len(runs) > 1:
        base_name, base = next(iter(runs.items()))
        paired = _paired_runs(dirs, names, cis.get(base_name, {}))
        md += [f"## Comparison (difference to `{base_name}`)", ""]
        if paired:
            level = round(100 * cis.get(base_name, {}).get("level", 0.95))
            md += [(f"With the same queries: the difference and its paired {level}% bootstrap interval over queries "
                    "(each resample takes both runs' hits of the same drawn queries: what the queries share "
                    "cancels)."), ""]
            write_json_atomic(out / "comparison.json", {"base": base_name, "runs": paired})
        md += ["| run | pool | " + " | ".join(TABLE_KEYS) + " |", "|---|---|" + "---:|" * len(TABLE_KEYS)]
        for name, m in list(runs.items())[1:]:
            for pool in ("local", "global"):
                if pool in m and pool in base:
                    pair = paired.get(name, {}).get(pool, {})
                    cells = [f"{m[pool].get(k, 0.0) - base[pool].get(k, 0.0):+.1f}" +
                             (f" [{pair[k]['low']:+.1f}, {pair[k]['high']:+.1f}]" if k in pair else "")
                             for k in TABLE_KEYS]
                    md.append(f"| {name} | {pool} | " + " | ".join(cells) + " |")
        md.append("")
    first = next(iter(runs.values()))
    md += [f"## Per column, local vs global (`{names[0]}`)", "", bars_markdown(first), ""]
    write_plots(runs, out / "plots")
    if bars_png(first, out / "recall_by_column.png", chance):
        md += ["![recall by column](recall_by_column.png)", ""]
    if examples:
        page = examples_html(examples)
        atomic_write(out / "examples.html", lambda f: f.write(page), mode="w")
        md += ["Retrieved examples with thumbnails: [examples.html](examples.html)", ""]
    text = "\n".join(md)
    atomic_write(out / "report.md", lambda f: f.write(text), mode="w")
    return out / "report.md"


def _paired_runs(dirs: Sequence[Path], names: Sequence[str], ci: Mapping) -> dict[str, dict]:
    """:func:`paired_comparison` of every later run against the first, by name, where both have per-query
    records of the same queries (the bootstrap settings of the first run's ``ci_metrics.json``); runs on
    other queries are left out of it (their table row keeps the plain difference)."""
    out: dict[str, dict] = {}
    if not (dirs[0] / "topk.jsonl").is_file():
        return out
    for name, d in list(zip(names, dirs))[1:]:
        if not (d / "topk.jsonl").is_file():
            continue
        try:
            out[name] = paired_comparison(dirs[0], d, ci.get("resamples", 1000), ci.get("seed", 0),
                                          ci.get("level", 0.95))
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------- ablations over seeds (ablations/run.sh)

# Two-sided 95% Student t quantiles by degrees of freedom (n seeds - 1); beyond 30, the normal 1.96.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}
ABLATION_KEYS = tuple(f"{pool}.{k}" for pool in ("local", "global") for k in TABLE_KEYS)


def _t975(df: int) -> float:
    return next((_T975[d] for d in sorted(_T975) if d >= df), 1.96)


def seed_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean over seeds and its 95% t interval (``low``/``high`` equal the mean for one seed)."""
    import statistics

    if not values:
        raise ValueError("no values to summarise")
    mean = statistics.fmean(values)
    half = _t975(len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": round(mean, 2), "low": round(mean - half, 2), "high": round(mean + half, 2), "n": len(values)}


def parse_exp_csv(text: str, marker: str = "s") -> dict[str, dict[int, dict[str, float]]]:
    """``dvc exp show --csv`` -> ``{row name: {seed: {"local.avg": x, ...}}}`` for experiments named
    ``NAME-sSEED`` (how ablations/run.sh names them; ``marker="b"``: ``NAME-bSEED``, the runs of
    ``--vary-base``, whose seed pretrains its own base too); metric columns are matched by their key suffix."""
    import re

    if marker not in ("s", "b"):
        raise ValueError(f"marker must be 's' (shared base) or 'b' (a base per seed), got {marker!r}")
    rows: dict[str, dict[int, dict[str, float]]] = {}
    reader = csv.DictReader(io.StringIO(text))
    for line, rec in enumerate(reader, start=2):
        m = re.fullmatch(rf"(.+)-{marker}(\d+)", rec.get("Experiment") or "")
        if not m or (rec.get("State") or "Success") != "Success":
            continue  # a running or queued experiment is listed with its baseline's metrics; a failed one has none
        vals = {}
        for key in ABLATION_KEYS:
            # DVC names a metric column "<file>:<key>" only when two metrics files share the key; real
            # `dvc exp show --csv` output (DVC 3.67, one metrics file) has the bare key.
            col = next((c for c in rec if c and (c == key or c.endswith(f"metrics.json:{key}"))), None)
            if col is not None and rec[col] not in ("", "-", None):
                try:
                    vals[key] = float(rec[col])
                except ValueError:
                    raise ValueError(f"<csv>:{line}: {col} is not a number: {rec[col]!r}") from None
        if vals:
            rows.setdefault(m.group(1), {})[int(m.group(2))] = vals
    return rows


# The paper's rows beside each ablation table (its Tables 3 and 5: Qwen2-VL-7B, k = 12, M-BEIR local pools,
# the Single / Mixed / Multi averages). Figure 5 (the k sweep) is a plot without printed numbers.
PAPER_ABLATIONS: dict[str, dict[str, dict[str, float]]] = {
    "table3": {"(Table 3) no distillation, no MAC": {"local.single": 42.5, "local.mixed": 43.6, "local.multi": 61.4},
               "(Table 3) MAC only": {"local.single": 43.3, "local.mixed": 44.0, "local.multi": 62.3},
               "(Table 3) distillation only": {"local.single": 43.6, "local.mixed": 44.2, "local.multi": 62.1},
               "(Table 3) distillation + MAC": {"local.single": 44.2, "local.mixed": 44.7, "local.multi": 62.9}},
    "table5": {"(Table 5, 90/GPU x 4) w/o MAC": {"local.single": 41.7, "local.mixed": 42.7, "local.multi": 60.5},
               "(Table 5) w/ reverse MAC": {"local.single": 41.8, "local.mixed": 42.3, "local.multi": 60.7},
               "(Table 5) w/ MAC": {"local.single": 42.9, "local.mixed": 44.0, "local.multi": 61.3}},
}


def exp_rows(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The rows of an ablation list (ablations/TABLE.exp: ``NAME [-S key=value ...]`` per line, ``#``
    comments), in file order: name -> its overrides (key -> value as written)."""
    rows: dict[str, dict[str, str]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        sets = words[1:]
        if len(sets) % 2 or any(flag != "-S" or "=" not in kv for flag, kv in zip(sets[::2], sets[1::2])):
            raise ValueError(f"{path}:{n}: expected NAME followed by '-S key=value' pairs")
        rows[words[0]] = dict(kv.split("=", 1) for kv in sets[1::2])
    return rows


def select_rows(rows: Mapping[str, Mapping[int, Mapping[str, float]]], names: Sequence[str],
                aliases: Mapping[str, str] | None = None) -> tuple[dict, list[str]]:
    """The experiments of ``names`` only, in that order (a repository's ``dvc exp show`` lists every table's
    experiments); ``aliases``: row -> the experiment name it was measured under (the same overrides and
    seeds, e.g. Table 3's distillation + MAC row is Table 5's MAC row). Returns (rows, names not found)."""
    aliases = aliases or {}
    found = {n: rows[aliases.get(n, n)] for n in names if aliases.get(n, n) in rows}
    return found, [n for n in names if n not in found]


def paired_differences(rows: Mapping[str, Mapping[int, Mapping[str, float]]], reference: str,
                       keys: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per row but ``reference``: the mean and 95% t interval over seeds of (row - reference) on the *same* seed,
    per key, over the seeds both have (:func:`seed_summary`). With ``--vary-base`` a seed is a base, and the
    bases differ far more than the rows (docs/results/reproducibility.md): the difference on one base cancels
    that, where the rows' own intervals do not."""
    if reference not in rows:
        raise ValueError(f"paired reference {reference!r} is not a row ({', '.join(rows)})")
    ref = rows[reference]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, seeds in rows.items():
        if name == reference:
            continue
        diffs = {k: [v[k] - ref[s][k] for s, v in sorted(seeds.items()) if s in ref and k in v and k in ref[s]]
                 for k in keys}
        if any(diffs.values()):
            out[name] = {k: seed_summary(d) for k, d in diffs.items() if d}
    return out


def write_ablation(rows: Mapping[str, Mapping[int, Mapping[str, float]]], table: str, out: str | os.PathLike,
                   paper: Mapping[str, Mapping[str, float]] | None = None,
                   x: Mapping[str, float] | None = None, x_label: str = "", paired: str | None = None) -> Path:
    """``OUT/<table>.md`` (mean [95% CI] over seeds per row), ``<table>.csv`` and ``<table>.png`` (if
    matplotlib is installed). ``paper``: the paper's rows to print beside them (row -> key -> value).
    ``x`` (row -> a number, e.g. the kept layers k of Figure 5): the plot is local and global avg against it,
    a line with the intervals as error bars, instead of one bar per row. ``paired`` (a row): also each other
    row's difference from it on the same seed (:func:`paired_differences`), in the .md and ``<table>.paired.csv``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in ABLATION_KEYS if any(k in v for seeds in rows.values() for v in seeds.values())]
    summary = {name: {k: seed_summary([v[k] for v in seeds.values() if k in v]) for k in keys}
               for name, seeds in rows.items()}
    diffs = paired_differences(rows, paired, keys) if paired else {}
    md = [f"# {table}: Recall (%) mean [95% CI over seeds]", "",
          "| row | seeds | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, s in summary.items():
        md.append(f"| {name} | {len(rows[name])} | " + " | ".join(
            f"{s[k]['mean']:.1f} [{s[k]['low']:.1f}, {s[k]['high']:.1f}]" for k in keys) + " |")
    for name, vals in (paper or {}).items():
        md.append(f"| paper: {name} | – | " + " | ".join(_fmt(vals.get(k)) for k in keys) + " |")
    if paired:
        md += ["", f"Paired on the seed: row minus {paired}, mean [95% CI over seeds]", "",
               "| row | seeds | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
        for name, s in diffs.items():
            md.append(f"| {name} - {paired} | {max(v['n'] for v in s.values())} | " + " | ".join(
                f"{s[k]['mean']:+.1f} [{s[k]['low']:+.1f}, {s[k]['high']:+.1f}]" if k in s else "–" for k in keys)
                + " |")
        _write_csv(out / f"{table}.paired.csv", ["row", "reference", "key", "mean", "low", "high", "n"],
                   [[n, paired, k, v["mean"], v["low"], v["high"], v["n"]] for n, s in diffs.items()
                    for k, v in s.items()])
    atomic_write(out / f"{table}.md", lambda f: f.write("\n".join(md) + "\n"), mode="w")
    _write_csv(out / f"{table}.csv", ["row", "key", "mean", "low", "high", "n"],
               [[n, k, v["mean"], v["low"], v["high"], v["n"]] for n, s in summary.items() for k, v in s.items()])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return out / f"{table}.md"
    if x:
        _plot_against(plt, summary, keys, x, x_label, out / f"{table}.png")
        return out / f"{table}.md"
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * len(summary)))
    names = list(summary)
    for j, pool in enumerate(("local", "global")):
        key = f"{pool}.avg"
        if key in keys:
            means = [summary[n][key]["mean"] for n in names]
            err = [[m - summary[n][key]["low"] for n, m in zip(names, means)],
                   [summary[n][key]["high"] - m for n, m in zip(names, means)]]
            ax.barh([i + 0.4 * j for i in range(len(names))], means, 0.4, xerr=err, label=pool, capsize=3)
    ax.set_yticks([i + 0.2 for i in range(len(names))], names)
    ax.set_xlabel("Recall avg (%)")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / f"{table}.png", lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    plt.close(fig)
    return out / f"{table}.md"


def _plot_against(plt, summary: Mapping[str, Mapping[str, Mapping[str, float]]], keys: Sequence[str],
                  x: Mapping[str, float], x_label: str, path: Path) -> None:
    """Local and global avg (mean, 95% interval over seeds) against ``x`` per row, rows sorted by x."""
    names = sorted((n for n in summary if n in x), key=lambda n: x[n])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for pool in ("local", "global"):
        key = f"{pool}.avg"
        if key not in keys:
            continue
        s = [summary[n][key] for n in names]
        ax.errorbar([x[n] for n in names], [v["mean"] for v in s], capsize=3, marker="o", label=pool,
                    yerr=[[v["mean"] - v["low"] for v in s], [v["high"] - v["mean"] for v in s]])
    ax.set_xlabel(x_label or "x")
    ax.set_ylabel("Recall avg (%)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    plt.close(fig)

