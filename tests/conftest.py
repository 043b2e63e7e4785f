"""Shared fixtures: the embedded tiny checkpoint is built once per session (about 2 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Path to a tiny random Qwen2-VL checkpoint (8 layers, seed 0) with tokenizer and processor."""
    from puma.model.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny", seed=0)
