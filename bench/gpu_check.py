"""The paper's Table 2 on one GPU: encode, LoRA training step, exact search and the gpu tests, in one run.

Built for the device machine (one H200, 8 minutes, no network, its own python3 with CUDA torch,
transformers, peft, accelerate, safetensors): nothing here needs the project's venv, its config
(pydantic) or faiss. Parts, each with a time cap under one global deadline; a part or a measurement
that cannot run records why and the rest still runs:

- ``encode``: full vs pruned (k = 12) and the k sweep for the 2B and 7B architectures with random bf16
  weights built on the GPU (``bench.archs``), batch 64, text only and image + text at the paper's image
  budget: samples/s, TFLOPs per sample (``puma.model.flops.forward_flops``), speedup against the
  FLOPs-implied bound, peak GPU memory; sdpa, and flash_attention_2 where ``flash_attn`` imports;
- ``train``: a LoRA step (r = 128, bf16, gradient checkpointing off and on) of the full and the pruned
  2B/7B (``bench.memory.lora_student``/``lora_step``): samples/s and peak memory;
- ``search``: exact top-50 of 10k queries over a 1M x 1536 fp16 pool on the GPU (torch matmul top-k;
  GPU faiss too where it imports), q/s, checked against numpy on the CPU for a subset;
- ``tests``: ``pytest -m gpu`` over the test files that carry the ``gpu`` mark.

The report (``gpu_check.json`` + ``gpu_check.md`` in ``--out``) is rewritten after every measurement,
so a run cut short still leaves files; ``finished`` says whether it got to the end.

    bash bench/gpu_check.sh --out $OUT        # on the device (make gpu-check)
    bash bench/gpu_check.sh --dry-run         # here: tiny shapes on CPU, same code paths (< 1 min)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/gpu_check.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.archs import DTYPES, build_random, encode, make_batch, param_bytes, pruned_copy
from bench.harness import interleaved, machine_info, paired_ratio, render_markdown, stats
from bench.memory import lora_step, lora_student
from bench.prune_speed import PAPER_7B, measure_kind, usable_attn
from bench.run_all import run_one
from bench.search import numpy_topk, torch_topk
from puma.io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
MAIN_TABLE = "main setting (the plan's k: 12 of 28 on the device)"
PARTS = ("encode", "train", "search", "tests")


@dataclass(frozen=True)
class Plan:
    """What the device check measures. The encode/train shapes are ``params.yaml``'s ``bench.gpu_runs``,
    ``bench.template_tokens``/``text_tokens``, ``bench.lora_r`` and ``stage1.tau``, restated here because
    the device has no pydantic to read them (``tests/unit/test_gpu_check.py`` keeps the two equal)."""

    archs: tuple[str, ...] = ("7b", "2b")  # 7B first: the paper's Table 2 row
    dtype: str = "bfloat16"
    batch: int = 64
    k: int = 12
    k_sweep: tuple[int, ...] = (4, 8, 16, 20, 24)
    kinds: tuple[str, ...] = ("image+text", "text")
    image_hw: tuple[int, int] = (480, 640)
    min_pixels: int = 4 * 28 * 28  # paper: 4..300 merged tokens of 28x28 pixels
    max_pixels: int = 300 * 28 * 28
    template_tokens: int = 40
    text_tokens: int = 32
    attn: tuple[str, ...] = ("sdpa", "flash_attention_2")
    warmup: int = 1
    repeats: int = 5
    min_time: float = 0.3
    train_batch: int = 16  # (query, candidate) pairs per step, image + text
    train_repeats: int = 3
    lora_r: int = 128
    tau: float = 0.05
    search_n: int = 1_000_000
    search_dim: int = 1536
    search_queries: int = 10_000
    search_k: int = 50
    search_check: int = 100  # queries checked against numpy on the CPU
    search_repeats: int = 3
    budget_s: float = 440.0  # global deadline; bench/gpu_check.sh kills at 470 s
    caps: tuple[tuple[str, float], ...] = (("encode", 220.0), ("train", 150.0), ("search", 60.0), ("tests", 60.0))
    min_step_s: float = 15.0  # a measurement starts only with this much of its part's time left
    scaled: bool = False  # dry run: 2B/7B configs scaled down (same depth, tiny widths)


DEVICE_PLAN = Plan()
# float32: bf16 matmuls on a CPU without bf16 instructions are ~20x slower than fp32 (same code path).
DRY_PLAN = replace(DEVICE_PLAN, dtype="float32", batch=4, k=2, k_sweep=(1, 3), image_hw=(112, 112),
                   max_pixels=16 * 28 * 28, warmup=0, repeats=1, min_time=0.0, train_batch=2, train_repeats=1,
                   search_n=8192, search_queries=128, search_check=32, search_repeats=1, budget_s=150.0,
                   min_step_s=0.0, scaled=True)

# Dry-run shapes: the real vocabulary (the special token ids sit at ~151k) and token ids; 4 decoder
# layers and widths like the embedded tiny default's (each small op costs the most on shared CPUs).
SCALED_DEPTH = 4
SCALED_TEXT = {"hidden_size": 64, "intermediate_size": 176, "num_attention_heads": 4, "num_key_value_heads": 2}
SCALED_VISION = {"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64}


def scaled_config(arch: str):
    """The bundled ``arch`` config cut to tiny widths and 4 layers (head_dim 16: M-RoPE sections 2 + 3 + 3)."""
    from transformers import Qwen2VLConfig

    from puma.model.flops import load_config
    from puma.model.prune import prune_config

    d = load_config(arch).to_dict()
    d["text_config"].update(SCALED_TEXT)
    d["text_config"]["rope_parameters"] = dict(d["text_config"]["rope_parameters"], mrope_section=[2, 3, 3])
    d["vision_config"].update(SCALED_VISION)
    config = Qwen2VLConfig.from_dict(d)
    prune_config(config, SCALED_DEPTH)  # depth, layer_types and max_window_layers together
    return config


class Check:
    """Run state: plan, device, deadlines, the models shared by the parts, and the report on disk."""

    def __init__(self, plan: Plan, out: Path, dry_run: bool):
        self.plan, self.out, self.dry_run = plan, out, dry_run
        self.device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
        self.sync = torch.cuda.synchronize if self.device == "cuda" else None
        self.dtype = DTYPES[plan.dtype]
        if dry_run:  # millisecond calls: one thread keeps them clear of other load on shared cores
            torch.set_num_threads(1)
        self.t0 = time.perf_counter()
        self.end = self.t0 + plan.budget_s
        self.part_end = self.end
        self.models: dict[str, Any] = {}
        self.report: dict[str, Any] = {
            "schema": 1, "kind": "gpu_check", "dry_run": dry_run, "finished": False,
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "wall_s": 0.0,
            "machine": machine_info() | gpu_info(), "plan": asdict(plan), "benchmarks": {}, "log": []}

    def left(self) -> float:
        """Seconds left for the running part (its cap or the global deadline, whichever is first)."""
        return min(self.part_end, self.end) - time.perf_counter()

    def log(self, msg: str) -> None:
        line = f"[gpu_check {time.perf_counter() - self.t0:5.0f} s] {msg}"
        print(line, flush=True)
        self.report["log"].append(line)

    def save(self) -> None:
        self.report["wall_s"] = time.perf_counter() - self.t0
        report = json.loads(json.dumps(self.report, default=str))  # plain JSON (tuples, numpy scalars)
        write_json_atomic(self.out / "gpu_check.json", report)
        write_text_atomic(self.out / "gpu_check.md", render(report))

    def model(self, arch: str, attn: str = "sdpa"):
        """The random-weight ``arch`` model (built once per attention implementation)."""
        if (arch, attn) not in self.models:
            t0 = time.perf_counter()
            config = scaled_config(arch) if self.plan.scaled else None
            self.models[(arch, attn)] = build_random(arch, self.dtype, self.device, attn, config=config)
            self.log(f"built {arch} {attn} in {time.perf_counter() - t0:.1f} s")
        return self.models[(arch, attn)]

    def free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def render(report: dict[str, Any]) -> str:
    """The markdown of a gpu_check report (``bench.harness.render_markdown`` with this run's header)."""
    state = "finished" if report.get("finished") else f"NOT finished ({report.get('stopped', 'running')})"
    title = "PUMA GPU check" + (" (DRY RUN: CPU, scaled-down shapes)" if report.get("dry_run") else "")
    return render_markdown(report, title=title, producer=f"`bash bench/gpu_check.sh`; {state}")


def gpu_info() -> dict[str, Any]:
    """The CUDA device, and which optional packages import (flash_attn, faiss, peft, pytest)."""
    info: dict[str, Any] = {}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu memory GiB": p.total_memory / 2**30, "compute capability": f"{p.major}.{p.minor}",
                 "torch cuda": torch.version.cuda}
    for name in ("peft", "flash_attn", "faiss", "pytest"):
        info[f"has {name}"] = importlib.util.find_spec(name) is not None
    return info


def cuda_peak(check: Check, fn) -> int | None:
    """Run ``fn``; bytes allocated at its peak above what was allocated before it (None on CPU)."""
    if check.device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def gib_or_none(n: float | None) -> float | None:
    return None if n is None else n / 2**30


def not_measured(what: str, why: str) -> dict[str, str]:
    return {"what": what, "why": why}


def oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# --------------------------------------------------------------------------------------------------
# Parts. Each returns a bench section: {"title", "meta", "tables": {title: rows}, "notes"}.


def _batch(check: Check, config, kind: str, batch: int, seed: int = 0) -> dict[str, Any]:
    p = check.plan
    return make_batch(config, kind, batch, template_tokens=p.template_tokens, text_tokens=p.text_tokens,
                      image_hw=p.image_hw, min_pixels=p.min_pixels, max_pixels=p.max_pixels,
                      device=check.device, dtype=check.dtype, seed=seed)


def part_encode(check: Check) -> dict[str, Any]:
    p = check.plan
    run = types.SimpleNamespace(arch="", dtype=p.dtype, k=p.k, k_sweep=list(p.k_sweep), batch_size=p.batch,
                                image_hw=p.image_hw, min_pixels=p.min_pixels, max_pixels=p.max_pixels, repeats=None)
    bench = types.SimpleNamespace(template_tokens=p.template_tokens, text_tokens=p.text_tokens,
                                  repeats=p.repeats, warmup=p.warmup, min_time=p.min_time)
    main, sweep, memory, missing = [], [], [], []
    tables = {MAIN_TABLE: main, "k sweep": sweep, "peak memory, one encode": memory,
              "not measured": missing}
    section = {"title": "Encode: pruned vs full", "tables": tables,
               "meta": {"device": check.device, "dtype": p.dtype, "batch": p.batch, "kinds": ", ".join(p.kinds),
                        "image": f"{p.image_hw[0]}x{p.image_hw[1]} in [{p.min_pixels}, {p.max_pixels}] pixels"},
               "notes": [("speedup = full time / pruned time per round; efficiency = speedup / FLOPs ratio "
                         "(1.0 = the FLOPs-implied bound; paper 7B: 1.96 / 2.11 = 0.926)."),
                         ("peak GiB = the side's own weights (the retriever: no lm_head) + the peak extra "
                         "allocation of one encode (the pruned copy shares the full model's weights).")]}
    check.report["benchmarks"]["encode"] = section
    attns, why = usable_attn(list(p.attn), check.device, check.dtype)
    for arch in p.archs:
        missing += [not_measured(f"{arch} flash_attention_2", w) for w in why]
        for attn in attns:
            try:
                model = check.model(arch, attn)
            except Exception as e:  # noqa: BLE001  e.g. flash-attn present but not for this GPU
                missing.append(not_measured(f"{arch} {attn}", f"build failed: {type(e).__name__}: {e}"))
                continue
            for kind in p.kinds:
                what = f"{arch} {attn} {kind}"
                if check.left() < p.min_step_s:
                    missing.append(not_measured(what, f"part time cap reached ({check.left():.0f} s left)"))
                    continue
                run.arch = f"{arch} (scaled)" if p.scaled else arch
                try:
                    rows = measure_kind(model, model.config, run, kind, bench, check.device, check.sync)
                    memory.append(encode_memory(check, model, kind, run.arch, attn))
                except Exception as e:  # noqa: BLE001  one failure (OOM, a missing kernel) must not cost the rest
                    missing.append(not_measured(what, f"{'out of memory' if oom(e) else 'failed'}: {e}"[:300]))
                    check.free()
                    continue
                for row in rows:
                    row.pop("_shapes", None)
                    row = tflops_columns(dict(row, attn=attn))
                    (main if row.pop("main") else sweep).append(row)
                check.log(f"encode {what}: done")
                check.save()
        check.models.pop((arch, "flash_attention_2"), None)  # the train part uses the sdpa build
        check.free()
    return section


def tflops_columns(row: dict[str, Any]) -> dict[str, Any]:
    """GFLOPs -> TFLOPs per sample, and the TFLOP/s each side achieved (samples/s x TFLOPs)."""
    out = {}
    for key, val in row.items():
        if key.startswith("GFLOPs"):
            out[key.replace("GFLOPs", "TFLOPs/sample")] = val / 1e3
        else:
            out[key] = val
    out["TFLOP/s full"] = out["full samples/s"]["median"] * out["TFLOPs/sample full"]
    out["TFLOP/s pruned"] = out["pruned samples/s"]["median"] * out["TFLOPs/sample pruned"]
    return out


def encode_memory(check: Check, model, kind: str, arch_label: str, attn: str) -> dict[str, Any]:
    """Peak GPU memory of one encode of the full retriever and of the k-pruned one."""
    p = check.plan
    batch = _batch(check, model.config, kind, p.batch)
    row: dict[str, Any] = {"arch": arch_label, "attn": attn, "kind": kind, "batch": p.batch}
    for side, m in (("full", model.model), ("pruned", pruned_copy(model, p.k))):
        with torch.inference_mode():
            extra = cuda_peak(check, partial(encode, m, batch))
        row[f"weights GiB {side}"] = param_bytes(m) / 2**30
        row[f"peak GiB {side}"] = None if extra is None else (param_bytes(m) + extra) / 2**30
    if row["peak GiB full"] is None:
        row["peak"] = "no GPU (dry run)"
    return row


def part_train(check: Check) -> dict[str, Any]:
    p = check.plan
    rows, missing = [], []
    section = {"title": f"LoRA training step (r = {p.lora_r}), full vs pruned",
               "meta": {"device": check.device, "dtype": p.dtype, "kind": "image+text",
                        "batch": f"{p.train_batch} (query, candidate) pairs", "rounds": p.train_repeats},
               "tables": {"training step": rows, "not measured": missing},
               "notes": [("One step = query and candidate batches through the model, InfoNCE (Eq. 3), backward, "
                         "AdamW on the adapter (bench.memory.lora_step); no teacher. Both sides share one "
                         "set of base weights; gradient checkpointing is non-reentrant, per decoder layer."),
                         ("peak GiB = the side's weights + adapter + AdamW state + the step's peak extra "
                         "allocation (measured). samples/s counts pairs.")]}
    check.report["benchmarks"]["train"] = section
    for arch in p.archs:
        if check.left() < p.min_step_s:
            missing.append(not_measured(arch, f"part time cap reached ({check.left():.0f} s left)"))
            continue
        try:
            rows += train_arch(check, arch, missing)
        except Exception as e:  # noqa: BLE001  one failure (OOM, a missing kernel) must not cost the rest
            missing.append(not_measured(arch, f"{'out of memory' if oom(e) else 'failed'}: {e}"[:300]))
        check.free()
        check.log(f"train {arch}: done")
        check.save()
    return section


def train_arch(check: Check, arch: str, missing: list) -> list[dict[str, Any]]:
    """Full and pruned, gradient checkpointing off and on: one trial step each, then interleaved rounds."""
    p = check.plan
    model = check.model(arch)
    depth = model.config.text_config.num_hidden_layers
    batches = [_batch(check, model.config, "image+text", p.train_batch, seed=s) for s in (0, 1)]
    steps, peaks, state = {}, {}, {}
    for ckpt in ("off", "on"):
        for side, k in (("full", depth), ("pruned", p.k)):
            name = f"{side} {ckpt}"
            if check.left() < p.min_step_s:
                missing.append(not_measured(f"{arch} {name}", f"part time cap reached ({check.left():.0f} s left)"))
                continue
            twin = pruned_copy(model, k)
            weights = param_bytes(twin)
            try:
                peft_model, opt = lora_student(twin, p.lora_r, gradient_checkpointing=ckpt == "on")
                lora_step(peft_model, opt, batches, p.tau)  # trial step: warmup, allocates AdamW state
            except Exception as e:  # noqa: BLE001  one failure (OOM, a missing kernel) must not cost the rest
                missing.append(not_measured(f"{arch} {name}", f"{'out of memory' if oom(e) else 'failed'}: "
                                                              f"{e}"[:300]))
                twin = peft_model = opt = None
                check.free()
                continue
            adapter = sum(t.numel() * t.element_size() for t in peft_model.parameters() if t.requires_grad)
            adam = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                       if torch.is_tensor(t))
            state[name] = weights + adapter + adam

            def step(name=name, peft_model=peft_model, opt=opt):
                extra = cuda_peak(check, partial(lora_step, peft_model, opt, batches, p.tau))
                if extra is not None:
                    peaks[name] = max(peaks.get(name, 0), extra)
            steps[name] = step
    times = interleaved(steps, repeats=p.train_repeats, warmup=0, sync=check.sync)
    label = f"{arch} (scaled)" if p.scaled else arch
    rows = []
    for ckpt in ("off", "on"):
        full, pruned = f"full {ckpt}", f"pruned {ckpt}"
        row: dict[str, Any] = {"arch": label, "grad ckpt": ckpt, "k": f"{p.k}/{depth}", "lora r": p.lora_r,
                               "batch (pairs)": p.train_batch}
        for side in (full, pruned):
            if side in times:
                row[f"{side.split()[0]} samples/s"] = stats([p.train_batch / t for t in times[side]])
        if full in times and pruned in times:
            row["speedup"] = paired_ratio(times[full], times[pruned])
        for side in (full, pruned):
            peak = state[side] + peaks[side] if side in peaks else None
            row[f"peak GiB {side.split()[0]}"] = gib_or_none(peak)
        if check.device != "cuda":
            row["peak"] = "no GPU (dry run)"
        rows.append(row)
    steps.clear()
    return rows


def part_search(check: Check) -> dict[str, Any]:
    p = check.plan
    rows, missing = [], []
    section = {"title": "Exact search: torch matmul top-k on the device, checked against numpy on the CPU",
               "meta": {"device": check.device, "pool": f"{p.search_n} x {p.search_dim} float16",
                        "queries": p.search_queries, "top-k": p.search_k, "checked queries": p.search_check},
               "tables": {"exact search": rows, "not measured": missing},
               "notes": [("fp16: fp16 inputs and scores (tensor cores); fp32: the same fp16 values in float32 "
                         "(no TF32). 'same top-k' = fraction of (query, rank) slots equal to numpy's float32 "
                         "result; 'overlap' = fraction of numpy's top-k ids found (order ignored).")]}
    check.report["benchmarks"]["search"] = section
    gen = torch.Generator(device=check.device).manual_seed(0)

    def unit(n: int) -> torch.Tensor:  # (n, D) L2-normalised, float16
        x = torch.randn(n, p.search_dim, device=check.device, generator=gen)
        return torch.nn.functional.normalize(x, dim=1).half()

    pool16, queries16 = unit(p.search_n), unit(p.search_queries)
    pool_np = pool16.cpu().numpy()
    sub_np = queries16[:p.search_check].float().cpu().numpy()
    t0 = time.perf_counter()
    want = numpy_topk(sub_np, pool_np, p.search_k)  # (check, k) rows, float32 on the CPU
    cpu_qps = p.search_check / (time.perf_counter() - t0)
    sides = {"fp16": (queries16, pool16), "fp32": (queries16.float(), pool16.float())}
    fns = {name: partial(torch_topk, q, pool, p.search_k) for name, (q, pool) in sides.items()}
    times = interleaved(fns, repeats=p.search_repeats, warmup=1, sync=check.sync)
    for name, (q, pool) in sides.items():
        _, got = torch_topk(q[:p.search_check], pool, p.search_k)
        rows.append(agreement({"path": f"torch {name} ({check.device})"}, got.cpu().numpy(), want)
                    | {"queries/s": stats([p.search_queries / t for t in times[name]]),
                       "numpy queries/s (CPU, checked subset)": cpu_qps})
    del sides, fns
    check.free()
    rows += faiss_rows(check, queries16, pool_np, want, missing)
    return section


def agreement(row: dict[str, Any], got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    row["same top-k"] = float((got == want).mean())
    row["overlap"] = float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))
    return row


def faiss_rows(check: Check, queries16, pool_np: np.ndarray, want: np.ndarray, missing: list) -> list[dict]:
    """GPU faiss through ``puma.index.search``, where faiss imports with GPUs; else a reason."""
    p = check.plan
    try:
        from puma.index import Shard, faiss_gpu_count, search

        gpus = faiss_gpu_count()
    except ImportError as e:
        missing.append(not_measured("faiss (puma.index.search)", f"faiss does not import: {e}"))
        return []
    if not gpus or check.device != "cuda":
        missing.append(not_measured("faiss GPU", "faiss has no GPU build here (faiss-cpu or no GPU)"))
        return []
    queries = queries16.float().cpu().numpy()
    shard = Shard(pool_np, [str(i) for i in range(pool_np.shape[0])])
    t0 = time.perf_counter()
    res = search(queries, [shard], p.search_k, use_gpu=True)
    qps = len(queries) / (time.perf_counter() - t0)
    return [agreement({"path": f"faiss GPU x{gpus} (puma.index.search, one call)"}, res.rows[:p.search_check], want)
            | {"queries/s": qps}]


def gpu_test_files(root: Path = REPO / "tests") -> list[Path]:
    """Test files that carry the ``gpu`` mark (``pytest.mark.gpu`` or ``pytestmark = ...gpu``)."""
    return sorted(f for f in root.rglob("test_*.py") if re.search(r"mark\.gpu\b", f.read_text()))


def part_tests(check: Check) -> dict[str, Any]:
    section: dict[str, Any] = {"title": "The project's gpu-marked tests (pytest -m gpu)"}
    if importlib.util.find_spec("pytest") is None:
        return section | {"status": "skipped", "reason": "pytest is not installed here"}
    files = gpu_test_files()
    if not files:
        return section | {"status": "skipped", "reason": "no test file under tests/ carries the gpu mark"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           *[str(f.relative_to(REPO)) for f in files]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if check.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is CPU only, its tests too
    timeout = max(5.0, check.left())
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return section | {"status": "error", "reason": f"pytest -m gpu did not finish in {timeout:.0f} s"}
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                               tail[-1] if tail else "")}
    row = {"exit code": proc.returncode, **{k: counts.get(k, 0) for k in ("passed", "failed", "skipped")},
           "errors": counts.get("error", 0) + counts.get("errors", 0), "summary": tail[-1] if tail else ""}
    return section | {"meta": {"command": " ".join(cmd[1:]), "files": [str(f.relative_to(REPO)) for f in files]},
                      "rows": [row], "output_tail": tail[-30:]}


def paper_table(report: dict[str, Any]) -> dict[str, Any]:
    """This run's k = 12 image + text encode rows beside the paper's Table 2 (7B, batch 64, one GPU)."""
    main = report["benchmarks"].get("encode", {}).get("tables", {}).get(MAIN_TABLE, [])
    memory = {(r["arch"], r["attn"], r["kind"]): r
              for r in report["benchmarks"].get("encode", {}).get("tables", {}).get("peak memory, one encode", [])}
    rows = [{"source": "paper Table 2 (7B)", "full samples/s": PAPER_7B["full samples/s"],
             "pruned samples/s": PAPER_7B["pruned samples/s"],
             "speedup": PAPER_7B["pruned samples/s"] / PAPER_7B["full samples/s"],
             "TFLOPs/sample full": PAPER_7B["TFLOPs full"], "TFLOPs/sample pruned": PAPER_7B["TFLOPs pruned"],
             "flops ratio": PAPER_7B["TFLOPs full"] / PAPER_7B["TFLOPs pruned"],
             "efficiency": (PAPER_7B["pruned samples/s"] / PAPER_7B["full samples/s"])
             / (PAPER_7B["TFLOPs full"] / PAPER_7B["TFLOPs pruned"])}]
    for r in main:
        mem = memory.get((r["arch"], r["attn"], r["kind"]), {})
        rows.append({"source": f"this run: {r['arch']} {r['attn']} {r['kind']}", "batch": r["batch"],
                     **{key: r.get(key) for key in ("full samples/s", "pruned samples/s", "speedup",
                                                    "TFLOPs/sample full", "TFLOPs/sample pruned",
                                                    "flops ratio", "efficiency")},
                     "peak GiB full": mem.get("peak GiB full"), "peak GiB pruned": mem.get("peak GiB pruned")})
    return {"title": "Paper Table 2 (k = 12 of 28, batch 64) beside this run's main k", "rows": rows,
            "notes": [("The paper's TFLOPs per sample come from its own input lengths; ours are "
                      "puma.model.flops.forward_flops for the exact batch measured (seq and image tokens "
                      "in the encode section).")]}


PART_FNS = {"encode": part_encode, "train": part_train, "search": part_search, "tests": part_tests}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "reports" / "gpu_check"),
                    help="output folder for gpu_check.json + gpu_check.md (default: $OUT, else reports/gpu_check)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: the same code paths in < 1 min")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="run just these parts")
    ap.add_argument("--budget-s", type=float, default=None, help="global deadline in seconds (default: the plan's)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    plan = DRY_PLAN if args.dry_run else DEVICE_PLAN
    plan = replace(plan, budget_s=args.budget_s) if args.budget_s else plan
    check = Check(plan, args.out, args.dry_run)

    def stop(signum, _frame):  # the shell's timeout: leave a report that says so
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    check.log(f"device {check.device}, plan {'dry run' if args.dry_run else 'device'}, "
              f"budget {plan.budget_s:.0f} s, out {args.out}")
    caps = dict(plan.caps)
    try:
        for name in PARTS:
            if args.only and name not in args.only:
                continue
            check.part_end = time.perf_counter() + caps[name]
            check.log(f"{name}: start (cap {caps[name]:.0f} s, {check.left():.0f} s left)")
            if check.left() <= 1:
                section = {"status": "skipped", "reason": "global deadline reached before this part", "wall_s": 0.0}
            else:
                module = types.SimpleNamespace(run=partial(PART_FNS[name], check))
                section = run_one(name, None, import_module=lambda _, m=module: m)
            section.setdefault("title", name)
            tables = section.get("tables", {})
            if not tables.get("not measured", True):
                del tables["not measured"]
            check.report["benchmarks"][name] = section
            check.report["benchmarks"] = {"table2": paper_table(check.report)} | {
                k: v for k, v in check.report["benchmarks"].items() if k != "table2"}
            check.log(f"{name}: {section['status']} in {section['wall_s']:.0f} s"
                      + (f" ({section.get('reason')})" if section["status"] != "ok" else ""))
            check.free()
            check.save()
        check.report["finished"] = True
    except (SystemExit, KeyboardInterrupt) as e:
        check.report["stopped"] = f"interrupted: {e or type(e).__name__}"
        raise
    finally:
        check.save()
        print(f"[gpu_check] wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} "
              f"in {check.report['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
