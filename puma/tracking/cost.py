"""The cost side of a run (no mlflow): parameters kept, forward FLOPs per sample, throughput, wall time.

These are logged as run metrics next to the recall, so MLflow's compare view shows accuracy against cost
for runs with different k or lambda.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from pathlib import Path

from puma.config import Settings

START_ENV = "PUMA_PIPELINE_START"  # unix seconds when the pipeline started (set by its caller), for wall time
# Keys of a stage's metrics.json that are cost figures (throughput, time, memory), copied onto the parent.
COST_KEY = re.compile(r"(samples_per_s|seconds|wall_s|peak_mem\w*|max_mem\w*|peak_\w*bytes)$")


def checkpoint_params(model_dir: str | os.PathLike) -> int:
    """Parameters stored in a checkpoint's ``*.safetensors`` files, read from their headers (no tensors)."""
    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                total += n
    return total


def model_cost(settings: Settings, model_dir: str | os.PathLike) -> dict[str, float]:
    """Parameters and FLOPs of the pruned checkpoint against the full-depth base (``model.base``).

    FLOPs are one forward of the longest sample the prompt settings allow, as :func:`puma.resources.stage_plan`
    counts it (template + text tokens, ``prompt.max_pixels`` of image). A figure that cannot be computed
    (e.g. no config for the base here) is left out, never guessed.
    """
    from puma.model.flops import forward_flops, load_config
    from puma.resources import TEMPLATE_TOKENS, TEXT_TOKENS, _config_for, _param_count

    out: dict[str, float] = {}
    params = checkpoint_params(model_dir)
    if params:
        out["model.params"] = float(params)
    config = load_config(model_dir)
    image_tokens = settings.prompt.max_pixels // (28 * 28)
    text_tokens = TEMPLATE_TOKENS + TEXT_TOKENS
    flops = forward_flops(config, image_tokens, text_tokens).total
    out["model.layers"] = float(config.text_config.num_hidden_layers)
    out["flops.per_sample"] = float(flops)
    try:
        base = _config_for(None, settings)
    except (FileNotFoundError, OSError, ValueError):
        return out
    full = forward_flops(base, image_tokens, text_tokens).total
    out["flops.full_per_sample"] = float(full)
    out["flops.kept_frac"] = flops / full
    if params:
        base_params = _param_count(base, base.text_config.num_hidden_layers)
        out["model.base_params"] = float(base_params)
        out["model.params_kept_frac"] = params / base_params
    return out


def stage_cost(stage: str, step_rows: list[dict[str, float]], metrics: dict[str, float]) -> dict[str, float]:
    """Cost figures of one stage: mean training samples/s of its step log, and the cost keys of its metrics."""
    out: dict[str, float] = {}
    sps = [r["samples_per_s"] for r in step_rows if r.get("samples_per_s", 0) > 0]
    if sps:
        out[f"{stage}.samples_per_s"] = sum(sps) / len(sps)
    for key, value in metrics.items():
        if COST_KEY.search(key):
            out[f"{stage}.{key}"] = value
    return out


def pipeline_start() -> float | None:
    """``$PUMA_PIPELINE_START`` (unix seconds, set by the flow and ``make run``), or None when unset."""
    raw = os.environ.get(START_ENV)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${START_ENV} must be unix seconds, got {raw!r}") from None


def wall_seconds(now: float | None = None) -> float | None:
    """Seconds since ``$PUMA_PIPELINE_START`` (unix seconds), or None when the caller did not set it."""
    start = pipeline_start()
    if start is None:
        return None
    return max(0.0, (time.time() if now is None else now) - start)
