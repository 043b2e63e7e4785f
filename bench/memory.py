"""Peak memory of encode and of a LoRA training step, full-depth vs pruned (``bench.memory_runs``).

On a CUDA machine ``bench.gpu_memory_runs`` are measured instead.

Each measurement runs in a fresh child process (peak RSS only grows, so sides cannot share one):
the child builds the model with random weights, runs the phase, and reports its peak resident set
(``VmHWM``) on CPU, or ``torch.cuda.max_memory_allocated`` on a GPU. The full side is the
full-depth *retriever* (``prune_layers(model, depth)``: no ``lm_head``), the pruned side keeps ``k``
layers; the dropped weights are never written, so they are never resident.

The training step is stage 1's student step without the teacher: LoRA (``bench.lora_r`` on 2B/7B,
``stage1.lora_r`` on the tiny) on the decoder projections, query and candidate batches through the
model, InfoNCE (Eq. 3), backward, AdamW step.

    python bench/memory.py             # prints the section as JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/memory.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
PHASES = ("encode", "train step")


def _proc_status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (Linux; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _proc_status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's own address space.

    ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over fork + exec, so a child of a parent
    that once held a 2B model would report the parent's peak; the high-water mark is per address space.
    """
    return _proc_status_bytes("VmHWM")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Child side: build, run encode then a training step, report memory after each.

    ``spec``: arch, dtype, k, kind, batch, shape (make_batch keywords), lora_r, tau.
    """
    import torch

    from bench.archs import DTYPES, build_random, encode, make_batch, param_bytes

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[spec["dtype"]]
    import peft  # noqa: F401  imported before the baseline: library code is not the model's memory
    import transformers.models.qwen2_vl.modeling_qwen2_vl  # noqa: F401

    baseline = rss_bytes()
    model = build_random(spec["arch"], dtype, device, spec.get("attn", "sdpa"), k=spec["k"],
                         tiny_depth=spec.get("tiny_depth", 8))
    weights = param_bytes(model)
    after_build = rss_bytes()
    batches = [make_batch(model.config, spec["kind"], spec["batch"], device=device, dtype=dtype, seed=s,
                          **spec["shape"]) for s in (0, 1)]
    out = {"weights": weights, "baseline rss": baseline, "rss after build": after_build}
    for phase in PHASES:  # encode first: its peak is below the training step's, which comes after it
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if phase == "encode":
            with torch.inference_mode():
                encode(model, batches[0])
        else:
            train_step(model, batches, spec["lora_r"], spec["tau"])
        out[phase] = {"peak rss": peak_rss_bytes(), "seconds": time.perf_counter() - t0}
        if device == "cuda":
            out[phase]["cuda max allocated"] = torch.cuda.max_memory_allocated()
    return out


def train_step(model, batches, lora_r: int, tau: float) -> None:
    """One LoRA step: [RET] states of a query and a candidate batch, InfoNCE (Eq. 3), backward, AdamW."""
    lora_step(*lora_student(model, lora_r), batches, tau)


def lora_student(model, lora_r: int, gradient_checkpointing: bool = False):
    """``model`` (a ``Qwen2VLModel``, changed in place) with LoRA on the decoder projections, in train mode.

    Returns ``(peft_model, AdamW over the adapter)``. With ``gradient_checkpointing`` each decoder layer
    recomputes its activations in the backward pass (non-reentrant, so the frozen inputs need no grad).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from puma.train.runner import LORA_TARGETS

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=LORA_TARGETS))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return peft_model, torch.optim.AdamW(params, lr=1e-4)


def lora_step(peft_model, opt, batches, tau: float) -> float:
    """Query batch and candidate batch through the model, InfoNCE (Eq. 3), backward, AdamW step; the loss."""
    from bench.archs import encode
    from puma.losses import info_nce

    inner = peft_model.get_base_model()
    loss = info_nce(encode(inner, batches[0]), encode(inner, batches[1]), tau)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def spawn(spec: dict[str, Any], timeout: int = 600) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--child", json.dumps(spec)], cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"memory child {spec['arch']}/{spec['kind']}/k={spec['k']} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_row(r, kind: str, phase: str, depth: int, lora_r: int, res: dict[str, dict]) -> dict[str, Any]:
    """One table row from the full and pruned children's reports."""
    from bench.archs import gib

    key = "cuda max allocated" if "cuda max allocated" in res["full"][phase] else "peak rss"
    peak = {side: res[side][phase][key] for side in res}
    # On CPU the process's own baseline (Python + libraries) is subtracted; CUDA counts only tensors.
    above = {side: peak[side] - (res[side]["baseline rss"] if key == "peak rss" else 0) for side in res}
    return {"arch": r.arch, "dtype": r.dtype, "kind": kind, "batch": r.batch_size, "phase": phase,
            "k": f"{r.k}/{depth}", "lora r": lora_r if phase == "train step" else None,
            "weights GiB full": gib(res["full"]["weights"]), "weights GiB pruned": gib(res["pruned"]["weights"]),
            f"{key} GiB full": gib(peak["full"]), f"{key} GiB pruned": gib(peak["pruned"]),
            "above baseline GiB full": gib(above["full"]), "above baseline GiB pruned": gib(above["pruned"]),
            "full / pruned (above baseline)": above["full"] / above["pruned"]}


def run(settings=None) -> dict[str, Any]:
    """Peak memory for every memory run, phase and side; ratios full / pruned."""
    from puma.config import load_settings
    from puma.model.flops import load_config

    settings = settings or load_settings()
    bench = settings.bench
    rows, notes = [], []
    for r in bench.gpu_memory_runs if _cuda() else bench.memory_runs:
        depth = settings.model.depth if r.arch == "tiny" else load_config(r.arch).text_config.num_hidden_layers
        lora_r = settings.stage1.lora_r if r.arch == "tiny" else bench.lora_r
        shape = {"template_tokens": bench.template_tokens, "text_tokens": bench.text_tokens,
                 "image_hw": list(r.image_hw), "min_pixels": r.min_pixels, "max_pixels": r.max_pixels}
        for kind in r.kinds:
            res = {}
            for side, k in (("full", depth), ("pruned", r.k)):
                spec = {"arch": r.arch, "dtype": r.dtype, "k": k, "kind": kind, "batch": r.batch_size,
                        "shape": shape, "lora_r": lora_r, "tau": settings.stage1.tau,
                        "tiny_depth": settings.model.depth}
                try:
                    res[side] = spawn(spec)
                except (RuntimeError, subprocess.TimeoutExpired) as e:  # e.g. OOM: keep the other rows
                    notes.append(f"{r.arch} {r.dtype} {kind} batch {r.batch_size} {side}: {e}")
            if len(res) == 2:
                rows += [memory_row(r, kind, phase, depth, lora_r, res) for phase in PHASES]
    notes.append("peak rss = VmHWM (peak resident set) of a fresh process per side (includes Python + libraries); 'above "
                 "baseline' subtracts the RSS measured after imports. Each process runs encode, then the "
                 "training step (whose peak is the larger, so the peak read after it is its own).")
    notes.append("Training step without the teacher (stage 2's shape; stage 1 adds the teacher: a second full "
                 "model when live, nothing when cached). No gradient checkpointing.")
    return {"title": "Peak memory: encode and LoRA training step, full vs pruned",
            "meta": {"device": "cuda" if _cuda() else "cpu", "measure": "cuda max allocated" if _cuda() else
                     "peak RSS (VmHWM) per fresh process"},
            "rows": rows, "notes": notes}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run(), indent=2, default=str))
