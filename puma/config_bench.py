"""The ``bench`` section of params.yaml, typed (read through :func:`puma.config.load_settings` as
``Settings.bench``; nothing here reads a file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from puma.config_base import Section as _Section


class BenchRun(_Section):
    """One pruned-vs-full encode measurement (``bench/prune_speed.py``, ``bench/memory.py``)."""

    arch: Literal["tiny", "2b", "7b"] = "tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(8, ge=1)
    k: int = Field(12, ge=1)
    k_sweep: list[int] = []
    kinds: list[Literal["text", "image", "image+text"]] = ["text", "image", "image+text"]
    image_hw: tuple[int, int] = (480, 640)
    min_pixels: int = Field(4 * 28 * 28, ge=28 * 28)
    max_pixels: int = Field(300 * 28 * 28, ge=28 * 28)
    repeats: int | None = Field(None, ge=1)  # None: bench.repeats
    threads: int | None = Field(None, ge=1)  # torch threads; None: torch's default (all cores)


class BenchSettings(_Section):
    warmup: int = Field(1, ge=0)
    repeats: int = Field(5, ge=1)
    min_time: float = Field(0.3, ge=0)
    template_tokens: int = Field(40, ge=2)
    text_tokens: int = Field(32, ge=1)
    attn: list[Literal["sdpa", "eager", "flash_attention_2"]] = ["sdpa", "flash_attention_2"]
    lora_r: int = Field(128, ge=1)
    global_pool_size: int = Field(5_600_000, ge=1)
    cpu_runs: list[BenchRun] = [BenchRun(k=4, k_sweep=[1, 2, 3, 5, 6, 7], max_pixels=16 * 28 * 28)]
    gpu_runs: list[BenchRun] = [BenchRun(arch="7b", dtype="bfloat16", batch_size=64)]
    memory_runs: list[BenchRun] = [BenchRun(k=4, max_pixels=16 * 28 * 28)]
    gpu_memory_runs: list[BenchRun] = [BenchRun(arch="7b", dtype="bfloat16", batch_size=8, kinds=["image+text"])]
