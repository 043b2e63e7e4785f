"""Shared fixtures: the embedded tiny checkpoint is built once per session (about 2 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Path to a tiny random Qwen2-VL checkpoint (8 layers, seed 0) with tokenizer and processor."""
    from puma.data.corpus import tokenizer_corpus
    from puma.model.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny", seed=0, corpus=tokenizer_corpus(0))


@pytest.fixture(scope="session")
def mbeir_mini(tmp_path_factory):
    """Root of a small MBEIR-mini (seed 0, scale 0.25: 6 test queries and ~20 candidates per column,
    192 union_train queries), built once per session (about 1 s)."""
    from puma.data.synth import synth_mbeir

    return synth_mbeir(tmp_path_factory.mktemp("mbeir") / "mbeir", seed=0, scale=0.25)


@pytest.fixture(scope="session")
def nli_mini(tmp_path_factory):
    """Path of a synthetic SimCSE-format NLI csv with 64 rows (seed 0)."""
    from puma.data.synth import synth_nli

    return synth_nli(tmp_path_factory.mktemp("nli") / "nli_for_simcse.csv", rows=64, seed=0)
