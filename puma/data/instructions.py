"""M-BEIR query instructions: the tsv, and a *seeded, recorded* choice of one phrasing per query.

``instructions/query_instructions.tsv`` (with a header) has one row per (dataset id, query modality,
candidate modality) and four phrasings. UniIR picks one at random with no seed, a documented source
of irreproducible numbers; here the choice is a pure function of (seed, qid) and is returned with its
index so evaluation can record it (REFERENCE.md decision 6). Columns, in UniIR's order::

    query_modality  cand_modality  dataset  dataset_id  prompt_1  prompt_2  prompt_3  prompt_4

Columns are found by their header names, as UniIR reads them, in any order, spelled as the real file
may spell them (case, spaces or hyphens for underscores, a byte-order mark, ``candidate_modality``,
``dataset id``, ``prompt 1`` / ``instruction_1`` ...); a header with none of the names falls back to
UniIR's positional order.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from puma.data.columns import DATASET_IDS
from puma.data.schema import MODALITIES, DataError
from puma.io import write_text_atomic

HEADER = ("query_modality", "cand_modality", "dataset", "dataset_id", "prompt_1", "prompt_2", "prompt_3",
          "prompt_4")
InstructionKey = tuple[int, str, str]  # (dataset_id, query_modality, cand_modality)

# Our own phrasings in M-BEIR's style (paper Table 8 shows one of each); written by `puma data synth`.
# Keyed (dataset, dataset id, query modality, candidate modality); the ids are columns.DATASET_IDS'.
PHRASINGS: dict[tuple[str, int, str, str], list[str]] = {
    ("VisualNews", DATASET_IDS["VisualNews"], "text", "image"): [
        "Based on the caption, provide the most fitting image for the news story.",
        "Find the news photo that goes with this headline.",
        "Retrieve the image that illustrates the following news caption.",
        "Show me the picture that this news caption describes.",
    ],
    ("VisualNews", DATASET_IDS["VisualNews"], "image", "text"): [
        "Based on the shown image, retrieve an appropriate news caption.",
        "Find the headline that belongs to this news photo.",
        "Retrieve a news caption describing the displayed image.",
        "Which news caption matches this picture?",
    ],
    ("MSCOCO", DATASET_IDS["MSCOCO"], "text", "image"): [
        "Show me an image that best captures the following common scene description.",
        "Find an everyday picture matching the description.",
        "Retrieve the image described by this caption.",
        "Which everyday image fits this caption best?",
    ],
    ("MSCOCO", DATASET_IDS["MSCOCO"], "image", "text"): [
        "Find an image caption describing the following everyday image.",
        "Retrieve the caption that describes this picture.",
        "Describe this everyday image with the best matching caption.",
        "Which caption fits the displayed scene?",
    ],
    ("Fashion200K", DATASET_IDS["Fashion200K"], "text", "image"): [
        "Based on the following fashion description, retrieve the best matching image.",
        "Find the product photo of the described garment.",
        "Retrieve a fashion image that fits this description.",
        "Show me the clothing item described below.",
    ],
    ("Fashion200K", DATASET_IDS["Fashion200K"], "image", "text"): [
        "Based on the displayed image, retrieve the corresponding fashion description.",
        "Find the product description of this garment.",
        "Retrieve the text describing this fashion item.",
        "Which description matches the clothing in the photo?",
    ],
    ("WebQA", DATASET_IDS["WebQA"], "text", "text"): [
        "Retrieve passages from Wikipedia that provide answers to the following question.",
        "Find a Wikipedia paragraph that answers this question.",
        "Which passage answers the question below?",
        "Retrieve a text snippet containing the answer to this question.",
    ],
    ("WebQA", DATASET_IDS["WebQA"], "text", "image,text"): [
        "Find a Wikipedia image that answers this question.",
        "Retrieve an image with its caption that answers the question.",
        "Which captioned Wikipedia picture answers this question?",
        "Find the image and description that answer the question below.",
    ],
    ("EDIS", DATASET_IDS["EDIS"], "text", "image,text"): [
        "Identify the news photo for the given caption.",
        "Find the news image and headline matching this description.",
        "Retrieve a captioned news picture for the following text.",
        "Which news photo with headline fits this caption?",
    ],
    ("NIGHTS", DATASET_IDS["NIGHTS"], "image", "image"): [
        "Which everyday image is the most similar to the reference image?",
        "Find the picture that looks most like this one.",
        "Retrieve the image most similar to the given image.",
        "Find a near copy of the displayed image.",
    ],
    ("OVEN", DATASET_IDS["OVEN"], "image,text", "text"): [
        "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
        "Find the entity description that answers the question about this picture.",
        "Which Wikipedia passage names the entity shown in the image?",
        "Retrieve the text about the entity in this image that answers the question.",
    ],
    ("OVEN", DATASET_IDS["OVEN"], "image,text", "image,text"): [
        "Determine the Wikipedia image-snippet pair that clarifies the entity in this picture.",
        "Find the entity page image and text for the thing shown here.",
        "Retrieve the captioned Wikipedia picture of the entity in this image.",
        "Which image and description identify the entity in the picture?",
    ],
    ("InfoSeek", DATASET_IDS["InfoSeek"], "image,text", "text"): [
        "You have to find a Wikipedia segment that answers the question about the displayed image.",
        "Retrieve the passage that answers this question about the picture.",
        "Find a text snippet answering the question on the shown image.",
        "Which Wikipedia segment answers the question about this image?",
    ],
    ("InfoSeek", DATASET_IDS["InfoSeek"], "image,text", "image,text"): [
        "Determine the Wikipedia image-snippet pair that matches my question about this image.",
        "Find the captioned image that answers the question about this picture.",
        "Retrieve an image and passage that answer my question on the displayed image.",
        "Which image-snippet pair answers the question about this picture?",
    ],
    ("FashionIQ", DATASET_IDS["FashionIQ"], "image,text", "image"): [
        "With the reference image and modification instructions, find the described fashion look.",
        "Find the garment that looks like this one after the requested change.",
        "Retrieve the fashion image obtained by applying the edit to the reference.",
        "Show me this clothing item modified as described.",
    ],
    ("CIRR", DATASET_IDS["CIRR"], "image,text", "image"): [
        "I'm looking for a similar everyday image with the described changes.",
        "Find the picture that shows the reference image after the modification.",
        "Retrieve the image matching the reference with the described change.",
        "Apply the change to this image and find the result.",
    ],
}


def table_rows() -> list[list[str]]:
    """The tsv rows (header first) for :data:`PHRASINGS`, in a fixed order."""
    rows = [list(HEADER)]
    for (name, did, qmod, cmod), prompts in PHRASINGS.items():
        rows.append([qmod, cmod, name, str(did), *prompts])
    return rows


def write_instructions(path: str | Path) -> None:
    """Write MBEIR-mini's ``query_instructions.tsv`` atomically."""
    write_text_atomic(path, "".join("\t".join(r) + "\n" for r in table_rows()))


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lstrip("\ufeff").lower()).strip("_")


_QUERY_NAMES = {"query_modality", "query_modal", "qmodality", "q_modality", "query_mode"}
_CAND_NAMES = {"cand_modality", "candidate_modality", "cand_modal", "pool_modality", "doc_modality", "c_modality",
               "target_modality"}
_ID_NAMES = {"dataset_id", "datasetid", "dataset_idx", "data_id", "dataset_index"}
_PROMPT_RE = re.compile(r"^(prompt|instruction|query_instruction)_?\d*$")


def _header_columns(header: list[str]) -> tuple[int, int, int, list[int]]:
    """Indices of (query modality, candidate modality, dataset id, prompts), found by name in the header
    so a reordered or differently spelled tsv still parses; UniIR's positional order (0, 1, 3, 4..) when
    the names are not recognised."""
    names = [_norm(h) for h in header]

    def find(accepted: set[str]) -> int | None:
        hits = [i for i, n in enumerate(names) if n in accepted]
        return hits[0] if len(hits) == 1 else None

    found = (find(_QUERY_NAMES), find(_CAND_NAMES), find(_ID_NAMES))
    if None in found or len(set(found)) != 3:
        return 0, 1, 3, list(range(4, 256))  # every field after dataset_id
    prompts = [i for i, n in enumerate(names) if _PROMPT_RE.match(n)]
    if not prompts:  # prompt columns unnamed: every column that is not a key or the dataset name
        prompts = [i for i, n in enumerate(names) if i not in found and n not in ("dataset", "dataset_name")]
    return found[0], found[1], found[2], prompts


def parse_instructions(path: str | Path) -> tuple[dict[InstructionKey, list[str]], list[tuple[int, str]]]:
    """Parse the tsv, returning the table and *all* problems as ``(line, message)`` (for validation)."""
    path = Path(path)
    if not path.is_file():
        return {}, [(0, "file not found")]
    table: dict[InstructionKey, list[str]] = {}
    where: dict[InstructionKey, int] = {}
    problems: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip():
        return {}, [(1, "empty file (expected a header and one row per (dataset, modality pair))")]
    *cols, prompt_cols = _header_columns(lines[0].rstrip("\r").split("\t"))
    need = max(*cols, min(prompt_cols, default=4)) + 1
    for lineno, line in enumerate(lines[1:], 2):  # line 1 is the header
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) < need:
            problems.append((lineno, (f"expected >= {need} tab-separated fields (query_modality, cand_modality, "
                                      f"dataset, dataset_id, prompts...), got {len(parts)}")))
            continue
        qmod, cmod, did = (parts[i].strip() for i in cols)
        bad = [m for m in (qmod, cmod) if m not in MODALITIES]
        if bad:
            problems.append((lineno, f"unknown modality {bad[0]!r} (one of {', '.join(MODALITIES)})"))
            continue
        if not did.strip().isdigit():
            problems.append((lineno, f"dataset_id must be an integer, got {did!r}"))
            continue
        prompts = [parts[i].strip() for i in prompt_cols if i < len(parts) and parts[i].strip()]
        if not prompts:
            problems.append((lineno, "no instruction phrasing in the row"))
            continue
        key = (int(did), qmod, cmod)
        if key in table:
            problems.append((lineno, f"duplicate row for {key} (first on line {where[key]})"))
            continue
        table[key], where[key] = prompts, lineno
    if not table and not problems:
        problems.append((1, "no instruction rows after the header"))
    return table, problems


def load_instructions(path: str | Path) -> dict[InstructionKey, list[str]]:
    """(dataset_id, query_modality, cand_modality) -> phrasings; raises ``DataError(file:line)``."""
    table, problems = parse_instructions(path)
    if problems:
        line, msg = problems[0]
        raise DataError(f"{path}:{line}: {msg}" if line else f"{path}: {msg}")
    return table


def choose_instruction(table: dict[InstructionKey, list[str]], qid: str, dataset_id: int, query_modality: str,
                       cand_modality: str, seed: int | str) -> tuple[int, str]:
    """Pick one phrasing for a query, as ``(index, text)``: a pure function of ``(seed, qid)``.

    sha256 rather than ``hash()`` so the choice is the same in every process and Python version.
    """
    key = (dataset_id, query_modality, cand_modality)
    if key not in table:
        raise DataError(f"no instruction row for dataset {dataset_id}, {query_modality} -> {cand_modality}")
    prompts = table[key]
    digest = hashlib.sha256(f"{seed}:{qid}".encode()).digest()
    index = int.from_bytes(digest[:8], "big") % len(prompts)
    return index, prompts[index]
