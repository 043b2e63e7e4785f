"""The rehearsal's per-stage table extrapolated to the paper's run: Qwen2-VL-7B, k 12, on 4 x 80 GB GPUs.

From FLOPs and bytes, not a measurement: per stage, the work at the paper's data sizes (SimCSE NLI 275k
rows, M-BEIR union_up_train ~1.1M pairs, the 5.6M-candidate global test pool + ~190k test queries), its
FLOPs (:func:`puma.model.flops.forward_flops`, the 7B's analytic count), the wall time on ``--gpus`` GPUs
of ``--peak-tflops`` dense bf16 each at an assumed model-FLOPs utilisation (``--mfu``), the memory per GPU
(:func:`puma.resources.stage_plan` under the ``paper-7b`` profile), and the disk it writes (bf16 weights,
fp16 embeddings, fp32 LoRA + AdamW checkpoints; the DVC cache hard-linked as in ``.dvc/config``, so an out
is on disk once; MLflow stores the merged model once, at register). Beside it: the paper's Table 2 and,
with ``--rehearsal``, the measured 2B rehearsal (``reports/rehearsal.json``).

Training cost per item: forward + backward of the decoder with frozen base weights (activation gradients,
~1 forward; LoRA weight gradients are ~1% of it) + the recomputed forward of gradient checkpointing = 3
decoder forwards; the frozen vision tower runs forward once (no input needs its gradient).
Run: ``python bench/rehearsal_7b.py [--rehearsal reports/rehearsal.json] [--out docs/rehearsal_7b.md]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 1024**3
# Paper-scale data (REFERENCE.md sections 4-5; the M-BEIR training size is UniIR's 1.1M instances).
NLI_ROWS = 275_000
MBEIR_TRAIN_PAIRS = 1_100_000
POOL, TEST_QUERIES = 5_600_000, 190_000
# One item: the prompt template + text (resources.TEMPLATE_TOKENS + TEXT_TOKENS), and for an image item a
# photo at the paper's budget (300 merged tokens). NLI items are text only (~20 words).
NLI_TEXT_TOKENS = 80
IMAGE_TOKENS, ITEM_TEXT_TOKENS = 300, 124
IMAGE_SHARE = 0.5  # share of M-BEIR items (queries and candidates) that carry an image
# Paper Table 2 (7B) and section 5.1.
TABLE2 = {"flops_full": 7.36, "flops_pruned": 3.48, "speed_full": 59.0, "speed_pruned": 115.5,
          "train_gpus_puma": "4 x 80 GB (A800)", "train_gpus_lamra": "16 x 80 GB", "params_pruned": "3B"}
DISK_GBPS = 1.0  # sequential read/write of a checkpoint, GB/s (NVMe-class local disk)


def paper_settings():
    from puma.config import edit_params_text, settings_from_text
    from puma.profiles import profile_overrides

    params = REPO / "params.yaml"
    return settings_from_text(edit_params_text(params.read_text(), profile_overrides("paper-7b"), params), params)


def mbeir_item(config, layers: int | None, train: bool) -> float:
    """Average FLOPs of one M-BEIR item (IMAGE_SHARE with an image), forward or training step."""
    from puma.model.flops import forward_flops

    img = forward_flops(config, IMAGE_TOKENS, ITEM_TEXT_TOKENS, layers)
    txt = forward_flops(config, 0, ITEM_TEXT_TOKENS, layers)
    dec = 3 if train else 1
    return IMAGE_SHARE * (img.vision + dec * img.decoder) + (1 - IMAGE_SHARE) * dec * txt.decoder


def extrapolate(gpus: int, peak_tflops: float, mfu: float) -> list[dict]:
    import copy

    from puma.model.flops import forward_flops, load_config
    from puma.resources import _param_count, lora_params, stage_plan

    s = paper_settings()
    cfg = load_config("7b")
    k = s.model.prune_layers
    full_params, pruned_params = _param_count(cfg, cfg.text_config.num_hidden_layers), _param_count(copy.deepcopy(cfg), k)
    h = cfg.text_config.hidden_size
    b = 2  # bf16
    rate = gpus * peak_tflops * 1e12 * mfu  # FLOP/s of the job
    nli_student = forward_flops(cfg, 0, NLI_TEXT_TOKENS, k).decoder
    nli_teacher = forward_flops(cfg, 0, NLI_TEXT_TOKENS).decoder
    trainable = lora_params(cfg.text_config, k, s.stage1.lora_r) + h
    ckpt = trainable * (4 + 8) * 2  # fp32 weights + AdamW moments, keep 2 checkpoints
    rows = []

    def row(stage, work, flops, disk, plan_stage=None, seconds=None, note="", transient=0):
        """``disk``: the stage's DVC outs (MLflow's copy for register); ``transient``: its work directory."""
        plan = stage_plan(s, plan_stage) if plan_stage else None
        secs = seconds if seconds is not None else flops / rate
        copies = 1 if stage == "register" else 2  # a copying DVC cache holds every out a second time
        rows.append({"stage": stage, "work": work, "pflops": round(flops / 1e15, 1), "hours": secs / 3600,
                     "gpu_mem_gib": round(plan["total"] / GIB, 1) if plan else None, "disk_gib": disk / GIB,
                     "disk_copy_gib": copies * disk / GIB, "transient_gib": transient / GIB, "note": note})

    row("prune", "read 7B, write pruned k 12", 0, pruned_params * b,
        seconds=(full_params * b * (k / 28) + pruned_params * b) / (DISK_GBPS * 1e9),
        note="bytes-bound; only the kept layers are read")
    row("teacher_cache", f"{2 * NLI_ROWS / 1e3:.0f}k NLI items, full 28 layers, forward",
        2 * NLI_ROWS * nli_teacher, 2 * NLI_ROWS * h * b, "teacher-cache", note="the teacher alone is resident")
    s1_items = 2 * NLI_ROWS * s.stage1.epochs
    row("stage1", f"{NLI_ROWS / 1e3:.0f}k pairs x {s.stage1.epochs} epochs, k {k}, LoRA r {s.stage1.lora_r}",
        s1_items * 3 * nli_student, pruned_params * b, "stage1", transient=ckpt,
        note=f"reads the cache: no teacher resident; {s1_items // (2 * s.stage1.batch_size * gpus):,} steps")
    s2_items = 2 * MBEIR_TRAIN_PAIRS * s.stage2.epochs
    row("stage2", f"{MBEIR_TRAIN_PAIRS / 1e6:.1f}M pairs x {s.stage2.epochs} epochs, images at 300 tokens",
        s2_items * mbeir_item(cfg, k, True), pruned_params * b, "stage2", transient=ckpt,
        note=f"{s2_items // (2 * s.stage2.batch_size * gpus):,} steps")
    n_embed = POOL + TEST_QUERIES
    embed_flops = n_embed * mbeir_item(cfg, k, False)
    row("embed", f"{POOL / 1e6:.1f}M candidates + {TEST_QUERIES / 1e3:.0f}k queries, forward", embed_flops,
        n_embed * h * 2, "teacher-cache",
        note=f"at the paper's 115.5 samples/s/GPU: {n_embed / (gpus * TABLE2['speed_pruned']) / 3600:.1f} h")
    rows[-1]["gpu_mem_gib"] = round(pruned_params * b * 1.1 / GIB + 4, 1)  # pruned weights + batch-64 activations
    search = 2 * TEST_QUERIES * POOL * h
    row("evaluate", "exact inner-product search, global pool", search, 0.1 * GIB,
        seconds=search / (gpus * peak_tflops * 1e12 * 0.5), note="fp16 matmul streaming; minutes")
    row("report", "tables", 0, 0.01 * GIB, seconds=10)
    row("register", "merged model into the MLflow artifact store once", 0, pruned_params * b,
        seconds=pruned_params * b / (DISK_GBPS * 1e9), note="one copy (a remote store uploads it)")
    return rows, {"full_params": full_params, "pruned_params": pruned_params, "trainable": trainable,
                  "ckpt_bytes": ckpt, "rate_tflops": rate / 1e12}


def markdown(rows: list[dict], facts: dict, gpus: int, peak: float, mfu: float, rehearsal: dict | None) -> str:
    measured = {r["stage"]: r for r in (rehearsal or {}).get("stages", [])}
    lines = [(f"7B, k 12, paper-7b profile, {gpus} GPUs x {peak:.0f} TFLOP/s bf16 at {mfu:.0%} MFU "
             f"({facts['rate_tflops']:.0f} TFLOP/s for the job); 7B {facts['full_params'] / 1e9:.2f}B params, pruned "
             f"{facts['pruned_params'] / 1e9:.2f}B, LoRA r 128 trainable {facts['trainable'] / 1e6:.0f}M."), "",
             ("| stage | 2B rehearsal (2 CPU cores): wall s / peak RSS GB / disk GiB | 7B work | PFLOP | 7B wall "
             "(4 GPUs) | memory per GPU GiB (plan) | 7B disk GiB: hard-linked cache / copying cache | note |"),
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        m = measured.get(r["stage"])
        extra = f" (+{r['transient_gib']:.1f} checkpoints)" if r["transient_gib"] else ""
        meas = (f"{m['wall_s']:.0f} / {m['peak_rss_mb'] / 1024:.1f} / {m['disk_written']['workspace_total'] / GIB:.2f}"
                if m else "-")
        wall = f"{r['hours']:.1f} h" if r["hours"] >= 1 else f"{r['hours'] * 60:.1f} min"
        lines.append(f"| {r['stage']} | {meas} | {r['work']} | {r['pflops']} | {wall} | "
                     f"{r['gpu_mem_gib'] if r['gpu_mem_gib'] is not None else '-'} | {r['disk_gib']:.1f} / {r['disk_copy_gib']:.1f}"
                     f"{extra} | {r['note']} |")
    total_h = sum(r["hours"] for r in rows)
    total_disk = sum(r["disk_gib"] for r in rows)
    total_copy = sum(r["disk_copy_gib"] for r in rows)
    lines += [f"| **total** | {rehearsal['wall_s']:.0f} s" if rehearsal else "| **total** | -",
              ""]
    lines[-2] += f" | | {sum(r['pflops'] for r in rows):.0f} | {total_h:.1f} h | | {total_disk:.0f} / {total_copy:.0f} (+ the 7B base in the HF cache) | |"
    lines += [("Paper Table 2 (7B): FLOPs 7.36 (full) -> 3.48 (pruned, -52.7%); inference 59.0 -> 115.5 samples/s on one "
              "GPU at batch 64; training on 4 x 80 GB (A800) instead of LamRA's 16 x 80 GB; 3B LLM parameters. "
              "The paper gives no training wall time."), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=312.0, help="dense bf16 per GPU (A800/A100: 312)")
    ap.add_argument("--mfu", type=float, default=0.35)
    ap.add_argument("--rehearsal", type=Path, default=REPO / "reports" / "rehearsal.json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows, facts = extrapolate(args.gpus, args.peak_tflops, args.mfu)
    reh = json.loads(args.rehearsal.read_text()) if args.rehearsal.is_file() else None
    md = markdown(rows, facts, args.gpus, args.peak_tflops, args.mfu, reh)
    print(md)
    if args.out:
        from puma.io import write_text_atomic

        write_text_atomic(args.out, md)


if __name__ == "__main__":
    main()
