"""The 16 Table-1 columns of M-BEIR: (dataset, task) pairs with their file names, group and cut-off k.

A column is named ``<dataset>_task<N>`` exactly as in M-BEIR's file names (``mbeir_<column>_test.jsonl``).
Order, groups and k follow the paper's Table 1 and UniIR (REFERENCE.md sections 4 and 5).
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

INSTRUCTIONS_FILE = "instructions/query_instructions.tsv"
UNION_TRAIN_QUERIES = "query/union_train/mbeir_union_up_train.jsonl"
GLOBAL_TRAIN_POOL = "cand_pool/global/mbeir_union_train_cand_pool.jsonl"
GLOBAL_TEST_POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"


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

    @property
    def query_file(self) -> str:
        return f"query/test/mbeir_{self.name}_test.jsonl"

    @property
    def pool_file(self) -> str:
        # MSCOCO's local test pools are the 5k/25k test subsets, named with "_test_".
        if self.dataset == "MSCOCO":
            return f"cand_pool/local/mbeir_{self.name}_test_cand_pool.jsonl"
        return f"cand_pool/local/mbeir_{self.name}_cand_pool.jsonl"

    @property
    def qrels_file(self) -> str:
        return f"qrels/test/mbeir_{self.name}_test_qrels.txt"

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
