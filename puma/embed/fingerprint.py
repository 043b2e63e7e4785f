"""The identity of a checkpoint directory, recorded in every embedding manifest (resume check)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from puma.io import file_sha256


def model_fingerprint(model_dir: str | os.PathLike, full_hash_limit: int = 4 << 30) -> str:
    """Identity of a checkpoint dir: sha256 over config.json and the weight files.

    Weights are hashed in full up to ``full_hash_limit`` bytes in all (every model this project
    trains by default); above it (7B: 15 GB) only names, sizes and safetensors headers, to keep a
    resume check from reading the whole checkpoint.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    config = model_dir / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    weights = sorted(model_dir.glob("*.safetensors"))
    full = sum(w.stat().st_size for w in weights) <= full_hash_limit
    for w in weights:
        h.update(f"{w.name}:{w.stat().st_size}".encode())
        h.update(bytes.fromhex(file_sha256(w)) if full else _safetensors_header(w))
    return h.hexdigest()


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(min(n, 1 << 26))
