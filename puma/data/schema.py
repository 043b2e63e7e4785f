"""M-BEIR records (queries, candidates, qrels) and their parsing, with file:line errors.

The jsonl field names and the qrels layout are M-BEIR's (REFERENCE.md section 4)::

    query:     {"qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                "pos_cand_list", "neg_cand_list", "task_id"}
    candidate: {"did", "txt", "img_path", "modality", "src_content"}
    qrels:     "qid 0 did relevance task_id" per line, whitespace separated

Accepted as the real files have them (REFERENCE.md section 7): ``query_src_content`` / ``src_content``
null or absent; ``neg_cand_list`` absent (empty); ``task_id`` absent (``None``: the task is then the one
of the query modality and the positive's modality, :func:`puma.data.columns.task_of`, as UniIR derives
it), but a ``task_id`` whose query modality is not the line's is an error; ``pos_cand_list`` /
``neg_cand_list`` entries as id strings or ``{"did": id}`` objects (the dataset card's form).

Every check lives here once: :mod:`puma.data.validate` collects *all* problems of a dataset with these
functions, and the loaders below raise :class:`DataError` on the first bad line, before any output
is written by their callers. Missing text or image is ``null`` (an empty string counts as missing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath

from puma.data.columns import DATASET_IDS, TASKS, task_of
from puma.io import write_jsonl_atomic

MODALITIES = ("text", "image", "image,text")
ID_RE = re.compile(r"^(\d+):(\d+)$")


def modality_of(has_text: bool, has_image: bool) -> str:
    """M-BEIR's modality string for a record holding text and/or an image (the one owner of this rule)."""
    return "image,text" if has_text and has_image else "image" if has_image else "text"


KNOWN_DATASET_IDS = frozenset(DATASET_IDS.values())
KNOWN_TASK_IDS = frozenset(TASKS)


class DataError(ValueError):
    """A data file is malformed; the message starts with ``file:line:``."""


def _as_json(rec) -> dict:
    """A record's fields as a dict, in field order (what ``asdict`` gives, without its deep copies: the
    generator writes hundreds of thousands of records)."""
    return {f.name: getattr(rec, f.name) for f in fields(rec)}


@dataclass(frozen=True)
class Query:
    qid: str
    query_txt: str | None
    query_img_path: str | None
    query_modality: str
    query_src_content: str | None
    pos_cand_list: list[str] = field(default_factory=list)
    neg_cand_list: list[str] = field(default_factory=list)
    task_id: int | None = None  # None: absent from the line (derive it with columns.task_of)

    def to_json(self) -> dict:
        return _as_json(self)


@dataclass(frozen=True)
class Candidate:
    did: str
    txt: str | None
    img_path: str | None
    modality: str
    src_content: str | None

    def to_json(self) -> dict:
        return _as_json(self)


@dataclass(frozen=True)
class Qrel:
    qid: str
    did: str
    relevance: int
    task_id: int


# ---------------------------------------------------------------- field rules (return problem strings)


def id_problem(value: object, key: str) -> str | None:
    """``<dataset_id>:<n>`` with a known dataset id (0..9)."""
    if not isinstance(value, str):
        return f"{key} must be a string '<dataset_id>:<n>', got {type(value).__name__}"
    m = ID_RE.match(value)
    if not m:
        return f"{key} {value!r} is not shaped '<dataset_id>:<n>'"
    if int(m.group(1)) not in KNOWN_DATASET_IDS:
        return f"{key} {value!r} has unknown dataset id {m.group(1)} (M-BEIR has 0..9)"
    return None


def img_path_problem(value: str) -> str | None:
    """An ``img_path`` must be relative to the dataset root and stay inside it."""
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        return f"img_path {value!r} is absolute (must be relative to the dataset root)"
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        return f"img_path {value!r} contains '..' (must stay inside the dataset root)"
    return None


def _present(value: object) -> bool:
    return value is not None and value != ""


def _modality_problems(modality: object, txt: object, img: object, txt_key: str, img_key: str,
                       mod_key: str) -> list[str]:
    probs = []
    for key, val in ((txt_key, txt), (img_key, img)):
        if val is not None and not isinstance(val, str):
            probs.append(f"{key} must be a string or null, got {type(val).__name__}")
    if not isinstance(modality, str) or modality not in MODALITIES:
        probs.append(f"{mod_key} {modality!r} is not one of {', '.join(MODALITIES)}")
        return probs
    if probs:
        return probs
    want_txt, want_img = "text" in modality, "image" in modality
    if want_txt != _present(txt):
        probs.append(f"{mod_key} is {modality!r} but {txt_key} is {'missing' if want_txt else 'present'}")
    if want_img != _present(img):
        probs.append(f"{mod_key} is {modality!r} but {img_key} is {'missing' if want_img else 'present'}")
    if _present(img) and isinstance(img, str):
        p = img_path_problem(img)
        if p:
            probs.append(p)
    return probs


# Required fields; the others default (src_content -> None, neg_cand_list -> [], task_id -> None).
QUERY_KEYS = ("qid", "query_txt", "query_img_path", "query_modality", "pos_cand_list")
CANDIDATE_KEYS = ("did", "txt", "img_path", "modality")

# (id, text, image, modality, source) field names of the two record kinds.
_QUERY_FIELDS = ("qid", "query_txt", "query_img_path", "query_modality", "query_src_content")
_CANDIDATE_FIELDS = ("did", "txt", "img_path", "modality", "src_content")


def _record_problems(obj: object, kind: str, keys: tuple[str, ...], fields: tuple[str, ...]) -> list[str]:
    """Problems of the fields queries and candidates share (only the first kind found if fields are missing)."""
    if not isinstance(obj, dict):
        return [f"a {kind} line must be a JSON object, got {type(obj).__name__}"]
    missing = [f"missing field {k!r}" for k in keys if k not in obj]
    if missing:
        return missing
    id_key, txt_key, img_key, mod_key, src_key = fields
    probs = [p for p in [id_problem(obj[id_key], id_key)] if p]
    probs += _modality_problems(obj[mod_key], obj[txt_key], obj[img_key], txt_key, img_key, mod_key)
    # Unused by retrieval; M-BEIR stores a JSON string (often null), tolerate an inline object too.
    if obj.get(src_key) is not None and not isinstance(obj[src_key], (str, dict)):
        probs.append(f"{src_key} must be a string, an object or null")
    return probs


def query_problems(obj: object) -> list[str]:
    """Everything wrong with one parsed query line (empty list if it is valid)."""
    probs = _record_problems(obj, "query", QUERY_KEYS, _QUERY_FIELDS)
    if not isinstance(obj, dict) or any(p.startswith("missing field") for p in probs):
        return probs
    for key in ("pos_cand_list", "neg_cand_list"):
        val = obj.get(key, [])
        if not isinstance(val, list):
            probs.append(f"{key} must be a list of ids, got {type(val).__name__}")
            continue
        probs += [p for p in (id_problem(entry_id(e), f"{key} entry") for e in val) if p]
    task = obj.get("task_id")
    if task is None:
        return probs
    if not isinstance(task, int) or isinstance(task, bool):
        probs.append(f"task_id must be an integer, got {type(task).__name__}")
    elif task not in KNOWN_TASK_IDS:
        probs.append(f"task_id {task} is not an M-BEIR task (0-4, 6-8)")
    elif isinstance(obj["query_modality"], str) and TASKS[task][0] != obj["query_modality"]:
        probs.append(f"task_id {task} ({TASKS[task][0]} -> {TASKS[task][1]}) contradicts query_modality "
                     f"{obj['query_modality']!r}")
    return probs


def entry_id(entry: object) -> object:
    """The id of a ``pos_cand_list`` / ``neg_cand_list`` entry: the string itself or ``entry["did"]``."""
    return entry.get("did") if isinstance(entry, dict) else entry


def task_problem(task_id: int | None, query_modality: str, cand_modality: str) -> str | None:
    """A line's ``task_id`` against the task its modalities define (UniIR's derivation), or None if fine."""
    derived = task_of(query_modality, cand_modality)
    if derived is None:
        return f"no M-BEIR task has query modality {query_modality!r} and positive modality {cand_modality!r}"
    if task_id is not None and task_id != derived:
        return (f"task_id {task_id} contradicts the modalities {query_modality} -> {cand_modality} "
                f"(task {derived})")
    return None


def candidate_problems(obj: object) -> list[str]:
    """Everything wrong with one parsed candidate line (empty list if it is valid)."""
    return _record_problems(obj, "candidate", CANDIDATE_KEYS, _CANDIDATE_FIELDS)


def _none_if_empty(v: str | None) -> str | None:
    return v if _present(v) else None


def make_query(obj: dict) -> Query:
    """Build a :class:`Query` from a line that passed :func:`query_problems`."""
    return Query(obj["qid"], _none_if_empty(obj["query_txt"]), _none_if_empty(obj["query_img_path"]),
                 obj["query_modality"], obj.get("query_src_content"), [entry_id(e) for e in obj["pos_cand_list"]],
                 [entry_id(e) for e in obj.get("neg_cand_list", [])], obj.get("task_id"))


def make_candidate(obj: dict) -> Candidate:
    """Build a :class:`Candidate` from a line that passed :func:`candidate_problems`."""
    return Candidate(obj["did"], _none_if_empty(obj["txt"]), _none_if_empty(obj["img_path"]), obj["modality"],
                     obj.get("src_content"))


def parse_qrel_line(text: str) -> Qrel | str:
    """One ``qid 0 did relevance task_id`` line -> :class:`Qrel`, or a problem string."""
    parts = text.split()
    if len(parts) != 5:
        return f"a qrels line has 5 whitespace-separated fields (qid 0 did relevance task_id), got {len(parts)}"
    qid, _, did, rel, task = parts
    for p in (id_problem(qid, "qid"), id_problem(did, "did")):
        if p:
            return p
    try:
        relevance, task_id = int(rel), int(task)
    except ValueError:
        return f"relevance and task_id must be integers, got {rel!r} and {task!r}"
    if task_id not in KNOWN_TASK_IDS:
        return f"task_id {task_id} is not an M-BEIR task (0-4, 6-8)"
    return Qrel(qid, did, relevance, task_id)


# ---------------------------------------------------------------- file readers


def _nonblank_lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of the non-blank lines; a missing or empty file raises ``DataError``
    (an empty file is what a truncated download often looks like)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    seen = False
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                seen = True
                yield lineno, line
    if not seen:
        raise DataError(f"{path}:1: empty file (no {what})")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, parsed_object)``; a line that is not JSON raises ``DataError(file:line)``."""
    for lineno, line in _nonblank_lines(path, "records"):
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def _iter_records(path, problems_fn, make_fn, id_key, with_lines):
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        probs = problems_fn(obj)
        if probs:
            raise DataError(f"{path}:{lineno}: {probs[0]}")
        rid = obj[id_key]
        if rid in seen:
            raise DataError(f"{path}:{lineno}: duplicate {id_key} {rid!r} (first on line {seen[rid]})")
        seen[rid] = lineno
        yield (lineno, make_fn(obj)) if with_lines else make_fn(obj)


def iter_queries(path: str | Path, with_lines: bool = False) -> Iterator[Query]:
    """Stream the queries of an M-BEIR query jsonl; the first bad line raises ``DataError(file:line)``.

    ``with_lines=True`` yields ``(line_number, Query)`` so callers can name the line of a later problem.
    """
    return _iter_records(path, query_problems, make_query, "qid", with_lines)


def iter_candidates(path: str | Path, with_lines: bool = False) -> Iterator[Candidate]:
    """Stream the candidates of a pool jsonl (pools can hold millions: never materialised here)."""
    return _iter_records(path, candidate_problems, make_candidate, "did", with_lines)


def load_queries(path: str | Path) -> list[Query]:
    return list(iter_queries(path))


def load_candidates(path: str | Path) -> list[Candidate]:
    return list(iter_candidates(path))


def iter_qrels(path: str | Path) -> Iterator[tuple[int, Qrel | str]]:
    """``(line_number, Qrel or problem string)`` for every non-blank line of a qrels file."""
    for lineno, line in _nonblank_lines(path, "qrels"):
        yield lineno, parse_qrel_line(line)


def load_qrels_lines(path: str | Path) -> dict[str, dict[str, int]]:
    """qid -> {relevant did: its line} (relevance > 0); a bad line raises ``DataError(file:line)``."""
    out: dict[str, dict[str, int]] = {}
    for lineno, rec in iter_qrels(path):
        if isinstance(rec, str):
            raise DataError(f"{path}:{lineno}: {rec}")
        if rec.relevance > 0:
            out.setdefault(rec.qid, {}).setdefault(rec.did, lineno)
    return out


def load_qrels(path: str | Path) -> dict[str, set[str]]:
    """qid -> set of relevant dids (relevance > 0); a bad line raises ``DataError(file:line)``."""
    return {qid: set(dids) for qid, dids in load_qrels_lines(path).items()}


NLI_COLUMNS = ("sent0", "sent1", "hard_neg")


def scan_nli(path: str | Path) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    """Read a SimCSE NLI csv (header ``sent0,sent1[,hard_neg]``): the (sent0, sent1) pairs and *all*
    problems as ``(line, message)``. Only sent0 (query) and sent1 (positive) are used, as in the reference."""
    import csv

    path = Path(path)
    if not path.is_file():
        return [], [(0, "file not found")]
    pairs: list[tuple[str, str]] = []
    problems: list[tuple[int, str]] = []
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return [], [(1, "empty file (expected the header sent0,sent1,hard_neg)")]
        except csv.Error as e:
            return [], [(1, f"not valid CSV: {e}")]
        if [h.strip() for h in header[:2]] != ["sent0", "sent1"]:
            return [], [(1, f"header must start with sent0,sent1 (SimCSE's columns), got {','.join(header)!r}")]
        width = len(header)
        start = reader.line_num
        try:
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    problems.append((line, f"expected {width} fields ({','.join(header)}), got {len(row)}"))
                elif not row[0].strip() or not row[1].strip():
                    problems.append((line, "sent0 and sent1 must be non-empty"))
                else:
                    pairs.append((row[0], row[1]))
        except csv.Error as e:
            problems.append((reader.line_num, f"not valid CSV: {e}"))
    if not pairs and not problems:
        problems.append((start + 1, "no sentence pairs after the header"))
    return pairs, problems


# ---------------------------------------------------------------- items (what the encoders take)


def resolve_image(root: str | Path, img_path: str | None) -> str | None:
    """Absolute path of a record's image (``img_path`` is relative to the dataset root)."""
    if img_path is None:
        return None
    return str(Path(root).resolve() / img_path)


def query_item(query: Query, root: str | Path, instruction: str | None) -> dict:
    """The encoder item of a query: ``{"text", "image" (absolute path), "instruction"}``."""
    return {"text": query.query_txt, "image": resolve_image(root, query.query_img_path), "instruction": instruction}


def candidate_item(cand: Candidate, root: str | Path) -> dict:
    """The encoder item of a candidate (documents never carry an instruction)."""
    return {"text": cand.txt, "image": resolve_image(root, cand.img_path), "instruction": None}


def write_jsonl(path: str | Path, records) -> None:
    """Write records (dataclasses with ``to_json`` or dicts) as jsonl, atomically."""
    write_jsonl_atomic(path, (rec.to_json() if hasattr(rec, "to_json") else rec for rec in records))
