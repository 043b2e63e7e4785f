"""``puma data validate ROOT``: check a whole M-BEIR root (or an NLI csv) before any GPU time is spent.

Reports *all* problems, each as ``file:line: message``, using the same field rules as the loaders
(:mod:`puma.data.schema`, :mod:`puma.data.instructions`):

* every jsonl line parses, has the right fields and types; modality values are known and agree with
  which of text/image is present; ids are unique per file and shaped ``<dataset_id>:<n>``;
* every qrel and every ``pos_cand_list`` entry names an existing candidate: for val/test queries in the
  column's local pool and in the split's global pool (a positive of *another* dataset, as OVEN and
  InfoSeek lines have, need only be in the global pool: it is counted as ``cross_dataset_positives``
  and set aside at evaluation, as UniIR does); the global train pool for train queries; qrels name
  existing queries and agree with the column's task;
* a query's task (its ``task_id``, or when absent the one its query and positive modalities define)
  is its column's, and a ``task_id`` never contradicts the modalities;
* every image exists, opens, and its ``img_path`` stays inside the root (no absolute paths, no ``..``,
  no symlink escaping the root);
* the instructions tsv parses and covers every (dataset id, query modality, candidate modality) used.

The 16 Table-1 test columns and the global test pool are required; the val split (``query/val``,
``qrels/val``, the global val pool, ``query/union_val``) and the train split (``query/union_train``, the
per-dataset ``query/train/mbeir_<dataset>_train.jsonl`` and the global train pool) are checked when
present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from puma.data.columns import (
    DATASET_IDS,
    INSTRUCTIONS_FILE,
    TABLE1_COLUMNS,
    UNION_TRAIN_QUERIES,
    UNION_VAL_QUERIES,
    global_pool_file,
    train_query_file,
)
from puma.data.instructions import parse_instructions
from puma.data.schema import (
    DataError,
    Qrel,
    candidate_problems,
    entry_id,
    iter_qrels,
    query_problems,
    scan_nli,
    task_problem,
)
from puma.io import write_json_atomic


@dataclass(frozen=True)
class Problem:
    path: str
    line: int  # 0 when the problem concerns the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class _Checker:
    def __init__(self, root: Path, check_images: bool) -> None:
        self.root = root.resolve()
        self.check_images = check_images
        self.problems: list[Problem] = []
        self._images: dict[str, str | None] = {}  # img_path -> problem (None = fine), checked once
        self.needed_keys: dict[tuple, tuple[str, int]] = {}  # instruction key -> first (file, line) using it
        self.counts = {"queries": 0, "candidates": 0, "images": 0, "cross_dataset_positives": 0}
        self._scanned: dict[str, dict | None] = {}

    def add(self, path: Path | str, line: int, message: str) -> None:
        self.problems.append(Problem(str(path), line, message))

    def scan_jsonl(self, rel: str, kind: str) -> dict[str, tuple[int, dict]] | None:
        """id -> (line, record) of the valid lines of one file (scanned once); every bad line is reported."""
        if rel not in self._scanned:
            self._scanned[rel] = self._scan(rel, kind)
        return self._scanned[rel]

    def _scan(self, rel: str, kind: str) -> dict[str, tuple[int, dict]] | None:
        path = self.root / rel
        if not path.is_file():
            self.add(path, 0, "file not found")
            return None
        problems_fn, id_key = (query_problems, "qid") if kind == "query" else (candidate_problems, "did")
        img_key = "query_img_path" if kind == "query" else "img_path"
        out: dict[str, tuple[int, dict]] = {}
        lines = 0
        with path.open("r", encoding="utf-8", errors="replace") as f:
            for lineno, text in enumerate(f, 1):
                if not text.strip():
                    continue
                lines += 1
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    self.add(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})")
                    continue
                probs = problems_fn(obj)
                for p in probs:
                    self.add(path, lineno, p)
                if probs:
                    continue
                rid = obj[id_key]
                if rid in out:
                    self.add(path, lineno, f"duplicate {id_key} {rid!r} (first on line {out[rid][0]})")
                    continue
                out[rid] = (lineno, obj)
                if obj[img_key]:
                    self.image(obj[img_key], path, lineno)
        if lines == 0:
            self.add(path, 1, "empty file (no records)")
        self.counts["queries" if kind == "query" else "candidates"] += len(out)
        return out

    def image(self, rel: str, path: Path, line: int) -> None:
        if rel not in self._images:
            self._images[rel] = self._image_problem(rel)
        if self._images[rel]:
            self.add(path, line, self._images[rel])

    def _image_problem(self, rel: str) -> str | None:
        target = (self.root / rel).resolve()
        if not target.is_relative_to(self.root):
            return f"img_path {rel!r} resolves outside the dataset root"
        if not target.is_file():
            return f"image {rel!r} not found under {self.root}"
        self.counts["images"] += 1
        if self.check_images:
            from PIL import Image

            try:
                with Image.open(target) as im:
                    im.load()  # a full decode: JPEG's verify() misses a truncated file
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                return f"image {rel!r} does not open: {type(e).__name__}: {e}"
        return None

    def positives(self, qpath: Path, queries: dict, local: tuple[str, dict] | None, glob: tuple[str, dict],
                  task_id: int | None) -> None:
        """Every pos_cand_list entry is in the local pool (if any) and the global pool; a positive of another
        dataset need only be in the global pool (counted). Checks each query's task against its positives'
        modalities (and ``task_id``, the column's task, when given); records the instruction keys used."""
        for qid, (line, q) in queries.items():
            if not q["pos_cand_list"]:
                self.add(qpath, line, f"query {qid} has an empty pos_cand_list")
            dataset = qid.split(":")[0]
            for did in map(entry_id, q["pos_cand_list"]):
                if local is not None and did not in local[1]:
                    if did.split(":")[0] == dataset or did not in glob[1]:
                        self.add(qpath, line, f"pos_cand_list entry {did} of {qid} is not in {local[0]}")
                    else:
                        self.counts["cross_dataset_positives"] += 1
                    continue
                if did not in glob[1]:
                    self.add(qpath, line, f"pos_cand_list entry {did} of {qid} is not in {glob[0]}")
                    continue
                cand = glob[1][did][1]
                line_task = q.get("task_id")
                problem = task_problem(task_id if line_task is None else line_task, q["query_modality"],
                                       cand["modality"])
                if problem:
                    self.add(qpath, line, f"query {qid}: {problem}")
                    break
                key = (int(dataset), q["query_modality"], cand["modality"])
                self.needed_keys.setdefault(key, (str(qpath), line))

    def qrels(self, rel: str, queries: dict, pool: dict, pool_name: str, glob: dict, task_id: int | None) -> None:
        path = self.root / rel
        if not path.is_file():
            self.add(path, 0, "file not found")
            return
        try:
            for line, rec in iter_qrels(path):
                if isinstance(rec, str):
                    self.add(path, line, rec)
                    continue
                assert isinstance(rec, Qrel)
                if rec.qid not in queries:
                    self.add(path, line, f"qrel names query {rec.qid}, which is not in the query file")
                cross = rec.did.split(":")[0] != rec.qid.split(":")[0] and rec.did in glob
                if rec.did not in pool and not cross:
                    self.add(path, line, f"qrel names candidate {rec.did}, which is not in {pool_name}")
                if task_id is not None and rec.task_id != task_id:
                    self.add(path, line, f"qrel task_id {rec.task_id} but the file is for task {task_id}")
        except DataError as e:  # empty file
            self.add(path, 1, str(e).partition(": ")[2] or str(e))

    def column_membership(self, qpath: Path, queries: dict, dataset_id: int, task_id: int, name: str) -> None:
        for qid, (line, q) in queries.items():
            task = q.get("task_id")
            if (task is not None and task != task_id) or int(qid.split(":")[0]) != dataset_id:
                self.add(qpath, line, f"query {qid} (task {task}) does not belong to {name}")


def _eval_split(c: _Checker, split: str) -> None:
    """The 16 columns of a val or test split, the split's global pool and (val) ``query/union_val``."""
    gname = global_pool_file(split)
    glob = c.scan_jsonl(gname, "candidate") or {}
    for col in TABLE1_COLUMNS:
        query_file, pool_file, qrels_file = col.files(split)
        pool = c.scan_jsonl(pool_file, "candidate")
        queries = c.scan_jsonl(query_file, "query")
        if pool is None or queries is None:
            continue
        qpath = c.root / query_file
        c.column_membership(qpath, queries, col.dataset_id, col.task_id, f"column {col.name}")
        c.positives(qpath, queries, (pool_file, pool), (gname, glob), col.task_id)
        c.qrels(qrels_file, queries, pool, pool_file, glob, col.task_id)
    if split == "val" and (c.root / UNION_VAL_QUERIES).exists():
        union = c.scan_jsonl(UNION_VAL_QUERIES, "query")
        if union is not None:
            c.positives(c.root / UNION_VAL_QUERIES, union, None, (gname, glob), None)


def _train_split(c: _Checker) -> None:
    """union_train, the per-dataset train files (no qrels: M-BEIR has none for train), the global pool."""
    gname = global_pool_file("train")
    pool = c.scan_jsonl(gname, "candidate")
    union = c.scan_jsonl(UNION_TRAIN_QUERIES, "query")
    if pool is None or union is None:
        return
    c.positives(c.root / UNION_TRAIN_QUERIES, union, None, (gname, pool), None)
    by_file = {train_query_file(name): (name, did) for name, did in DATASET_IDS.items()}
    for qpath in sorted((c.root / "query/train").glob("*.jsonl")):
        rel = qpath.relative_to(c.root).as_posix()
        queries = c.scan_jsonl(rel, "query") or {}
        if rel in by_file:
            name, did = by_file[rel]
            for qid, (line, _q) in queries.items():
                if int(qid.split(":")[0]) != did:
                    c.add(qpath, line, f"query {qid} is not a {name} query (dataset id {did})")
        c.positives(qpath, queries, None, (gname, pool), None)


def validate_root(root: str | Path, check_images: bool = True) -> tuple[list[Problem], dict[str, int]]:
    """All problems of an M-BEIR root, and counts of what was checked."""
    root = Path(root)
    if not root.is_dir():
        return [Problem(str(root), 0, "dataset root not found")], {}
    c = _Checker(root, check_images)
    _eval_split(c, "test")
    if any((c.root / p).exists() for p in ("query/val", "qrels/val", global_pool_file("val"), UNION_VAL_QUERIES)):
        _eval_split(c, "val")
    if (c.root / UNION_TRAIN_QUERIES).exists() or (c.root / global_pool_file("train")).exists():
        _train_split(c)
    table, problems = parse_instructions(c.root / INSTRUCTIONS_FILE)
    for line, msg in problems:
        c.add(c.root / INSTRUCTIONS_FILE, line, msg)
    if table or not problems:
        for key, (path, line) in sorted(c.needed_keys.items()):
            if key not in table:
                c.add(c.root / INSTRUCTIONS_FILE, 0, f"no instruction row for dataset {key[0]}, {key[1]} -> {key[2]} "
                                                    f"(needed by {path}:{line})")
    return c.problems, c.counts


def validate_nli(path: str | Path) -> tuple[list[Problem], dict[str, int]]:
    """All problems of a SimCSE-format NLI csv."""
    pairs, problems = scan_nli(path)
    return [Problem(str(path), line, msg) for line, msg in problems], {"pairs": len(pairs)}


def validate(path: str | Path, check_images: bool = True) -> tuple[list[Problem], dict[str, int]]:
    """Validate an M-BEIR root (a directory) or an NLI csv (a file)."""
    path = Path(path)
    if path.suffix == ".csv":
        return validate_nli(path)
    return validate_root(path, check_images)


def write_report(path: str | Path, target: str | Path, problems: list[Problem], counts: dict[str, int]) -> None:
    """``{"target", "ok", "counts", "problems": ["file:line: message", ...]}`` as JSON, written atomically."""
    write_json_atomic(path, {"target": str(target), "ok": not problems, "counts": counts,
                             "problems": [str(p) for p in problems]})
