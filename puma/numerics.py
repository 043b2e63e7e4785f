"""Which floating-point code paths this process computes with: the facts a result's round-off depends on.

The embedded default's training is chaotic in round-off: the same commit, params and data gave a pipeline
Recall avg of 16.1 on one 2-core machine and 8.9 on another (AVX-512), and 4.4 on the second with the
AVX2 code paths forced (docs/results/reproducibility.md). PyTorch picks its vectorised kernels (ATen's CPU
capability), MKL its GEMM kernels and oneDNN its ISA from the CPU it finds, so two machines differ from the
first step on; the thread count changes reduction orders too. Every pretraining record and every pipeline
run in MLflow carries :func:`numerics`, so two numbers can be told apart by where they were computed.

The environment variables that pin the paths (set before torch starts; :data:`PIN_ENV`): ``ATEN_CPU_CAPABILITY``
(``default`` / ``avx2`` / ``avx512``), ``MKL_CBWR`` (``AVX2``, ``COMPATIBLE``, ...) and ``ONEDNN_MAX_CPU_ISA``.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from typing import Any

PIN_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`, else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def numerics() -> dict[str, Any]:
    """This process's numerics: torch version, ATen CPU capability (the vector ISA its kernels use), intra-op
    threads, CUDA device (if any), the CPU model, and the pinning variables that are set."""
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    out["pins"] = {k: os.environ[k] for k in PIN_ENV if os.environ.get(k)}
    return out


def numerics_tags(record: dict[str, Any] | None = None) -> dict[str, str]:
    """:func:`numerics` (or a recorded one) as flat string tags ``numerics.<key>`` (MLflow): the machine's
    facts, not ``threads`` (the logging process's own count says nothing of the stages that trained)."""
    record = numerics() if record is None else record
    tags = {f"numerics.{k}": str(v) for k, v in record.items() if k not in ("pins", "threads") and v is not None}
    tags.update({f"numerics.pin.{k}": v for k, v in (record.get("pins") or {}).items()})
    return tags
