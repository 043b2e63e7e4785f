"""Resource plan of a long stage, printed before it starts: memory per process, and a fit check.

For the active settings and the stage's model (its ``config.json``, or a bundled 2B/7B config), per
process: parameter count and weight bytes (from the config built on the meta device: no memory),
LoRA trainable parameters, gradient + AdamW state bytes (fp32 moments; a fp32 master copy under
mixed precision; ZeRO-2 splits gradients and optimizer state over the processes), and an activation
estimate for one micro-batch (query + candidate batches, the paper's image budget as the longest
sequence). The estimate is an upper-bound style rule of thumb, not a measurement:

- without gradient checkpointing, per kept layer and token: ``(18 h + 4 i + 2 kv) * b`` bytes saved for
  backward (projections' inputs/outputs, SwiGLU intermediates, norms; ``b`` = bytes of the dtype) plus
  the attention scores ``heads * S`` per token when the attention is not fused (eager);
- with checkpointing: the layer inputs (``h * b`` per layer and token) plus one layer's working set.

The fit check compares the total with the device found: free CUDA memory of device 0, else the host's
available RAM (``/proc/meminfo``). A plan that does not fit raises :class:`ResourceError` before any
weight is loaded; ``PUMA_RESOURCE_CHECK=0`` turns the check into a warning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from puma.config import Settings

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# Longest prompt around the content (chat template + instruction + suffix + [RET]) and its text.
TEMPLATE_TOKENS, TEXT_TOKENS = 60, 64
HEADROOM = 1.10  # allocator fragmentation, CUDA context, library buffers


class ResourceError(RuntimeError):
    """The stage will not fit the device it found."""


def _config_for(model: str | os.PathLike | None, settings: Settings):
    from puma.model.flops import load_config
    from puma.profiles import bundled_arch

    for cand in (model, settings.model.base):
        if cand is None:
            continue
        if Path(cand, "config.json").is_file():
            return load_config(cand)
        if bundled_arch(str(cand)):
            return load_config(bundled_arch(str(cand)))
    raise FileNotFoundError(f"no config for {model} or {settings.model.base}")


def _param_count(config, layers: int) -> int:
    import copy

    import torch
    from transformers import Qwen2VLModel

    from puma.model.prune import prune_config

    cfg = copy.deepcopy(config)
    if layers < cfg.text_config.num_hidden_layers:
        prune_config(cfg, layers)
    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2VLModel(cfg).parameters())


def lora_params(text_config, layers: int, r: int) -> int:
    """LoRA A + B parameters on q/k/v/o/gate/up/down of ``layers`` decoder layers."""
    t = text_config
    h, inter = t.hidden_size, t.intermediate_size
    head_dim = getattr(t, "head_dim", None) or h // t.num_attention_heads
    q, kv = t.num_attention_heads * head_dim, t.num_key_value_heads * head_dim
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]
    return layers * sum(r * (i + o) for i, o in shapes)


def stage_plan(settings: Settings, stage: str, model: str | os.PathLike | None = None) -> dict[str, Any]:
    """The plan of ``stage`` (``teacher-cache``, ``stage1``, ``stage2``) per process, in bytes and counts."""
    from puma.model.flops import forward_flops

    config = _config_for(model, settings)
    t = config.text_config
    depth = t.num_hidden_layers
    b = DTYPE_BYTES[settings.model.dtype]
    rt = settings.runtime
    world = rt.num_processes
    seq = TEMPLATE_TOKENS + TEXT_TOKENS + settings.prompt.max_pixels // (28 * 28)
    h, inter = t.hidden_size, t.intermediate_size
    head_dim = getattr(t, "head_dim", None) or h // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    plan: dict[str, Any] = {"stage": stage, "model": str(model or settings.model.base), "dtype": settings.model.dtype,
                            "processes": world, "longest_sequence": seq}
    if stage == "teacher-cache":
        # The frozen full-depth teacher (model.base), inference only, batch embed.batch_size.
        full = _config_for(None, settings)
        layers = full.text_config.num_hidden_layers
        params = _param_count(full, layers)
        batch = settings.embed.batch_size
        act = batch * seq * (4 * full.text_config.hidden_size + 2 * full.text_config.intermediate_size) * b
        plan.update(layers=layers, batch_per_process=batch, params=params, weights=params * b, trainable=0,
                    gradients=0, optimizer=0, activations=act)
        flops = forward_flops(full, seq - TEMPLATE_TOKENS - TEXT_TOKENS, TEMPLATE_TOKENS + TEXT_TOKENS)
    else:
        s = getattr(settings, stage)
        layers = min(depth, settings.model.prune_layers)  # a pruned checkpoint, or the base before pruning
        params = _param_count(config, layers)
        trainable = lora_params(t, layers, s.lora_r) + (h if settings.model.ret_trainable else 0)
        shard = world if rt.deepspeed else 1  # ZeRO-2: gradients + optimizer state partitioned
        mixed = rt.precision != "no" and settings.model.dtype != "float32"
        grads = trainable * b // shard
        optim = trainable * (8 + (4 if mixed else 0)) // shard
        samples = 2 * s.batch_size  # query + candidate batches
        per_token_layer = (18 * h + 4 * inter + 2 * kv) * b
        if settings.model.attn_implementation == "eager":
            per_token_layer += t.num_attention_heads * seq * b
        if rt.gradient_checkpointing:
            act = samples * seq * (layers * h * b + per_token_layer)
        else:
            act = samples * seq * layers * per_token_layer
        plan.update(layers=layers, batch_per_process=s.batch_size, params=params, weights=params * b,
                    trainable=trainable, gradients=grads, optimizer=optim, activations=act,
                    gradient_checkpointing=rt.gradient_checkpointing, zero2=rt.deepspeed)
        flops = forward_flops(config, seq - TEMPLATE_TOKENS - TEXT_TOKENS, TEMPLATE_TOKENS + TEXT_TOKENS)
    plan["forward_tflops_per_sample"] = round(flops.total / 1e12, 4)
    plan["total"] = int(HEADROOM * (plan["weights"] + plan["gradients"] + plan["optimizer"] + plan["activations"]))
    return plan


def device_memory() -> tuple[str, int]:
    """(``"cuda:0 <name>"`` or ``"cpu"``, bytes available to one process)."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        return f"cuda:0 {torch.cuda.get_device_name(0)}", int(free)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return "cpu (host RAM)", int(line.split()[1]) * 1024
    return "cpu (host RAM)", 0


def peak_memory() -> dict[str, int]:
    """This process's peak memory so far: ``peak_rss_bytes`` (VmHWM) and, once CUDA ran, ``peak_gpu_bytes``."""
    import torch

    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").exists() else []:
        if line.startswith("VmHWM:"):
            out["peak_rss_bytes"] = int(line.split()[1]) * 1024
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def format_plan(plan: dict[str, Any]) -> str:
    def g(n: int) -> str:
        return f"{n / GIB:.2f} GiB"

    head = (f"resource plan {plan['stage']}: {plan['model']} ({plan['layers']} layers, {plan['dtype']}), "
            f"{plan['processes']} process(es), batch {plan['batch_per_process']}/process, "
            f"longest sequence {plan['longest_sequence']} tokens")
    memory = (f"  per process: weights {g(plan['weights'])}, gradients {g(plan['gradients'])}, "
              f"optimizer {g(plan['optimizer'])}, activations {g(plan['activations'])} (estimate); "
              f"total with {int((HEADROOM - 1) * 100)}% headroom {g(plan['total'])}")
    lines = [head, f"  parameters {plan['params'] / 1e9:.3f}B (trainable {plan['trainable'] / 1e6:.1f}M)", memory]
    if "device" in plan:
        lines.append(f"  device {plan['device']}: {g(plan['available'])} available -> "
                     f"{'fits' if plan['fits'] else 'DOES NOT FIT'}")
    return "\n".join(lines)


def preflight(settings: Settings, stage: str, model: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, echo=print) -> dict[str, Any]:
    """Plan ``stage``, print it, write ``OUT/resource_plan.json``, and raise when it will not fit."""
    try:
        plan = stage_plan(settings, stage, model)
    except FileNotFoundError as e:  # the stage itself reports a missing model better; nothing to plan
        echo(f"resource plan {stage}: skipped, no model config ({e})")
        return {}
    plan["device"], plan["available"] = device_memory()
    plan["fits"] = plan["total"] <= plan["available"]
    if int(os.environ.get("RANK", "0")) == 0:
        echo(format_plan(plan))
        if out is not None:
            write_plan(plan, out)
    if not plan["fits"]:
        msg = (f"{stage} needs about {plan['total'] / GIB:.1f} GiB per process but {plan['device']} has "
               f"{plan['available'] / GIB:.1f} GiB available: lower {stage if stage != 'teacher-cache' else 'embed'}"
               f".batch_size, enable runtime.gradient_checkpointing / runtime.deepspeed, or use more processes")
        if os.environ.get("PUMA_RESOURCE_CHECK", "1") != "0":
            raise ResourceError(msg + " (PUMA_RESOURCE_CHECK=0 runs anyway)")
        echo(f"warning: {msg}")
    return plan


# What the machine had free when the stage started: printed, not stored. In OUT/resource_plan.json (part
# of a DVC out) it would make two identical runs' outs differ, and re-run every stage downstream.
MACHINE_STATE = ("available", "fits")


def write_plan(plan: dict[str, Any], out: str | os.PathLike) -> None:
    """``OUT/resource_plan.json``: the plan without :data:`MACHINE_STATE` (a function of params and model)."""
    from puma.io import write_json_atomic

    write_json_atomic(Path(out) / "resource_plan.json", {k: v for k, v in plan.items() if k not in MACHINE_STATE})
