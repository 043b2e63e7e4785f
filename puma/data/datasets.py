"""Datasets for training and evaluation, built on the validated records of :mod:`puma.data.schema`.

* :class:`NLIPairs` (stage 1): SimCSE csv rows -> ``{"query": item, "positive": item}`` (text only).
* :class:`MBEIRTrain` (stage 2): union_train queries + one positive per query per epoch, seeded.
* :class:`EvalView` (evaluation): one Table-1 column's val or test queries with seeded instructions, relevant id
  sets from the qrels, and the paths of its local pool and of the global pool.

Items are the dicts of docs/design.md (``{"text", "image", "instruction"}``) with *absolute* image
paths; images are never opened here (the collate function opens and resizes them, in data-loader worker
processes when ``runtime.num_workers > 0``), so nothing holds a pool's pixels in memory. Loading checks
what it reads and raises :class:`DataError` naming file and line before any caller writes output.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from puma.data.columns import (
    DATASET_IDS,
    GLOBAL_TRAIN_POOL,
    INSTRUCTIONS_FILE,
    UNION_TRAIN_QUERIES,
    Column,
    column,
    global_pool_file,
)
from puma.data.instructions import InstructionKey, choose_instruction, load_instructions
from puma.data.schema import (
    Candidate,
    DataError,
    candidate_item,
    iter_candidates,
    iter_queries,
    load_qrels_lines,
    query_item,
    scan_nli,
    task_problem,
)


def text_item(text: str) -> dict:
    return {"text": text, "image": None, "instruction": None}


class NLIPairs:
    """Stage-1 pairs from a SimCSE NLI csv: ``sent0`` is the query, ``sent1`` the positive."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        pairs, problems = scan_nli(self.path)
        if problems:
            line, msg = problems[0]
            raise DataError(f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}")
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        sent0, sent1 = self.pairs[i]
        return {"query": text_item(sent0), "positive": text_item(sent1)}


def _dataset_id(qid: str) -> int:
    return int(qid.split(":", 1)[0])


def iter_pool_items(path: str | Path, root: str | Path) -> Iterator[tuple[str, dict, str]]:
    """Stream a candidate pool as ``(did, item, modality)`` (for embedding pools shard by shard)."""
    for cand in iter_candidates(path):
        yield cand.did, candidate_item(cand, root), cand.modality


def _check_image_exists(root: Path, rel: str | None, where: str) -> None:
    if rel is not None and not (root / rel).is_file():
        raise DataError(f"{where}: image {rel!r} not found under {root}")


class MBEIRTrain:
    """Stage-2 training set: union_train queries, each with one positive drawn per epoch.

    ``dataset[i]`` -> ``{"query": item (with instruction), "positive": item, "query_target_modality",
    "cand_modality", "qid", "did", "instruction_index"}``. The positive and the instruction are pure
    functions of ``(seed, epoch, qid)``: call :meth:`set_epoch` before each epoch (as with a
    DistributedSampler); results do not depend on worker processes or iteration order.
    ``query_target_modality`` (MAC's modality of the query's target) is the sampled positive's
    modality, as in Algorithm 1; ``cand_modality`` is the candidate's own (the same candidate here).
    """

    def __init__(self, root: str | Path, seed: int = 0, queries: str = UNION_TRAIN_QUERIES,
                 pool: str = GLOBAL_TRAIN_POOL, instructions: str = INSTRUCTIONS_FILE,
                 check_images: bool = True) -> None:
        self.root = Path(root).resolve()
        self.seed = seed
        self.epoch = 0
        qpath, ppath = self.root / queries, self.root / pool
        self.instructions = load_instructions(self.root / instructions)
        self.queries = []
        lines: dict[str, int] = {}
        for line, q in iter_queries(qpath, with_lines=True):
            if not q.pos_cand_list:
                raise DataError(f"{qpath}:{line}: query {q.qid} has no positive candidate")
            if check_images:
                _check_image_exists(self.root, q.query_img_path, f"{qpath}:{line}")
            self.queries.append(q)
            lines[q.qid] = line
        needed = {did for q in self.queries for did in q.pos_cand_list}
        # Stream the (possibly multi-million line) pool, keeping only the positives.
        self.candidates: dict[str, Candidate] = {}
        for line, c in iter_candidates(ppath, with_lines=True):
            if c.did in needed:
                if check_images:
                    _check_image_exists(self.root, c.img_path, f"{ppath}:{line}")
                self.candidates[c.did] = c
        for q in self.queries:
            missing = [d for d in q.pos_cand_list if d not in self.candidates]
            if missing:
                raise DataError(f"{qpath}:{lines[q.qid]}: positive {missing[0]} of {q.qid} is not in {ppath}")
            for did in q.pos_cand_list:
                key = (_dataset_id(q.qid), q.query_modality, self.candidates[did].modality)
                if key not in self.instructions:
                    raise DataError(f"{qpath}:{lines[q.qid]}: no instruction row for {key} in "
                                    f"{self.root / instructions}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict:
        q = self.queries[i]
        rng = random.Random(f"{self.seed}:{self.epoch}:{q.qid}")
        cand = self.candidates[rng.choice(q.pos_cand_list)]
        index, text = choose_instruction(self.instructions, q.qid, _dataset_id(q.qid), q.query_modality,
                                         cand.modality, seed=f"{self.seed}:{self.epoch}")
        return {
            "query": query_item(q, self.root, text),
            "positive": candidate_item(cand, self.root),
            "query_target_modality": cand.modality,
            "cand_modality": cand.modality,
            "qid": q.qid,
            "did": cand.did,
            "instruction_index": index,
        }


class EvalView:
    """One Table-1 column of a split (``test`` or ``val``) for evaluation: instructed query items,
    relevant sets, pool paths.

    Attributes: ``column`` (:class:`Column`), ``split``, ``qids``, ``queries`` (items with instructions),
    ``relevant`` (one set of dids per query, from the qrels), ``instruction_choices`` (per query
    ``{"qid", "index", "instruction"}``: write it beside the metrics so the run is reproducible),
    ``local_pool`` and ``global_pool`` (absolute paths), ``query_file``, ``pool_size`` and
    ``set_aside`` (the number of positives set aside, see below).

    The relevant ids are checked against the local pool (the global pool contains every local pool of
    the split). A positive of *another dataset* that is not in the local pool (real OVEN and InfoSeek
    qrels name each other's candidates) is set aside as UniIR does: it cannot be retrieved from this
    pool, the query still counts (a query left with no positive scores 0). A missing positive of the
    column's own dataset is an error. A query without ``task_id`` gets its task from its query modality
    and its positives' modality; a task other than the column's is an error.
    """

    def __init__(self, root: str | Path, column_name: str | Column, instruction_seed: int = 0,
                 global_pool: str | None = None, instructions: str = INSTRUCTIONS_FILE, split: str = "test") -> None:
        self.root = Path(root).resolve()
        self.column = column_name if isinstance(column_name, Column) else column(column_name)
        self.split = split
        col = self.column
        self.instruction_seed = instruction_seed
        query_file, pool_file, qrels_file = col.files(split)
        self.query_file = self.root / query_file
        self.local_pool = self.root / pool_file
        self.global_pool = self.root / (global_pool or global_pool_file(split))
        qpath, qrels_path = self.query_file, self.root / qrels_file
        table: dict[InstructionKey, list[str]] = load_instructions(self.root / instructions)
        qrels = load_qrels_lines(qrels_path)
        instr_key = (col.dataset_id, col.query_modality, col.cand_modality)
        self.qids: list[str] = []
        self.queries: list[dict] = []
        self.relevant: list[set[str]] = []
        self.instruction_choices: list[dict] = []
        tasks: dict[str, tuple[int | None, str, str]] = {}  # qid -> (task_id, query modality, where)
        for line, q in iter_queries(qpath, with_lines=True):
            where = f"{qpath}:{line}"
            if (q.task_id is not None and q.task_id != col.task_id) or _dataset_id(q.qid) != DATASET_IDS[col.dataset]:
                raise DataError(f"{where}: query {q.qid} (task {q.task_id}) does not belong to column {col.name}")
            if q.qid not in qrels:
                raise DataError(f"{where}: query {q.qid} has no relevant candidate in {qrels_path}")
            _check_image_exists(self.root, q.query_img_path, where)
            if instr_key not in table:
                raise DataError(f"{where}: no instruction row for dataset {instr_key[0]}, {instr_key[1]} -> "
                                f"{instr_key[2]} in {self.root / instructions}")
            index, text = choose_instruction(table, q.qid, col.dataset_id, q.query_modality, col.cand_modality,
                                             instruction_seed)
            self.qids.append(q.qid)
            self.queries.append(query_item(q, self.root, text))
            self.instruction_choices.append({"qid": q.qid, "index": index, "instruction": text})
            tasks[q.qid] = (q.task_id, q.query_modality, where)
        known = set(self.qids)
        for qid, dids in qrels.items():
            if qid not in known:
                raise DataError(f"{qrels_path}:{min(dids.values())}: qrel names query {qid}, which is not in {qpath}")
        pool_modality: dict[str, str] = {}
        for line, c in iter_candidates(self.local_pool, with_lines=True):
            _check_image_exists(self.root, c.img_path, f"{self.local_pool}:{line}")
            pool_modality[c.did] = c.modality
        self.set_aside = 0
        for qid in self.qids:
            kept = set()
            for did, line in qrels[qid].items():
                if did in pool_modality:
                    task_id, qmod, where = tasks[qid]
                    problem = task_problem(col.task_id if task_id is None else task_id, qmod, pool_modality[did])
                    if problem:
                        raise DataError(f"{where}: query {qid}: {problem} (positive {did}, column {col.name})")
                    kept.add(did)
                elif _dataset_id(did) != _dataset_id(qid):
                    self.set_aside += 1
                else:
                    raise DataError(f"{qrels_path}:{line}: qrel names candidate {did} of {qid}, which is not in "
                                    f"{self.local_pool}")
            self.relevant.append(kept)
        self.pool_size = len(pool_modality)

    def __len__(self) -> int:
        return len(self.queries)

    def pool_items(self, which: str = "local") -> Iterator[tuple[str, dict, str]]:
        """Stream ``(did, item, modality)`` of the local or the global pool."""
        if which not in ("local", "global"):
            raise ValueError(f"which must be 'local' or 'global', got {which!r}")
        return iter_pool_items(self.local_pool if which == "local" else self.global_pool, self.root)
