"""Pretraining step of the embedded tiny base: the default loss vs its naive oracle.

One step = the two collated batches of ``puma.train.pretrain.step_batches`` (queries, documents) of one
MBEIR-mini train chunk, each ``pretrain_loss`` + backward (no optimizer step: both sides do identical
work on identical weights). The default projects only the labelled next-token positions and ``[RET]``
through ``lm_head`` and takes one logsumexp per answer word class; ``full_logits=True`` is the naive path
(``(B, S, V)`` logits, ignore-index cross-entropy, one answer word at a time), the oracle of
tests/pipeline/test_pretrain.py. Interleaved round by round in one process
(``bench.harness.interleaved``); the per-round ratio naive / default is reported.

    python bench/pretrain_step.py        # prints the section as JSON and the ratio
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/pretrain_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.harness import interleaved, paired_ratio, stats


def run(settings=None, repeats: int = 7) -> dict[str, Any]:
    from transformers import Qwen2VLForConditionalGeneration

    from puma.config import load_settings
    from puma.data.corpus import tokenizer_corpus
    from puma.data.synth import synth_mbeir
    from puma.model.processor import load_processor
    from puma.model.tiny import save_tiny
    from puma.train.pretrain import (
        AnswerTargets,
        lm_labels,
        load_pairs,
        pretrain_examples,
        pretrain_loss,
        step_batches,
    )

    settings = load_settings() if settings is None else settings
    cfg = settings.pretrain
    torch.set_num_threads(1)  # shared cores: one thread keeps both sides equally exposed to load
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = save_tiny(tmp / "base", seed=settings.model.tiny_seed, num_layers=settings.model.depth,
                          corpus=tokenizer_corpus(settings.model.tiny_seed))
        root = synth_mbeir(tmp / "mbeir", seed=settings.data.synth_seed, scale=0.25)
        examples = pretrain_examples(load_pairs(root, cfg.seed), cfg.seed)
        processor = load_processor(base, settings.prompt.min_pixels, settings.prompt.max_pixels)
        model = Qwen2VLForConditionalGeneration.from_pretrained(base, torch_dtype=torch.float32).train()
        torch.nn.init.normal_(model.lm_head.weight, std=0.02)
        parts = step_batches(processor, examples[:cfg.batch_size], settings.prompt, settings.model.ret_token,
                             random.Random(0), AnswerTargets(processor.tokenizer))

        def step(full: bool) -> None:
            for part in parts:
                loss, _ = pretrain_loss(model, part.batch, cfg.answer_weight, part.targets, part.kinds, full_logits=full)
                loss.backward()
            model.zero_grad(set_to_none=True)

        times = interleaved({"naive": lambda: step(True), "default": lambda: step(False)},
                            repeats=repeats, warmup=1)
        batches = [p.batch for p in parts]
        seq = [int(b["input_ids"].shape[1]) for b in batches]
        rows = sum(int(b["input_ids"].shape[0]) for b in batches)
        read = sum(int((lm_labels(b)[:, 1:] != -100).sum()) + len(b["input_ids"]) for b in batches)  # + [RET]
        total = sum(b["input_ids"].numel() for b in batches)
    ratio = paired_ratio(times["naive"], times["default"])
    row = {"model": f"tiny Qwen2-VL, {settings.model.depth} layers, vocab {model.config.text_config.vocab_size}",
           "batch": f"{rows} rows (queries + documents)", "seq": "/".join(map(str, seq)),
           "positions read / all": f"{read} / {total}",
           "naive step s": stats(times["naive"]), "default step s": stats(times["default"]),
           "naive / default": ratio}
    return {"title": "Pretraining step: lm_head over read positions, answers per class vs the naive loss",
            "meta": {"threads": 1, "dtype": "float32"}, "rows": [row],
            "notes": [("Same two collated batches on both sides (MBEIR-mini train rows, images included); a step is "
                       "pretrain_loss + backward per batch, no optimizer step. The loss is the same (oracle test).")]}


if __name__ == "__main__":
    section = run()
    print(json.dumps(section, indent=1))
    print(f"pretraining step, naive / default: {section['rows'][0]['naive / default']['median']:.2f}x")
