"""What do a checkpoint's pictures tell its decoder? Linear probes of colour and shape (puma.model.probe).

For the image-only object pictures of MBEIR-mini's local pools: a ridge classifier's accuracy at reading the
object's colour and shape from the raw pixels' patch mean, from the vision tower's output tokens and from the
candidate prompt's [RET] state (fitted on 2/3 of the pictures, scored on the rest). A base whose vision tower
learnt to see should beat its random init (artifacts/tiny) on the tower's tokens, and its [RET] should read what
the tokens carry; session 27 found the shipped recipe's towers at most 0.1 better on colour and worse on shape,
and their [RET] reading less than the random base's (docs/results/reproducibility.md).

    python ablations/vision_probe.py artifacts/tiny artifacts/pretrained
    python ablations/vision_probe.py artifacts/pretrained artifacts/pretrained@4 --data data/mbeir --limit 600

``--captions``: also, for 192 captioned pictures of the train split, whether a caption and its picture meet
(puma.model.probe.caption_agreement): R@1 / MRR of the picture from its caption by [RET] cosine, and how often the
head names the caption's and the picture's colour and shape at [RET] (and the same word for both). Needs the
checkpoint's lm_head (the pretrained base; ``DIR@k`` reads the prefix's state with DIR's head). Session 28: the
shipped base names a caption's own colour word for 58% of captions, a picture's for 43%.

``--depth``: what each decoder layer writes into [RET] (the norm of its update), the norm of the residual after it,
and how close the embedding of the model pruned after it is to the full depth's (puma.model.probe.layer_contributions),
over the same captions and pictures. Session 29: on every pretrained base, layer 0's MLP writes ~1000 of a residual
that ends at ~1200 (the later layers 50-450 each), so the prefix k = 1 already gives cosine 0.8-0.9 to the full
depth's embedding: why zero-shot retrieval does not depend on k on MBEIR-mini.

Prints one row per checkpoint and a JSON summary. Needs data/mbeir (`dvc repro mbeir`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load(spec: str):
    """``DIR`` (any checkpoint of the pipeline: the base, a pruned model, a trained stage) or ``DIR@k`` (the base's
    first k decoder layers, puma.model.prune.load_pruned), with its processor."""
    from puma.model.processor import load_processor
    from puma.model.prune import load_pruned, load_qwen2vl

    path, _, k = spec.partition("@")
    return (load_pruned(path, int(k)) if k else load_qwen2vl(path)).eval(), load_processor(path)


def main(argv: list[str] | None = None) -> dict:
    import torch

    from puma.config import load_settings
    from puma.model.probe import (
        caption_agreement,
        caption_pictures,
        layer_contributions,
        lm_head_weight,
        probe_checkpoint,
    )
    from puma.train.pretrain import load_pairs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default=str(REPO / "data" / "mbeir"))
    ap.add_argument("--limit", type=int, default=960, help="pictures probed (2/3 fit, 1/3 scored)")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--captions", action="store_true", help="also caption/picture agreement (needs an lm_head)")
    ap.add_argument("--depth", action="store_true", help="also what each decoder layer writes into [RET] and how "
                    "close each prefix's embedding is to the full depth's (192 captions and their pictures)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prompt = load_settings(args.params).prompt
    summary = {}
    print(f"{'checkpoint':40s} {'colour: pixels vision [RET]':>30s} {'shape: pixels vision [RET]':>30s}")
    for ckpt in args.checkpoints:
        model, processor = load(ckpt)
        res = probe_checkpoint(model, processor, args.data, prompt, limit=args.limit)
        summary[ckpt] = res
        cells = ["  ".join(f"{res[a][k]:.2f}" for k in ("pixels", "vision", "ret")) + f" (chance {res[a]['chance']:.2f})"
                 for a in ("color", "shape")]
        print(f"{ckpt:40s} {cells[0]:>30s} {cells[1]:>30s}")
        if args.captions:
            head = lm_head_weight(ckpt.partition("@")[0])
            if head is None:
                print(f"{'':40s} captions: {ckpt} has no lm_head")
                continue
            rows = caption_pictures(load_pairs(args.data, 0))
            cap = res["captions"] = caption_agreement(model, processor, head, rows, prompt)
            print(f"{'':40s} captions ({cap['pairs']}): caption -> picture R@1 {cap['caption_to_picture']['r1']:.3f} "
                  f"MRR {cap['caption_to_picture']['mrr']:.3f}; head names " + "; ".join(
                      f"{a} text {cap[a]['text']:.2f} picture {cap[a]['picture']:.2f} agree {cap[a]['agree']:.2f}"
                      for a in ("color", "shape")))
        if args.depth:
            if "@" in ckpt:
                print(f"{'':40s} depth: {ckpt} is a prefix; give the full-depth checkpoint")
                continue
            rows = caption_pictures(load_pairs(args.data, 0))
            items = [{"text": r["text"], "image": None} for r, _ in rows] + [{"text": None, "image": r["image"]}
                                                                           for r, _ in rows]
            dep = res["depth"] = layer_contributions(model, processor, items, prompt)
            for key in ("update", "residual", "cos_to_final", "spread"):
                print(f"{'':40s} {key:>12s} by layer: " + " ".join(f"{v:8.2f}" for v in dep[key]))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
