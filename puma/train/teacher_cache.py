"""The frozen full-depth teacher and its on-disk cache of ``[RET]`` states (decision 1).

The teacher is the original base model (``model.base``) at full depth, frozen, fed exactly the
student's inputs (same prompts, tokens, images, M-RoPE positions). Because it never changes, its
``[RET]`` states are computed once (``puma train teacher-cache``) and stage 1 reads them instead of
running the deep model every step. Layout of a cache directory::

    meta.json                  teacher fingerprint, hidden size, dtype, number of states
    index.json                 {row key: [shard, row]}
    shard-00000.safetensors    {"states": [n, H]}

Rows are keyed by :func:`puma.train.batching.row_keys`, a hash of the exact model input, so a cache
never answers for an input it was not built from. The directory is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from puma.io import atomic_dir
from puma.model.encoding import collate, ret_states
from puma.model.prune import load_pruned, text_config_of
from puma.train.batching import row_keys

VISION_START = "<|vision_start|>"


def _embed_row(model_dir: str | Path, row: int) -> torch.Tensor:
    """Row ``row`` of the input embedding stored in a checkpoint directory (reads only that row)."""
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith("embed_tokens.weight"):
                    return st.get_slice(key)[row : row + 1][0].clone()
    raise FileNotFoundError(f"{model_dir}: no embed_tokens.weight in its safetensors files")


def load_teacher(base: str | Path, student_dir: str | Path, ret_id: int, dtype=None) -> torch.nn.Module:
    """The frozen full-depth base as a ``Qwen2VLModel``, with the student's initial ``[RET]`` row.

    The pruned student may have added ``[RET]`` to the vocabulary; the teacher gets the same row
    (resizing its embeddings if needed), so both models see the same input embeddings.
    """
    from transformers import Qwen2VLConfig

    depth = text_config_of(Qwen2VLConfig.from_pretrained(base)).num_hidden_layers
    teacher = load_pruned(base, depth, dtype=dtype)  # k = depth: the whole decoder, lm_head dropped
    row = _embed_row(student_dir, ret_id)
    if teacher.get_input_embeddings().weight.shape[0] <= ret_id:
        teacher.resize_token_embeddings(ret_id + 1, mean_resizing=False)
    with torch.no_grad():
        teacher.get_input_embeddings().weight[ret_id] = row.to(teacher.get_input_embeddings().weight.dtype)
    teacher.requires_grad_(False)
    return teacher.eval()


def teacher_fingerprint(base: str | Path, student_dir: str | Path, ret_id: int) -> dict[str, Any]:
    """What the cached states depend on besides the inputs: the base's files and the ``[RET]`` row."""
    base_path = Path(base)
    files = {}
    if base_path.is_dir():
        files = {f.name: f.stat().st_size for f in sorted(base_path.iterdir())
                 if f.suffix == ".safetensors" or f.name == "config.json"}
        files["config.json.sha256"] = hashlib.sha256((base_path / "config.json").read_bytes()).hexdigest()
    row = _embed_row(student_dir, ret_id).float().numpy().tobytes()
    return {"base": str(base), "files": files, "ret_id": int(ret_id), "ret_row_sha256": hashlib.sha256(row).hexdigest()}


class TeacherCache:
    """Read-only view of a cache directory; :meth:`get` returns teacher states for row keys."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.meta = json.loads((self.root / "meta.json").read_text())
            self.index: dict[str, list[int]] = json.loads((self.root / "index.json").read_text())
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.root}: not a teacher cache ({Path(e.filename).name} missing); "
                                    "build it with `puma train teacher-cache`") from None
        self._shards: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.index)

    def check(self, fingerprint: dict[str, Any]) -> None:
        """Fail when the cache was built for another teacher or ``[RET]`` row."""
        if self.meta.get("fingerprint") != fingerprint:
            raise ValueError(f"{self.root}/meta.json: teacher cache was built for a different teacher "
                             f"({self.meta.get('fingerprint')} != {fingerprint}); rebuild it with "
                             "`puma train teacher-cache`")

    def _shard(self, i: int) -> torch.Tensor:
        if i not in self._shards:
            self._shards[i] = load_file(str(self.root / f"shard-{i:05d}.safetensors"))["states"]
        return self._shards[i]

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """Teacher ``[RET]`` states for ``keys``: ``[len(keys), H]``."""
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise KeyError(f"{self.root}: {len(missing)} of {len(keys)} inputs are not in the teacher cache "
                           f"(first {missing[0][:12]}); the data, prompts or processor changed since it was "
                           "built: rebuild it with `puma train teacher-cache`")
        return torch.stack([self._shard(s)[r] for s, r in (self.index[k] for k in keys)])


@torch.no_grad()
def write_teacher_cache(
    out: str | Path,
    teacher: torch.nn.Module,
    processor,
    prompt_settings,
    batches: Iterable[tuple[list, bool]],
    fingerprint: dict[str, Any],
    shard_size: int = 4096,
    progress: bool = False,
) -> Path:
    """Run ``teacher`` over ``batches`` of ``(items, is_query)`` and write the cache to ``out`` atomically.

    Items are collated exactly as stage 1 collates them; inputs already cached (duplicates) are skipped.
    """
    from tqdm.auto import tqdm

    vision_start = processor.tokenizer.convert_tokens_to_ids(VISION_START)
    index: dict[str, list[int]] = {}
    buffer: list[torch.Tensor] = []
    n_shards, dim, dtype = 0, None, None
    with atomic_dir(out) as tmp:

        def flush() -> None:
            nonlocal n_shards, buffer
            if buffer:
                save_file({"states": torch.stack(buffer).contiguous()}, str(tmp / f"shard-{n_shards:05d}.safetensors"))
                n_shards, buffer = n_shards + 1, []

        for items, is_query in tqdm(batches, desc="teacher cache", disable=not progress):
            batch = collate(processor, items, is_query, prompt_settings)
            keys = row_keys(batch, vision_start)
            if all(k in index for k in keys):
                continue
            states = ret_states(teacher, batch.to(teacher.device)).cpu()  # [B, H]
            dim, dtype = states.shape[1], str(states.dtype).removeprefix("torch.")
            for key, state in zip(keys, states):
                if key not in index:
                    index[key] = [n_shards, len(buffer)]
                    buffer.append(state)
                    if len(buffer) >= shard_size:
                        flush()
        flush()
        (tmp / "index.json").write_text(json.dumps(index))
        meta = {"fingerprint": fingerprint, "states": len(index), "shards": n_shards, "hidden_size": dim,
                "dtype": dtype}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return Path(out)


__all__ = ["TeacherCache", "load_teacher", "teacher_fingerprint", "write_teacher_cache"]
