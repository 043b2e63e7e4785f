"""Embedding throughput: the whole ``puma embed`` pipeline vs the raw model forward on the same batches.

The pipeline (:func:`puma.embed.embed_pool`) reads the pool jsonl, decodes and preprocesses images
and text in data-loader workers, runs the model, and writes fp16 shards. The raw side runs only the
model forward (``ret_states`` + L2 norm) on the *same* batches, collated in advance, so the ratio
pipeline / raw says how much reading, decoding, preprocessing and writing cost on top of the model.
The goal is >= 0.9: preprocessing must not be the bottleneck.

Default: the pruned tiny model (params ``model.prune_layers``) on a synthetic pool of 50% JPEG images
(``--image-size`` pixels square, decoded and resized to the prompt budget) and 50% texts. The tiny
forward costs about as much as preprocessing one sample, so on a small CPU the workers compete with
the forward for cores; ``--width 4`` makes the forward heavier (like a real model on a GPU).
Run: ``python bench/embed_pipeline.py [--n 256 --workers 0 1 2 --threads 1 --width 4]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import interleaved, paired_ratio, stats
from puma.io import write_text_atomic


def make_pool(root: Path, n: int, image_size: int, seed: int = 0) -> Path:
    """A pool jsonl of ``n`` candidates under ``root``: even rows JPEG images, odd rows captions."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        if i % 2 == 0:
            path = f"img/{i}.jpg"
            # Smooth random images compress like photos (pure noise would make huge JPEGs).
            small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((image_size, image_size), Image.BILINEAR).save(root / path, quality=90)
            rec = {"did": f"9:{i}", "txt": None, "img_path": path, "modality": "image", "src_content": None}
        else:
            words = " ".join(f"word{int(w)}" for w in rng.integers(0, 500, 8 + i % 24))
            rec = {"did": f"9:{i}", "txt": f"A photo of {words}", "img_path": None, "modality": "text",
                   "src_content": None}
        lines.append(json.dumps(rec) + "\n")
    pool = root / "pool.jsonl"
    pool.write_text("".join(lines))
    return pool


def widened_checkpoint(out: Path, width: int) -> Path:
    """The tiny Qwen2-VL with every width (text hidden/MLP, vision embed) times ``width``, random weights.

    A heavier forward on the same processor and inputs: shows the pipeline where the model, not the
    preprocessing, is the bottleneck (as with the real 2B/7B on a GPU), without any download.
    """
    import copy

    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from puma.data.corpus import tokenizer_corpus
    from puma.model.tiny import build_tiny

    model, processor = build_tiny(0, corpus=tokenizer_corpus(0))
    cfg = copy.deepcopy(model.config)
    text, vision = cfg.text_config, cfg.vision_config
    text.hidden_size *= width
    text.intermediate_size *= width
    # head_dim grows with the width (same head count): M-RoPE sections must still sum to head_dim / 2.
    text.rope_parameters = dict(text.rope_parameters,
                                mrope_section=[x * width for x in text.rope_parameters["mrope_section"]])
    vision.embed_dim *= width
    vision.hidden_size = text.hidden_size  # the merger's output feeds the text model
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def prepared_batches(encoder, pool: Path, root: Path, batch_size: int) -> list:
    """The batches the pipeline forms (one shard, length-sorted), collated ahead of time."""
    from puma.data.schema import candidate_item, iter_candidates
    from puma.model.encoding import length_key

    items = [candidate_item(c, root) for c in iter_candidates(pool)]
    items.sort(key=length_key)  # Python's sort is stable, like embed's
    return [encoder.collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def run(model: str | None = None, n: int = 256, batch_size: int = 32, workers=(0, 1, 2), image_size: int = 256,
        threads: int = 1, repeats: int = 3, width: int = 1) -> dict:
    import torch

    from puma.config import load_settings
    from puma.embed import RetrieverEncoder, embed_pool
    from puma.model.retriever import PumaRetriever

    torch.set_num_threads(threads)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="puma-bench-embed-"))
    try:
        if model is None:
            from puma.data.corpus import tokenizer_corpus
            from puma.model.prune import save_pruned
            from puma.model.tiny import save_tiny

            k = load_settings().model.prune_layers
            base = save_tiny(tmp / "tiny", corpus=tokenizer_corpus(0)) if width == 1 else widened_checkpoint(tmp / "wide", width)
            model = str(save_pruned(base, k, tmp / "pruned"))
        retriever = PumaRetriever.from_pretrained(model)
        encoder = RetrieverEncoder(retriever, is_query=False)
        pool = make_pool(tmp / "data", n, image_size)
        batches = prepared_batches(encoder, pool, tmp / "data", batch_size)

        def raw():
            with torch.inference_mode():
                for b in batches:
                    encoder.forward(b)

        def pipeline(w):
            def go():
                out = Path(tempfile.mkdtemp(dir=tmp))
                shutil.rmtree(out)
                embed_pool(encoder, pool, tmp / "data", out, model_dir=model, shard_size=n, batch_size=batch_size,
                           num_workers=w)
                shutil.rmtree(out)
            return go

        fns = {"raw forward": raw, **{f"pipeline w={w}": pipeline(w) for w in workers}}
        times = interleaved(fns, repeats=repeats, warmup=1)
        rows = [{"side": name, "samples/s": stats([n / t for t in ts]),
                 "vs raw forward": paired_ratio(times["raw forward"], ts) if name != "raw forward" else None}
                for name, ts in times.items()]
        t_collate = time.perf_counter()
        prepared_batches(encoder, pool, tmp / "data", batch_size)
        collate_s = time.perf_counter() - t_collate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"title": "Embedding: `puma embed` pipeline vs raw model forward (same batches)",
            "meta": {"model": model if not str(model).startswith(str(tmp))
                     else f"tiny x{width} width, pruned to params' k",
                     "pool": n, "images": n // 2 + n % 2, "image size": image_size, "batch": batch_size,
                     "torch threads": threads, "repeats": repeats,
                     "preprocessing alone samples/s": n / collate_s},
            "rows": rows, "wall_s": time.perf_counter() - started,
            "notes": ["'vs raw forward' = pipeline samples/s / raw samples/s, paired per round (goal >= 0.9).",
                      ("Pipeline includes reading the pool, image decoding + preprocessing (workers), "
                       "the forward, fp16 conversion and atomic shard writes; model load is excluded.")]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: tiny pruned to params' k)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--width", type=int, default=1, help="widen the tiny model (heavier forward)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the section as JSON here")
    a = ap.parse_args()
    section = run(a.model, a.n, a.batch_size, tuple(a.workers), a.image_size, a.threads, a.repeats, a.width)
    text = json.dumps(section, indent=2, default=str)
    if a.out:
        write_text_atomic(a.out, text + "\n")
    print(text)
