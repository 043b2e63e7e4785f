"""The 16 Table-1 columns of M-BEIR: (dataset, task) pairs with their file names, group and cut-off k.

A column is named ``<dataset>_task<N>`` exactly as in M-BEIR's file names (``mbeir_<column>_test.jsonl``).
Order, groups and k follow the paper's Table 1 and UniIR (REFERENCE.md sections 4 and 5). Every M-BEIR
file name is derived here, per split (``val`` or ``test`` for a column; ``train`` files are per dataset,
REFERENCE.md section 7), and so are the dataset ids and the task of a (query, candidate) modality pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puma.config import EvaluateSettings

# Dataset name -> M-BEIR dataset id (the prefix of every qid / did).
DATASET_IDS = {
    "VisualNews": 0, "Fashion200K": 1, "WebQA": 2, "EDIS": 3, "NIGHTS": 4,
    "OVEN": 5, "InfoSeek": 6, "FashionIQ": 7, "CIRR": 8, "MSCOCO": 9,
}
DATASET_NAMES = {v: k for k, v in DATASET_IDS.items()}
# Task id -> (query modality, candidate modality). Task 5 is unused by M-BEIR.
TASKS = {
    0: ("text", "image"), 1: ("text", "text"), 2: ("text", "image,text"), 3: ("image", "text"),
    4: ("image", "image"), 6: ("image,text", "text"), 7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}

TASK_OF_MODALITIES = {mods: task for task, mods in TASKS.items()}

INSTRUCTIONS_FILE = "instructions/query_instructions.tsv"
UNION_TRAIN_QUERIES = "query/union_train/mbeir_union_up_train.jsonl"
UNION_VAL_QUERIES = "query/union_val/mbeir_union_val.jsonl"
EVAL_SPLITS = ("val", "test")  # the splits with qrels and local pools
SPLITS = ("train", *EVAL_SPLITS)


def global_pool_file(split: str) -> str:
    """``cand_pool/global/mbeir_union_<split>_cand_pool.jsonl`` (train, val or test)."""
    if split not in SPLITS:
        raise ValueError(f"unknown M-BEIR split {split!r}; one of {', '.join(SPLITS)}")
    return f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl"


GLOBAL_TRAIN_POOL = global_pool_file("train")
GLOBAL_VAL_POOL = global_pool_file("val")
GLOBAL_TEST_POOL = global_pool_file("test")


def train_query_file(dataset: str) -> str:
    """A dataset's train queries, ``query/train/mbeir_<dataset>_train.jsonl`` (all its tasks in one file)."""
    return f"query/train/mbeir_{dataset.lower()}_train.jsonl"


def task_of(query_modality: str, cand_modality: str) -> int | None:
    """The M-BEIR task of a (query modality, positive candidate modality) pair, as UniIR derives it;
    None if no task has that pair."""
    return TASK_OF_MODALITIES.get((query_modality, cand_modality))


def _eval_split(split: str) -> str:
    if split not in EVAL_SPLITS:
        raise ValueError(f"a column has {' and '.join(EVAL_SPLITS)} files, not {split!r}")
    return split


# Table 1's column groups, in the paper's order; a column's ``group`` is one of these.
GROUP_NAMES = ("single", "mixed", "multi")


@dataclass(frozen=True)
class Column:
    """One Table-1 column. Paths are relative to the M-BEIR root."""

    dataset: str  # M-BEIR dataset name, e.g. "VisualNews"
    task_id: int
    group: str  # one of GROUP_NAMES

    @property
    def dataset_id(self) -> int:
        return DATASET_IDS[self.dataset]

    @property
    def name(self) -> str:
        """``<dataset>_task<N>`` in lower case, e.g. ``fashioniq_task7`` (the metrics key)."""
        return f"{self.dataset.lower()}_task{self.task_id}"

    @property
    def query_modality(self) -> str:
        return TASKS[self.task_id][0]

    @property
    def cand_modality(self) -> str:
        return TASKS[self.task_id][1]

    def query_file_for(self, split: str) -> str:
        """``query/<split>/mbeir_<column>_<split>.jsonl`` (split: val or test)."""
        split = _eval_split(split)
        return f"query/{split}/mbeir_{self.name}_{split}.jsonl"

    def pool_file_for(self, split: str) -> str:
        """The local pool searched by the split's queries: one file for val and test, except MSCOCO,
        whose test pools are the 5k/25k test subsets, named with ``_test_``."""
        if _eval_split(split) == "test" and self.dataset == "MSCOCO":
            return f"cand_pool/local/mbeir_{self.name}_test_cand_pool.jsonl"
        return f"cand_pool/local/mbeir_{self.name}_cand_pool.jsonl"

    def qrels_file_for(self, split: str) -> str:
        split = _eval_split(split)
        return f"qrels/{split}/mbeir_{self.name}_{split}_qrels.txt"

    def files(self, split: str) -> tuple[str, str, str]:
        """(query file, local pool, qrels) of the split."""
        return self.query_file_for(split), self.pool_file_for(split), self.qrels_file_for(split)

    # The test split's files (what Table 1 reports).
    @property
    def query_file(self) -> str:
        return self.query_file_for("test")

    @property
    def pool_file(self) -> str:
        return self.pool_file_for("test")

    @property
    def qrels_file(self) -> str:
        return self.qrels_file_for("test")

    def k(self, evaluate: EvaluateSettings) -> int:
        """Recall cut-off from params (``evaluate.k_for``): 10 for Fashion200K / FashionIQ, else 5."""
        return evaluate.k_for(self.name)


# Paper Table 1 order.
TABLE1_COLUMNS: tuple[Column, ...] = (
    Column("VisualNews", 0, "single"),
    Column("MSCOCO", 0, "single"),
    Column("Fashion200K", 0, "single"),
    Column("WebQA", 1, "single"),
    Column("VisualNews", 3, "single"),
    Column("MSCOCO", 3, "single"),
    Column("Fashion200K", 3, "single"),
    Column("NIGHTS", 4, "single"),
    Column("EDIS", 2, "mixed"),
    Column("WebQA", 2, "mixed"),
    Column("OVEN", 6, "mixed"),
    Column("InfoSeek", 6, "mixed"),
    Column("FashionIQ", 7, "mixed"),
    Column("CIRR", 7, "mixed"),
    Column("OVEN", 8, "multi"),
    Column("InfoSeek", 8, "multi"),
)
COLUMNS_BY_NAME = {c.name: c for c in TABLE1_COLUMNS}
GROUPS = {c.name: c.group for c in TABLE1_COLUMNS}


def column(name: str) -> Column:
    """The column called ``name`` (``visualnews_task0`` ...); a clear error lists the valid names."""
    try:
        return COLUMNS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown M-BEIR column {name!r}; known: {', '.join(COLUMNS_BY_NAME)}") from None
