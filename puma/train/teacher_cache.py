"""The frozen full-depth teacher and its on-disk cache of ``[RET]`` states (decision 1).

The teacher is the original base model (``model.base``) at full depth, frozen, fed exactly the
student's inputs (same prompts, tokens, images, M-RoPE positions). Because it never changes, its
``[RET]`` states are computed once (``puma train teacher-cache``) and stage 1 reads them instead of
running the deep model every step. Layout of a cache directory::

    meta.json                  teacher fingerprint, hidden size, dtype, number of states
    index.json                 {row key: [shard, row]}
    shard-00000.safetensors    {"states": [n, H]}

Rows are keyed by :func:`puma.train.batching.row_keys`, a hash of the exact model input, so a cache
never answers for an input it was not built from. ``meta.json`` records each shard's sha256 and shape;
a shard is checked against them when it is first read (:meth:`TeacherCache.get`).

The directory is written atomically. With ``work`` (the stage's work directory,
:mod:`puma.workdir`, outside the DVC out) each shard is written there as soon as it is full,
atomically, followed by its record ``shard-NNNNN.json`` (row keys, sha256, shape; written last: it
marks the shard finished). A run killed part-way leaves the finished shards; the next run of the same
fingerprint verifies them (checksum and shape), keeps the verified prefix, skips the batches they
cover and computes only the rest, so the finished cache is byte-identical to an uninterrupted build.
A crash costs at most one shard of teacher forwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load, save

from puma.faults import fault_point
from puma.io import atomic_dir, write_bytes_atomic, write_json_atomic
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
        """Shard ``i``, checked against ``meta.json`` (sha256 and shape) when first read."""
        if i not in self._shards:
            path = self.root / shard_name(i)
            want = (self.meta.get("shard_files") or [None] * (i + 1))[i]
            if want is None:
                raise ValueError(f"{self.root}/meta.json: no record of {path.name} (a cache from before "
                                 "shard checksums); rebuild it with `puma train teacher-cache`")
            try:
                states = _verified_states(path, want)
            except ValueError as e:
                raise ValueError(f"{e}; rebuild the cache with `puma train teacher-cache`") from None
            self._shards[i] = states
        return self._shards[i]

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """Teacher ``[RET]`` states for ``keys``: ``[len(keys), H]``."""
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise KeyError(f"{self.root}: {len(missing)} of {len(keys)} inputs are not in the teacher cache "
                           f"(first {missing[0][:12]}); the data, prompts or processor changed since it was "
                           "built: rebuild it with `puma train teacher-cache`")
        return torch.stack([self._shard(s)[r] for s, r in (self.index[k] for k in keys)])


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _verified_states(path: Path, want: dict) -> torch.Tensor:
    """The ``states`` tensor of a shard file after checking its size, sha256 and shape against ``want``."""
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    size = path.stat().st_size
    if size != want["bytes"]:
        raise ValueError(f"{path}: {size} bytes, expected {want['bytes']} (truncated?)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise ValueError(f"{path}: sha256 does not match its record (corrupt)")
    states = load(data)["states"]
    if list(states.shape) != list(want["shape"]):
        raise ValueError(f"{path}: shape {list(states.shape)}, expected {want['shape']}")
    return states


def _resume_shards(parts: Path, log: Callable[[str], None]) -> tuple[list[list[str]], list[dict]]:
    """The finished shards in ``parts`` that verify, in order: ``(row keys per shard, file record per shard)``.

    The first shard that is missing its record or fails verification ends the prefix: it and every
    later shard file are removed (they are recomputed), and the reason is logged.
    """
    keys: list[list[str]] = []
    files: list[dict] = []
    i = 0
    while (parts / shard_name(i)).with_suffix(".json").is_file() or (parts / shard_name(i)).is_file():
        record_path = (parts / shard_name(i)).with_suffix(".json")
        try:
            record = json.loads(record_path.read_text())
            _verified_states(parts / shard_name(i), record["file"])
            if len(record["keys"]) != record["file"]["shape"][0]:
                raise ValueError(f"{record_path}: {len(record['keys'])} keys for {record['file']['shape'][0]} rows")
        except FileNotFoundError as e:
            reason = f"{e.filename}: missing (the shard was not finished)"
        except (ValueError, KeyError, TypeError, IndexError) as e:
            reason = str(e)
        else:
            keys.append(record["keys"])
            files.append(record["file"])
            i += 1
            continue
        log(f"teacher_cache: shard {i} skipped: {reason}; recomputing from shard {i}")
        break
    for stale in sorted(parts.glob("shard-*")):
        if int(stale.name[6:11]) >= len(keys):
            stale.unlink(missing_ok=True)
    return keys, files


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
    work: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``teacher`` over ``batches`` of ``(items, is_query)`` and write the cache to ``out`` atomically.

    Items are collated exactly as stage 1 collates them; inputs already cached (duplicates, and with
    ``work`` the inputs of the finished shards of an interrupted run) are skipped. ``batches`` must be
    the same sequence on every run (they are: the stage-1 data in order).
    """
    from tqdm.auto import tqdm

    vision_start = processor.tokenizer.convert_tokens_to_ids(VISION_START)
    with atomic_dir(out) as tmp:
        parts = Path(work) if work is not None else tmp / ".parts"
        parts.mkdir(parents=True, exist_ok=True)
        done_keys, files = _resume_shards(parts, log)
        index: dict[str, list[int]] = {k: [s, r] for s, ks in enumerate(done_keys) for r, k in enumerate(ks)}
        if work is not None:
            log(f"teacher_cache: resumed: {len(files)} finished shard(s) ({len(index)} states) verified in {parts}"
                if files else f"teacher_cache: no finished shard in {parts}; starting from shard 0")
        buffer: list[torch.Tensor] = []
        buffer_keys: list[str] = []
        n_shards = len(files)
        dim, dtype = (files[0]["shape"][1], files[0]["dtype"]) if files else (None, None)

        def flush() -> None:
            nonlocal n_shards, buffer, buffer_keys
            if buffer:
                path = parts / shard_name(n_shards)
                data = save({"states": torch.stack(buffer).contiguous()})
                write_bytes_atomic(path, data)
                rec = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                       "shape": [len(buffer), dim], "dtype": dtype}
                write_json_atomic(path.with_suffix(".json"), {"keys": buffer_keys, "file": rec})  # last: done
                files.append(rec)
                n_shards, buffer, buffer_keys = n_shards + 1, [], []
                fault_point("teacher_cache", n_shards)

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
                    buffer_keys.append(key)
                    if len(buffer) >= shard_size:
                        flush()
        flush()
        for i in range(n_shards):
            if work is None:
                os.replace(parts / shard_name(i), tmp / shard_name(i))
            else:  # keep the work copy until OUT is complete (a kill during the copy loses nothing)
                try:
                    os.link(parts / shard_name(i), tmp / shard_name(i))
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(parts / shard_name(i), tmp / shard_name(i))
        if work is None:
            for f in parts.iterdir():
                f.unlink()
            parts.rmdir()
        (tmp / "index.json").write_text(json.dumps(index))
        meta = {"fingerprint": fingerprint, "states": len(index), "shards": n_shards, "hidden_size": dim,
                "dtype": dtype, "shard_files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return Path(out)


__all__ = ["TeacherCache", "load_teacher", "shard_name", "teacher_fingerprint", "write_teacher_cache"]
