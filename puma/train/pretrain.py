"""Pretraining of the embedded tiny base: a small language model of MBEIR-mini's world (issue 14).

The paper starts from a pretrained MLLM whose last layer, prompted with "... in one word:", already
gives usable embeddings (the E5-V effect). The embedded tiny Qwen2-VL is random, so its full-depth
teacher knows nothing the pruned student lacks. This trains the full-depth tiny model with next-token
loss on the retriever's own prompt form, answered::

    <image and/or sentence> Summarize above image/sentence in one word: [RET] <word>.

on the (query, positive) pairs of MBEIR-mini's *train* split (never val/test). The word is drawn from
the content words of the pair's text (the caption, passage or edit), so a query and its positive are
taught to predict the same words at ``[RET]``: the state there comes to summarise the content. Each
step's loss is the mean next-token loss over the text tokens (images and padding masked) plus
``answer_weight`` times the loss of the word at ``[RET]``. Deterministic for ``pretrain.seed`` (data
order, word choice, torch seed). The output is an ordinary HF checkpoint (safetensors + processor),
``config.json["puma"]["pretrain"]`` recording the run.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any

import torch

_STOP = """a an the of in on at to and or with is are was were be that this it its as by for from
there some one two few image picture photo find show shows change make same similar similarly but which what who
where when how about than then into onto over under near like look looks looking has have had not no more less
above below placed set also each other"""
STOPWORDS = frozenset(_STOP.split())


def content_words(text: str | None) -> list[str]:
    """Lower-case words of ``text`` that name something (no stop words, no numbers)."""
    return [w for w in re.findall(r"[a-z]+", (text or "").lower()) if w not in STOPWORDS and len(w) > 1]


def pretrain_examples(pairs, seed: int) -> list[tuple[dict, bool, list[str]]]:
    """``(item, is_query, words)`` per side of every (query, positive) pair: both sides get the words of
    the pair's text (the positive's when it has text, else the query's), so they learn the same answers."""
    out = []
    for pair in pairs:
        q, p = pair["query"], pair["positive"]
        words = content_words(p.get("text")) or content_words(q.get("text"))
        if not words:
            continue
        out.append((q, True, words))
        out.append((p, False, words))
    random.Random(seed).shuffle(out)
    return out


def lm_labels(batch) -> torch.Tensor:
    """Next-token labels: the input ids with padding and image tokens set to -100 (not predicted)."""
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[batch["mm_token_type_ids"] != 0] = -100
    return labels


def pretrain_loss(model, batch, answer_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token loss over text tokens + ``answer_weight`` x the loss of the word at ``[RET]``."""
    import torch.nn.functional as F

    from puma.model.encoding import MODEL_INPUTS, mrope_positions

    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    logits = model(**inputs, position_ids=mrope_positions(model, inputs), use_cache=False).logits  # (B, S, V)
    labels = lm_labels(batch)
    lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    rows = torch.arange(logits.shape[0])
    pos = batch["ret_positions"]
    answer = F.cross_entropy(logits[rows, pos], batch["input_ids"][rows, pos + 1])
    return lm + answer_weight * answer, {"loss_lm": lm.item(), "loss_answer": answer.item()}


def load_pairs(root: str | Path, seed: int) -> list[dict]:
    """The train split's (query, positive) pairs of MBEIR-mini (union train queries, one positive each)."""
    from puma.data.datasets import MBEIRTrain

    ds = MBEIRTrain(root, seed=seed)
    return [ds[i] for i in range(len(ds))]


def pretrain_base(
    base: str | Path, out: str | Path, pairs, prompt, *, steps: int, batch_size: int, lr: float,
    answer_weight: float = 1.0, seed: int = 0, ret_token: str = "[RET]", log=None,
) -> dict[str, Any]:
    """Train the full-depth checkpoint ``base`` (a ForConditionalGeneration) on ``pairs``; write ``out``."""
    from transformers import Qwen2VLForConditionalGeneration

    from puma.io import atomic_dir, write_jsonl_atomic
    from puma.model.encoding import collate
    from puma.model.processor import load_processor

    say = log or (lambda msg: None)
    torch.manual_seed(seed)
    processor = load_processor(base, prompt.min_pixels, prompt.max_pixels)
    if processor.tokenizer.convert_tokens_to_ids(ret_token) == processor.tokenizer.unk_token_id:
        raise ValueError(f"{base}: the tokenizer has no {ret_token} token")
    model = Qwen2VLForConditionalGeneration.from_pretrained(base, torch_dtype=torch.float32)
    model.train()
    examples = pretrain_examples(pairs, seed)
    if len(examples) < batch_size:
        raise ValueError(f"pretraining needs at least {batch_size} examples, got {len(examples)}")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm)))
    log_rows, start, cursor = [], time.perf_counter(), 0
    for step in range(steps):
        chunk = [examples[(cursor + i) % len(examples)] for i in range(batch_size)]
        cursor += batch_size
        # Queries and documents render differently (instruction); one collate call per kind.
        terms_sum: dict[str, float] = {}
        opt.zero_grad()
        total = 0.0
        for is_query in (True, False):
            part = [(item, words) for item, q, words in chunk if q == is_query]
            if not part:
                continue
            batch = collate(processor, [it for it, _ in part], is_query, prompt, ret_token,
                            answers=[rng.choice(words) for _, words in part])
            loss, terms = pretrain_loss(model, batch, answer_weight)
            (loss * len(part) / batch_size).backward()
            total += loss.item() * len(part) / batch_size
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v * len(part) / batch_size
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        row = {"step": step + 1, "loss": round(total, 5), **{k: round(v, 5) for k, v in terms_sum.items()},
               "lr": sched.get_last_lr()[0]}
        log_rows.append(row)
        if (step + 1) % 10 == 0 or step == 0:
            say(f"pretrain step {step + 1}/{steps} loss {total:.3f} answer {terms_sum.get('loss_answer', 0):.3f}")
    model.eval()
    record = {"steps": steps, "batch_size": batch_size, "lr": lr, "answer_weight": answer_weight, "seed": seed,
              "examples": len(examples), "final_loss": log_rows[-1]["loss"],
              "seconds": round(time.perf_counter() - start, 1)}
    model.config.puma = {**(getattr(model.config, "puma", None) or {}), "pretrain": record}
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_jsonl_atomic(tmp / "train_log.jsonl", log_rows)
    return record
