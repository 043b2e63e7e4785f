"""Pruned vs full encode: samples/s, speedup, FLOPs ratio and efficiency = speedup / FLOPs ratio.

For every configured run (``params.yaml: bench.cpu_runs`` on a CPU machine, ``bench.gpu_runs`` on a
CUDA one) and every input kind (text only, image only, image + text), the full-depth model and its
pruned copies (``k`` and the ``k_sweep``) encode the *same* batch, interleaved round by round in one
process. The pruned copies share the full model's weights (:func:`bench.archs.pruned_copy`), so the
2B/7B exist once in memory. FLOPs come from :func:`puma.model.flops.forward_flops` for the exact
sequence the batch has.

    python bench/prune_speed.py            # prints the section as JSON
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/prune_speed.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.archs import DTYPES, build_random, encode, make_batch, pruned_copy, shape_of
from bench.harness import interleaved, speed_row

# Paper Table 2 (7B, one GPU, batch 64, bf16): what the 7B rows are compared with (not a result of ours).
PAPER_7B = {"full samples/s": 59.0, "pruned samples/s": 115.5, "TFLOPs full": 7.36, "TFLOPs pruned": 3.48}


def device_and_sync() -> tuple[str, Any]:
    """``("cuda", torch.cuda.synchronize)`` on a GPU machine, else ``("cpu", None)``."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda.synchronize
    return "cpu", None


def usable_attn(attns: list[str], device: str, dtype: torch.dtype) -> tuple[list[str], list[str]]:
    """The attention implementations that can run here, and a note for each one left out."""
    keep, notes = [], []
    for attn in attns:
        if attn == "flash_attention_2":
            why = None
            if device != "cuda":
                why = "needs a CUDA GPU"
            elif dtype not in (torch.bfloat16, torch.float16):
                why = "needs bf16/fp16"
            elif importlib.util.find_spec("flash_attn") is None:
                why = "flash-attn is not installed"
            if why:
                notes.append(f"flash_attention_2 not measured: {why}.")
                continue
        keep.append(attn)
    return keep, notes


def token_counts(batch: dict[str, Any]) -> tuple[int, int]:
    """(image tokens, other tokens) of one sample, as :func:`forward_flops` wants them."""
    image = int(batch["mm_token_type_ids"][0].sum())
    return image, int(batch["input_ids"].shape[1]) - image


def measure_kind(model, config, run, kind: str, bench, device: str, sync) -> list[dict[str, Any]]:
    """One interleaved measurement: full vs every k of the run, on one batch of ``kind``."""
    from puma.model.flops import forward_flops

    dtype = DTYPES[run.dtype]
    depth = config.text_config.num_hidden_layers
    ks = sorted({k for k in [run.k, *run.k_sweep] if 1 <= k < depth})
    batch = make_batch(config, kind, run.batch_size, template_tokens=bench.template_tokens,
                       text_tokens=bench.text_tokens, image_hw=tuple(run.image_hw),
                       min_pixels=run.min_pixels, max_pixels=run.max_pixels, device=device, dtype=dtype)
    pruned = {k: pruned_copy(model, k) for k in ks}
    fns = {"full": lambda: encode(model, batch)}
    fns.update({f"k={k}": (lambda m=m: encode(m, batch)) for k, m in pruned.items()})
    with torch.inference_mode():
        times = interleaved(fns, repeats=run.repeats or bench.repeats, warmup=bench.warmup,
                            sync=sync, min_time=bench.min_time)
    image_tokens, other_tokens = token_counts(batch)
    full_flops = forward_flops(config, image_tokens, other_tokens).total
    rows = []
    for k in ks:
        k_flops = forward_flops(config, image_tokens, other_tokens, layers=k).total
        row = {"arch": run.arch, "dtype": run.dtype, "kind": kind, "batch": run.batch_size,
               "seq": int(batch["input_ids"].shape[1]), "image tokens": image_tokens,
               "k": f"{k}/{depth}", "main": k == run.k, "rounds": run.repeats or bench.repeats,
               "GFLOPs full": full_flops / 1e9, "GFLOPs pruned": k_flops / 1e9}
        row.update(speed_row(times, "full", f"k={k}", run.batch_size, flops_ratio=full_flops / k_flops,
                             other_label="pruned"))
        if run.arch == "7b" and k == 12:
            row["paper (Table 2)"] = (f"{PAPER_7B['full samples/s']} -> {PAPER_7B['pruned samples/s']} samples/s, "
                                      f"FLOPs ratio {PAPER_7B['TFLOPs full'] / PAPER_7B['TFLOPs pruned']:.2f}")
        rows.append(row)
    rows[0]["_shapes"] = shape_of(batch)
    return rows


def _with_threads(threads: int | None, fn, *args):
    """Call ``fn(*args)`` with ``threads`` torch threads (None: unchanged), then restore the count.

    The tiny model's calls are milliseconds: one thread keeps them clear of other processes' load on
    shared cores (a 2-thread parallel region stalls whenever either core is busy).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def run(settings=None) -> dict[str, Any]:
    """Measure every configured run; return the report section (``tables``: main k and the sweep)."""
    from puma.config import load_settings

    settings = settings or load_settings()
    bench = settings.bench
    device, sync = device_and_sync()
    runs = bench.gpu_runs if device == "cuda" else bench.cpu_runs
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    shapes: dict[str, Any] = {}
    model, key = None, None
    for r in runs:
        attns, why = usable_attn(list(bench.attn), device, DTYPES[r.dtype])
        notes += [n for n in why if n not in notes]
        for attn in attns:
            if key != (r.arch, r.dtype, attn):  # consecutive runs of one model share one build
                model = None  # free the previous model before building the next
                t0 = time.perf_counter()
                model = build_random(r.arch, DTYPES[r.dtype], device, attn, seed=settings.seed,
                                     tiny_depth=settings.model.depth)
                key = (r.arch, r.dtype, attn)
                notes.append(f"{r.arch} {r.dtype} {attn}: built with random weights in {time.perf_counter() - t0:.0f} s "
                             f"({sum(p.numel() for p in model.parameters()) / 1e9:.3f}B params).")
            for kind in r.kinds:
                try:
                    measured = _with_threads(r.threads, measure_kind, model, model.config, r, kind, bench,
                                             device, sync)
                except (RuntimeError, torch.cuda.OutOfMemoryError) as e:  # e.g. OOM: keep the other rows
                    notes.append(f"{r.arch} {r.dtype} {attn} {kind} batch {r.batch_size}: failed: {e}")
                    continue
                for row in measured:
                    shapes_here = row.pop("_shapes", None)
                    if shapes_here:
                        shapes[f"{r.arch}/{r.dtype}/{kind}/b{r.batch_size}"] = shapes_here
                    rows.append(dict(row, attn=attn, threads=r.threads or torch.get_num_threads()))
    model = None
    main = [{k: v for k, v in row.items() if k != "main"} for row in rows if row["main"]]
    sweep = [{k: v for k, v in row.items() if k != "main"} for row in rows if not row["main"]]
    return {
        "title": "Pruned vs full encode",
        "meta": {"device": device, "threads": torch.get_num_threads(), "warmup": bench.warmup,
                 "repeats (default rounds)": bench.repeats, "min time per sample (s)": bench.min_time,
                 "template tokens": bench.template_tokens, "text tokens": bench.text_tokens, "input shapes": shapes},
        "tables": {"main setting (k = 12 of 28 for 2B/7B, model.prune_layers for tiny)": main,
                   "k sweep": sweep},
        "notes": notes + [
            ("speedup = full time / pruned time per round (median, IQR); efficiency = speedup / FLOPs ratio "
             "(1.0 = the whole FLOPs reduction shows up in wall-clock time; paper 7B: 1.96/2.11 = 0.926)."),
            "Weights are random: timing does not depend on their values. FLOPs: puma.model.flops.forward_flops.",
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2, default=str))
