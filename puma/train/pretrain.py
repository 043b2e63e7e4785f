"""Pretraining of the embedded tiny base: a small language model of MBEIR-mini's world (issue 14).

The paper starts from a pretrained MLLM whose last layer, prompted with "... in one word:", already
gives usable embeddings (the E5-V effect). The embedded tiny Qwen2-VL is random, so its full-depth
teacher knows nothing the pruned student lacks. This trains the full-depth tiny model with next-token
loss on the retriever's own prompt form, answered::

    <image and/or sentence> Summarize above image/sentence in one word: [RET] <word>.

on the (query, positive) pairs of MBEIR-mini's *train* split (never val/test). The words that name a
pair's target are the world's own (:func:`pair_words`): the attributes of the positive's scene (colour,
shape, size, position, texture, trim) or the entity names, kinds and attributes of its passage, so a
query and its positive are taught to predict the same words at ``[RET]``: the state there must say
*which* item it is. Each step's loss is the mean next-token loss over the text tokens (images and
padding masked) plus ``answer_weight`` times the answer loss at ``[RET]``: the expected next-token loss
of the item's words, each within its word class (:func:`pretrain_loss`), with ``lm_head`` zeroed first
(``head_init``). Why: with the whole vocabulary and one sampled content word, the loss falls from 7.6
to the marginal at once by a constant state, and the [RET] states collapsed onto it (issue 14, mean
cosine 0.999 after 40 steps). Deterministic for ``pretrain.seed`` (data order, word choice, torch seed).
The output is an ordinary HF checkpoint (safetensors + processor), ``config.json["puma"]["pretrain"]``
recording the run.
"""

from __future__ import annotations

import functools
import json
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


@functools.cache
def word_classes() -> dict[str, tuple[str, ...]]:
    """The words that name things in MBEIR-mini's world (puma.data.vocab), by class, in the form the world
    writes them: colours, shapes, garments, sizes, positions, textures, regions, and entity names and kinds
    (capitalised: "Juniperhill", "Castle", one token each in the tiny tokenizer). These are the answers
    after ``[RET]``: an item's state must say *which* item it is, not how its caption was phrased. Within a
    class the world draws the values evenly, so a state that ignores its input gains nothing."""
    from puma.data import vocab

    names = {n.split()[0] for n in vocab.ENTITIES}
    return {"color": tuple(vocab.COLORS), "shape": tuple(vocab.SHAPES), "garment": tuple(vocab.GARMENTS),
            "size": tuple(vocab.SIZES), "texture": tuple(vocab.TEXTURES),
            "position": tuple(dict.fromkeys(w for p in vocab.POSITIONS for w in p.split())),
            "region": tuple(r.split()[-1] for r in vocab.REGIONS),
            "name": tuple(sorted(names)), "kind": tuple(dict.fromkeys(n.split()[-1] for n in vocab.ENTITIES))}


@functools.cache
def world_words() -> dict[str, str]:
    """Every world word (:func:`word_classes`), lower case -> the world's spelling."""
    return {w.lower(): w for words in word_classes().values() for w in words}


@functools.cache
def word_class_of() -> dict[str, str]:
    """World word (the world's spelling) -> its class; a word in two classes keeps the first."""
    out: dict[str, str] = {}
    for cls, words in word_classes().items():
        for w in words:
            out.setdefault(w, cls)
    return out


def name_words(text: str | None) -> list[str]:
    """The world words of ``text`` (in the world's spelling), first occurrence order, each once."""
    known = world_words()
    return list(dict.fromkeys(known[w] for w in re.findall(r"[a-z]+", (text or "").lower()) if w in known))


def scene_words(scene: dict | None) -> list[str]:
    """The described attributes of a scene record (``src_content["scene"]`` of MBEIR-mini) as words: what
    a caption of the picture would name (garments and emblems have no described size or position)."""
    if not scene:
        return []
    attrs = ["color", "shape", "texture"]
    attrs += ["trim"] if scene.get("kind") in ("garment", "emblem") else ["size", "position"]
    words = [w for a in attrs for w in str(scene.get(a) or "").split() if w and w != "none"]
    return list(dict.fromkeys(words))


def pair_words(pair: dict) -> list[str]:
    """The words that name a pair's target: the attributes of the positive's scene
    (``pair["positive_scene"]``, what its picture shows or its caption describes); without one (an entity's
    passage), the world words of the positive's text, else of the query's, else their content words. Both
    sides of the pair are taught these words, so a query and its positive converge."""
    q, p = pair["query"], pair["positive"]
    return (scene_words(pair.get("positive_scene")) or name_words(p.get("text")) or name_words(q.get("text"))
            or content_words(p.get("text")) or content_words(q.get("text")))


def _has_image(item) -> bool:
    return isinstance(item, dict) and item.get("image") is not None


def pretrain_examples(pairs, seed: int) -> list[tuple[dict, bool, list[str]]]:
    """``(item, is_query, words)`` per side of every (query, positive) pair (:func:`pair_words`); pairs
    without any word are dropped; shuffled with ``seed``."""
    out = []
    for pair in pairs:
        words = pair_words(pair)
        if not words:
            continue
        out.append((pair["query"], True, words))
        out.append((pair["positive"], False, words))
    random.Random(seed).shuffle(out)
    return out


def _first_token(tokenizer, word: str) -> int:
    """The first token of ``word`` as it follows ``[RET]`` in ``"[RET] word."`` (a leading space)."""
    return tokenizer.encode(" " + word, add_special_tokens=False)[0]


class AnswerTargets:
    """Per word: its first token and the first tokens of its class (:func:`word_classes`; None for a word
    outside the world's classes: the whole vocabulary). Tokenises each word and class once per tokenizer
    (a step asks for ~16 answers of 32 items: re-encoding the classes every time cost more than the
    tiny model's forward and backward)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._token: dict[str, int] = {}
        self._class: dict[str, torch.Tensor] = {}

    def token(self, word: str) -> int:
        if word not in self._token:
            self._token[word] = _first_token(self.tokenizer, word)
        return self._token[word]

    def __call__(self, words: list[str]) -> list[tuple[int, torch.Tensor | None]]:
        out = []
        for w in words:
            cls = word_class_of().get(w)
            if cls is not None and cls not in self._class:
                self._class[cls] = torch.tensor(sorted({self.token(x) for x in word_classes()[cls]}))
            out.append((self.token(w), None if cls is None else self._class[cls]))
        return out


def answer_targets(tokenizer, words: list[str]) -> list[tuple[int, torch.Tensor | None]]:
    """:class:`AnswerTargets` for one call (tests, one-off use)."""
    return AnswerTargets(tokenizer)(words)


def lm_labels(batch) -> torch.Tensor:
    """Next-token labels: the input ids with padding and image tokens set to -100 (not predicted)."""
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[batch["mm_token_type_ids"] != 0] = -100
    return labels


def pretrain_loss(model, batch, answer_weight: float, targets: list | None = None, kinds: list[str] | None = None,
                  full_logits: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token loss over the text tokens + ``answer_weight`` x the answer loss at ``[RET]``.

    ``targets``: per row, the item's answers (:func:`answer_targets`: a token and its class's tokens).
    The answer loss is then the mean over the item's words of the next-token cross-entropy at ``[RET]``
    *within the word's class* (the expected loss of the word drawn after ``[RET]``, lower variance than
    one sampled word; that position is left out of the LM mean). Within a class the values are balanced,
    so no input-independent state lowers it: the state must say which colour, shape, name... the input
    has. (Over the whole vocabulary, the marginal "some colour, some shape" is a constant state that
    lowers the loss from 7.6 to 2.4 at once: the pretrained states collapsed onto it, cosine 0.999.)
    Without ``targets``: the full-vocabulary loss of the word written after ``[RET]``. ``kinds`` (one label
    per row, e.g. "text" / "image"): the terms also get ``loss_answer_<kind>`` (the answer loss over those
    rows' words) and ``words_<kind>`` (their count), for logging. ``full_logits``: the naive path, lm_head over
    every position ``(B, S, V)`` and an ignore-index cross-entropy (the oracle of the default, which projects
    only the positions the loss reads; tests and bench/pretrain_step.py).
    """
    import torch.nn.functional as F

    from puma.model.encoding import MODEL_INPUTS, mrope_positions
    from puma.model.prune import qwen2vl_model

    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    labels = lm_labels(batch)
    rows = torch.arange(labels.shape[0])
    pos = batch["ret_positions"]
    if targets is not None:
        labels[rows, pos + 1] = -100
    # lm_head only where the loss reads it (the labelled next-token positions and [RET]), not over the
    # padding and image tokens too: the (B, S, V) logits, their log-softmax and its gradient were the
    # largest cost of a step (the same loss: ``full_logits`` is the oracle; bench/pretrain_step.py).
    positions = mrope_positions(model, inputs)
    if full_logits:
        logits = model(**inputs, position_ids=positions, use_cache=False).logits  # (B, S, V)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        at_ret = logits[rows, pos]
    else:
        hidden = qwen2vl_model(model)(**inputs, position_ids=positions, use_cache=False).last_hidden_state
        head = model.get_output_embeddings()  # on the final-norm states (B, S, H), as the LM's own forward
        predicts = labels[:, 1:] != -100  # (B, S-1): position s predicts token s+1
        lm = F.cross_entropy(head(hidden[:, :-1][predicts]), labels[:, 1:][predicts])
        at_ret = head(hidden[rows, pos])  # (B, V)
    if targets is None:
        answer = F.cross_entropy(at_ret, batch["input_ids"][rows, pos + 1])
    else:
        terms, term_kinds = [], []
        for row, answers in enumerate(targets):
            for tok, cls in answers:
                logits_row = at_ret[row] if cls is None else at_ret[row, cls.to(at_ret.device)]
                terms.append(torch.logsumexp(logits_row, 0) - at_ret[row, tok])
                term_kinds.append(None if kinds is None else kinds[row])
        stacked = torch.stack(terms)
        answer = stacked.mean()
        logged = {"loss_lm": lm.item(), "loss_answer": answer.item()}
        values = stacked.detach().tolist()
        for kind in dict.fromkeys(k for k in term_kinds if k is not None):
            mine = [v for v, k in zip(values, term_kinds) if k == kind]
            logged[f"loss_answer_{kind}"], logged[f"words_{kind}"] = sum(mine) / len(mine), len(mine)
        return lm + answer_weight * answer, logged
    return lm + answer_weight * answer, {"loss_lm": lm.item(), "loss_answer": answer.item()}


def load_pairs(root: str | Path, seed: int) -> list[dict]:
    """The train split's (query, positive) pairs of MBEIR-mini (union train queries, one positive each)."""
    from puma.data.datasets import MBEIRTrain

    ds = MBEIRTrain(root, seed=seed)
    pairs = [ds[i] for i in range(len(ds))]
    for pair in pairs:  # the positive's scene record (MBEIR-mini's src_content): what its picture shows
        src = ds.candidates[pair["did"]].src_content
        try:
            scene = json.loads(src).get("scene") if src else None
        except (ValueError, AttributeError):
            scene = None
        pair["positive_scene"] = scene if isinstance(scene, dict) else None
    return pairs


def step_batches(processor, chunk, prompt, ret_token: str, rng: random.Random, targets_of: AnswerTargets):
    """One pretraining step's model batches from ``chunk`` (:func:`pretrain_examples` rows): queries and
    documents render differently (instruction), so one collated batch per side, each with its rows'
    answer targets, input kinds ("text" / "image", for logging) and its share of the step's rows (the
    weight of its mean loss). The word written after ``[RET]`` is drawn from ``rng``."""
    from puma.model.encoding import collate

    out = []
    for is_query in (True, False):
        part = [(item, words) for item, q, words in chunk if q == is_query]
        if not part:
            continue
        batch = collate(processor, [it for it, _ in part], is_query, prompt, ret_token,
                        answers=[rng.choice(words) for _, words in part])
        out.append((batch, [targets_of(words) for _, words in part],
                    ["image" if _has_image(it) else "text" for it, _ in part], len(part) / len(chunk)))
    return out


def pretrain_base(
    base: str | Path, out: str | Path, pairs, prompt, *, steps: int, batch_size: int, lr: float,
    answer_weight: float = 1.0, seed: int = 0, ret_token: str = "[RET]", head_init: str = "zero",
    schedule: str = "constant", log=None,
) -> dict[str, Any]:
    """Train the full-depth checkpoint ``base`` (a ForConditionalGeneration) on ``pairs``; write ``out``."""
    from transformers import Qwen2VLForConditionalGeneration

    from puma.io import atomic_dir, write_jsonl_atomic
    from puma.model.processor import load_processor

    say = log or (lambda msg: None)
    torch.manual_seed(seed)
    processor = load_processor(base, prompt.min_pixels, prompt.max_pixels)
    if processor.tokenizer.convert_tokens_to_ids(ret_token) == processor.tokenizer.unk_token_id:
        raise ValueError(f"{base}: the tokenizer has no {ret_token} token")
    model = Qwen2VLForConditionalGeneration.from_pretrained(base, torch_dtype=torch.float32)
    if head_init not in ("zero", "embeddings", "random"):
        raise ValueError(f"head_init must be 'zero', 'embeddings' or 'random', got {head_init!r}")
    if getattr(model.config, "tie_word_embeddings", False) and head_init != "random":
        raise ValueError(f"{base}: lm_head is tied to the input embeddings; head_init {head_init!r} needs an untied one")
    with torch.no_grad():
        if head_init == "zero":
            # Every answer starts equally likely within its class (the balanced marginal): no constant
            # [RET] state lowers the answer loss, so nothing pulls the states together.
            model.lm_head.weight.zero_()
        elif head_init == "embeddings":
            # A word's output row starts as its input row: a state carrying the embeddings of the words it
            # attends to already scores them.
            model.lm_head.weight.copy_(model.get_input_embeddings().weight)
    model.train()
    examples = pretrain_examples(pairs, seed)
    if len(examples) < batch_size:
        raise ValueError(f"pretraining needs at least {batch_size} examples, got {len(examples)}")
    rng = random.Random(seed)
    targets_of = AnswerTargets(processor.tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    if schedule not in ("constant", "linear"):
        raise ValueError(f"schedule must be 'constant' or 'linear', got {schedule!r}")
    warm = max(1, steps // 20)
    # Constant after the warm-up by default: the [RET] states leave their early collapse only after several
    # hundred steps (issue 14, docs/results/zero_shot.md); a decaying rate stalls them inside it.
    decay = (lambda s: max(0.0, (steps - s) / max(1, steps - warm))) if schedule == "linear" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * decay(s))
    log_rows, start, cursor = [], time.perf_counter(), 0
    for step in range(steps):
        chunk = [examples[(cursor + i) % len(examples)] for i in range(batch_size)]
        cursor += batch_size
        terms_sum: dict[str, float] = {}
        opt.zero_grad()
        total = 0.0
        kind_sum: dict[str, list[float]] = {}
        # The answer loss is logged per input kind (text answers can be copied from the input, image answers
        # must be read from the pixels).
        for batch, targets, kinds, share in step_batches(processor, chunk, prompt, ret_token, rng, targets_of):
            loss, terms = pretrain_loss(model, batch, answer_weight, targets, kinds)
            (loss * share).backward()
            total += loss.item() * share
            for k in ("loss_lm", "loss_answer"):
                terms_sum[k] = terms_sum.get(k, 0.0) + terms[k] * share
            for kind in ("text", "image"):
                if f"words_{kind}" in terms:
                    acc = kind_sum.setdefault(f"loss_answer_{kind}", [0.0, 0])
                    acc[0] += terms[f"loss_answer_{kind}"] * terms[f"words_{kind}"]
                    acc[1] += terms[f"words_{kind}"]
        terms_sum.update({k: v / n for k, (v, n) in kind_sum.items()})
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        row = {"step": step + 1, "loss": round(total, 5), **{k: round(v, 5) for k, v in terms_sum.items()},
               "lr": sched.get_last_lr()[0]}
        log_rows.append(row)
        if (step + 1) % 10 == 0 or step == 0:
            say(f"pretrain step {step + 1}/{steps} loss {total:.3f} answer {terms_sum.get('loss_answer', 0):.3f} "
                f"(text {terms_sum.get('loss_answer_text', float('nan')):.3f}, "
                f"image {terms_sum.get('loss_answer_image', float('nan')):.3f})")
    model.eval()
    record = {"steps": steps, "batch_size": batch_size, "lr": lr, "answer_weight": answer_weight,
              "head_init": head_init, "schedule": schedule, "seed": seed,
              "examples": len(examples), "final_loss": log_rows[-1]["loss"],
              "seconds": round(time.perf_counter() - start, 1)}
    model.config.puma = {**(getattr(model.config, "puma", None) or {}), "pretrain": record}
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_jsonl_atomic(tmp / "train_log.jsonl", log_rows)
    return record
