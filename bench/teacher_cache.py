"""Stage-1 step time with the cached teacher vs the live teacher, on the same batch.

One training step = student forward on queries + positives, teacher states (a full-depth forward, or a
lookup in the on-disk cache), Eq. 4 loss, backward, AdamW step. Both sides run the *same* pre-collated
batch, interleaved round by round in one process (``bench.harness.interleaved``), and the per-round
ratio live / cached is reported. The model is the embedded tiny Qwen2-VL (``model.depth`` layers,
student pruned to ``model.prune_layers``), built in a temporary directory.

    python bench/teacher_cache.py        # prints the section as JSON and the ratio
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/teacher_cache.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.harness import interleaved, paired_ratio, stats


def _pairs(n: int, image_dir: Path) -> list[dict]:
    """Half text pairs, half (text -> image) pairs, like a mixed batch."""
    from PIL import Image

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]
    pairs = []
    for i in range(n):
        if i % 2:
            path = image_dir / f"{i}.png"
            Image.new("RGB", (56, 56), colours[i % 4]).save(path)
            pairs.append({"query": {"text": f"picture number {i}"}, "positive": {"image": str(path)}})
        else:
            pairs.append({"query": {"text": f"sentence {i} about a cat"}, "positive": {"text": f"a cat, {i}"}})
    return pairs


def run(settings=None, batch_size: int = 16, repeats: int = 7) -> dict[str, Any]:
    from puma.config import load_settings
    from puma.data.corpus import tokenizer_corpus
    from puma.model.prune import save_pruned
    from puma.model.tiny import save_tiny
    from puma.train.loop import ADAM_BETAS, ADAM_EPS, StepContext
    from puma.train.runner import PairCollator, RetEncoder, load_lora_student
    from puma.train.stage1 import Teacher, build_teacher_cache, stage1_loss
    from puma.train.teacher_cache import TeacherCache, load_teacher

    settings = (settings or load_settings()).model_copy(deep=True)
    torch.set_num_threads(1)  # shared cores: one thread keeps both sides equally exposed to load
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = save_tiny(tmp / "base", seed=settings.model.tiny_seed, num_layers=settings.model.depth,
                          corpus=tokenizer_corpus(settings.model.tiny_seed))
        settings.model.base = str(base)
        k = settings.model.prune_layers
        pruned = save_pruned(base, k, tmp / "pruned")
        (tmp / "img").mkdir()
        pairs = _pairs(batch_size, tmp / "img")
        build_teacher_cache(settings, pruned, tmp / "cache", dataset=pairs, batch_size=batch_size, progress=False)
        peft_model, processor, ret_id = load_lora_student(pruned, settings, settings.stage1)
        student = RetEncoder(peft_model).train()
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4,
                                      betas=ADAM_BETAS, eps=ADAM_EPS)
        batch = PairCollator(processor, settings.prompt, settings.model.ret_token)(pairs)
        ctx = StepContext(0, 0, 100, 100, 1, torch.device("cpu"))
        teachers = {"live": Teacher(model=load_teacher(base, pruned, ret_id)),
                    "cached": Teacher(cache=TeacherCache(tmp / "cache"))}

        def step(teacher):
            loss, _ = stage1_loss(student, teacher, batch, ctx, settings.stage1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = interleaved({name: (lambda t=t: step(t)) for name, t in teachers.items()},
                            repeats=repeats, warmup=1)
        seq = int(batch.inputs["input_ids"].shape[1])
    ratio = paired_ratio(times["live"], times["cached"])
    row = {"model": f"tiny Qwen2-VL, student {k}/{settings.model.depth} layers", "batch": f"{batch_size} pairs",
           "seq": seq, "live step s": stats(times["live"]), "cached step s": stats(times["cached"]),
           "live / cached": ratio}
    return {"title": "Stage-1 step: cached vs live teacher", "meta": {"threads": 1, "dtype": "float32"},
            "rows": [row],
            "notes": [("Same collated batch on both sides; a step is student forward + teacher states + Eq. 4 "
                       "loss + backward + AdamW step. The cached side reads the teacher's [RET] states from "
                       "the on-disk cache (safetensors shards).")]}


if __name__ == "__main__":
    section = run()
    print(json.dumps(section, indent=1))
    print(f"step time live / cached teacher: {section['rows'][0]['live / cached']['median']:.2f}x")
