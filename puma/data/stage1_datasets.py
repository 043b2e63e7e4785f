"""The stage-1 training sets, registered by name (params ``stage1.dataset``; default ``nli``).

A stage-1 dataset is one entry of :data:`STAGE1_DATASETS`: where its file is (a params key), how to
load it as ``{"query": item, "positive": item}`` examples, how to check it, and how ``puma data
prepare <name>`` makes it (``data.source``: synth generates it, hub downloads it). Adding one is its
entry here plus its params; ``train.stage1``, the teacher cache and ``puma data`` read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Stage1Dataset:
    path: Callable[[Any], Path]  # DataSettings -> the dataset's file
    load: Callable[[Path], Any]  # file -> a dataset of {"query": item, "positive": item}
    check: Callable[[Path], tuple[list, dict[str, int]]]  # file -> (problems, counts), as puma.data.validate
    synth: Callable[[Path, Any], Path]  # (file, DataSettings) -> file, for data.source: synth
    download: Callable[[Path, Callable[[str], None]], Path]  # (file, log) -> file, for data.source: hub


def _load_nli(path: Path):
    from puma.data.datasets import NLIPairs

    return NLIPairs(path)


def _check_nli(path: Path):
    from puma.data.validate import validate_nli

    return validate_nli(path)


def _synth_nli(path: Path, data) -> Path:
    from puma.data.synth import synth_nli

    return synth_nli(path, rows=data.nli_rows, seed=data.synth_seed)


def _download_nli(path: Path, log) -> Path:
    from puma.data.download import download_nli

    return download_nli(path, log=log)


STAGE1_DATASETS: dict[str, Stage1Dataset] = {
    # SimCSE's NLI csv (sent0 -> sent1), as the paper (data.nli_path, data.nli_rows for MBEIR-mini's).
    "nli": Stage1Dataset(path=lambda data: data.nli_path, load=_load_nli, check=_check_nli, synth=_synth_nli,
                         download=_download_nli),
}


def stage1_dataset(name: str) -> Stage1Dataset:
    """The registered stage-1 dataset ``name``; a clear error lists the known ones."""
    try:
        return STAGE1_DATASETS[name]
    except KeyError:
        raise KeyError(f"stage1.dataset: unknown stage-1 dataset {name!r}; known: "
                       f"{', '.join(STAGE1_DATASETS)}") from None
