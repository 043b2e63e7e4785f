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
from dataclasses import dataclass
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
    (capitalised: "Juniperhill", "Castle"; a word's answer is its first token that is not a bare space,
    :func:`_first_token`). These are the answers after ``[RET]``: an item's state must say *which* item it
    is, not how its caption was phrased. Within a class the world draws the values evenly, so a state that
    ignores its input gains nothing."""
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


def described_attributes(scene: dict | None) -> dict[str, str]:
    """The attributes of a scene record (``src_content["scene"]`` of MBEIR-mini) that a caption of its picture
    names, attribute -> value: colour, shape and texture, then the trim of garments and emblems or the size and
    position of objects; a value "none" or empty is not described."""
    if not scene:
        return {}
    attrs = ["color", "shape", "texture"]
    attrs += ["trim"] if scene.get("kind") in ("garment", "emblem") else ["size", "position"]
    values = {a: str(scene.get(a) or "").strip() for a in attrs}
    return {a: v for a, v in values.items() if v and v != "none"}


def scene_words(scene: dict | None) -> list[str]:
    """The described attributes of a scene record (:func:`described_attributes`) as words: what a caption of
    the picture would name (garments and emblems have no described size or position)."""
    words = [w for v in described_attributes(scene).values() for w in v.split()]
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


def caption_row(pair: dict) -> dict | None:
    """A captioned picture from a pair whose one side is a picture alone and the other its text alone (MBEIR-mini's
    caption columns: caption -> image, image -> caption): ``{"image": picture, "text": caption}``, else None. In
    the retriever's candidate form its caption is text after the picture, so the next-token loss on it is
    captioning: every caption word is predicted from the picture and the words before it."""
    q, p = pair["query"], pair["positive"]
    for img, txt in ((q, p), (p, q)):
        if _has_image(img) and not img.get("text") and not _has_image(txt) and txt.get("text"):
            return {"image": img["image"], "text": txt["text"]}
    return None


def scene_pictures(pairs) -> list[tuple[dict, dict[str, str]]]:
    """The distinct pictures of the train pairs whose scene is known, each as ``(item, attributes)``: a positive
    with a picture (its scene record, ``pair["positive_scene"]``, is what its picture shows), and the picture of
    a caption pair (:func:`caption_row`: the caption's scene is the picture's). The item is
    the picture alone; ``attributes`` the described ones (:func:`described_attributes`). In pair order, each
    picture once: the data of the vision stage (:mod:`puma.train.vision_stage`)."""
    out, seen = [], set()
    for pair in pairs:
        scene = pair.get("positive_scene")
        if not scene:
            continue
        pictures = [pair["positive"]["image"]] if _has_image(pair["positive"]) else []
        if (row := caption_row(pair)) is not None:
            pictures.append(row["image"])
        for image in pictures:
            key = str(image)
            if key not in seen:
                seen.add(key)
                out.append(({"image": image, "text": None}, described_attributes(scene)))
    return out


def pretrain_examples(pairs, seed: int, caption_rows: bool = False) -> list[tuple[dict, bool, list[str]]]:
    """``(item, is_query, words)`` per side of every (query, positive) pair (:func:`pair_words`); pairs
    without any word are dropped; with ``caption_rows`` (``pretrain.caption_rows``) a caption pair also gives
    its captioned picture (:func:`caption_row`, in the candidate form, the pair's words); shuffled with
    ``seed``."""
    out = []
    for pair in pairs:
        words = pair_words(pair)
        if not words:
            continue
        out.append((pair["query"], True, words))
        out.append((pair["positive"], False, words))
        if caption_rows and (row := caption_row(pair)) is not None:
            out.append((row, False, words))
    random.Random(seed).shuffle(out)
    return out


def _picture_only(item) -> bool:
    return _has_image(item) and not item.get("text")


def step_chunks(examples: list, step_rows: int, steps: int, text_steps: int = 0, align_steps: int = 0):
    """Each pretraining step's rows (``step_rows`` of :func:`pretrain_examples`), in order: the first
    ``text_steps`` steps cycle through the text-only rows, the next ``align_steps`` through the rows that are a
    picture alone (the alignment phase, :func:`pretrain_base`), the rest through all rows from the start.

    The text phase is the miniature of an MLLM's history (Qwen2-VL's language model was a pretrained Qwen2
    before it saw pictures): on text rows the answer can be copied from the input, and the ``[RET]`` states
    learn to read their input there without the image rows' answers, which the untrained vision tower cannot
    yet see, adding noise. Without it, when the states leave their early collapse was a draw over seeds and
    machines (docs/results/reproducibility.md)."""
    if not 0 <= text_steps <= steps or align_steps < 0 or text_steps + align_steps > steps:
        raise ValueError(f"pretrain.text_steps + align_steps must be within 0..steps ({steps}), got {text_steps} + "
                         f"{align_steps}")
    text = [e for e in examples if not _has_image(e[0])]
    if text_steps and len(text) < step_rows:
        raise ValueError(f"pretrain.text_steps: a text step needs {step_rows} text rows, the data has {len(text)}")
    pictures = [e for e in examples if _picture_only(e[0])]
    if align_steps and len(pictures) < step_rows:
        raise ValueError(f"pretrain.align_steps: an alignment step needs {step_rows} rows of a picture alone, the "
                         f"data has {len(pictures)}")
    cursor = text_cursor = picture_cursor = 0
    for step in range(steps):
        if step < text_steps:
            yield [text[(text_cursor + i) % len(text)] for i in range(step_rows)]
            text_cursor += step_rows
        elif step < text_steps + align_steps:
            yield [pictures[(picture_cursor + i) % len(pictures)] for i in range(step_rows)]
            picture_cursor += step_rows
        else:
            yield [examples[(cursor + i) % len(examples)] for i in range(step_rows)]
            cursor += step_rows


def head_param_groups(model, lr: float) -> list[dict]:
    """The optimiser's parameter groups of base pretraining, all at ``lr`` (:func:`lr_factors` scales them per
    step): the language model (every parameter not below), lm_head, then the vision tower (``model.visual``).
    The schedule scales the head's group by ``pretrain.head_lr_scale`` for the first ``pretrain.head_lr_steps``
    steps and the vision tower's by ``pretrain.vision_lr_scale`` throughout (:func:`pretrain_base`).

    Why a slower head at first: at the start every ``[RET]`` state is nearly the same vector (mean cosine
    0.998 on the tiny base), so the head's gradient is dominated by the batch's label counts along that shared vector, noise
    that Adam's per-coordinate normalisation turns into full-size steps; under a head that random-walks, a
    state that varies with its input only adds loss, and the states collapsed onto one and left the collapse
    at a step that was a draw over seeds and machines (docs/results/reproducibility.md). Once the states say
    what their input is, the head learns at the full rate.

    The vision tower's own rate (``pretrain.vision_lr_scale``, 1 in the shipped recipe): at the language model's
    rate the tower's output grows from 0.2 per visual token on the tiny base to 130-1000 after 1000-4000 steps
    (text embedding rows ~0.7); a tenth of the rate keeps it at ~5, but the ``[RET]`` state reads the pictures
    no better (docs/results/reproducibility.md, session 27)."""
    from puma.model.prune import vision_tower

    head = model.get_output_embeddings().weight
    visual = vision_tower(model)
    vision = list(visual.parameters()) if visual is not None else []
    seen = {id(head), *map(id, vision)}
    rest = [p for p in model.parameters() if id(p) not in seen]
    return [{"params": rest, "lr": lr}, {"params": [head], "lr": lr}, {"params": vision, "lr": lr}]


def lr_factors(steps: int, schedule: str = "constant", head_lr_scale: float = 1.0, head_lr_steps: int = 0,
               vision_lr_scale: float = 1.0, align: range = range(0), align_lr_scale: float = 1.0):
    """The learning-rate factor per step of :func:`head_param_groups`' three groups (``LambdaLR``'s lambdas: the
    language model, lm_head, the vision tower): a linear warm-up over the first 5% of the steps, then constant
    (``schedule: constant``) or a linear decay to 0 (``linear``); the head's factor is also scaled by
    ``head_lr_scale`` for the first ``head_lr_steps`` steps, the vision tower's by ``vision_lr_scale``, except
    in the alignment steps ``align`` (:func:`pretrain_base`: the language model frozen), where it is
    ``align_lr_scale``."""
    if schedule not in ("constant", "linear"):
        raise ValueError(f"schedule must be 'constant' or 'linear', got {schedule!r}")
    if head_lr_scale <= 0 or head_lr_steps < 0 or vision_lr_scale <= 0 or align_lr_scale <= 0:
        raise ValueError(f"pretrain.head_lr_scale, vision_lr_scale and align_lr_scale must be > 0 and head_lr_steps "
                         f">= 0, got {head_lr_scale}, {vision_lr_scale}, {align_lr_scale}, {head_lr_steps}")
    warm = max(1, steps // 20)

    def body(s: int) -> float:
        # Constant after the warm-up by default: the [RET] states leave their early collapse only after some
        # hundred steps (issue 14, docs/results/zero_shot.md); a decaying rate stalls them inside it.
        decay = max(0.0, (steps - s) / max(1, steps - warm)) if schedule == "linear" else 1.0
        return min(1.0, (s + 1) / warm) * decay

    def head(s: int) -> float:
        return body(s) * (head_lr_scale if s < head_lr_steps else 1.0)

    def vision(s: int) -> float:
        return body(s) * (align_lr_scale if s in align else vision_lr_scale)

    return [body, head, vision]


def _first_token(tokenizer, word: str) -> int:
    """The first token of ``word`` as it follows ``[RET]`` in ``"[RET] word."`` (a leading space) that is not
    whitespace alone. A word the tokenizer has no space-prefixed token for starts with a bare space token
    (87 of MBEIR-mini's 384 entity names in the tiny tokenizer: " Northwater" = "Ġ" + "Northwater"); that
    token names no word, and as their shared answer it was a within-class shortcut a constant state could
    learn (23% of the name class on one token)."""
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    return next((i for i in ids if tokenizer.decode([i]).strip()), ids[0])


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


# The fixed words between an item's content and ``[RET]`` (puma.model.prompts.build_messages:
# "\nSummarize above ... in one word: " and the assistant turn's opening), from the first word on: the
# newline before it can merge with the content's last character in a BPE tokenizer.
SUFFIX_START = "Summarize above"


@functools.cache
def _suffix_pattern_cached(tokenizer) -> tuple[int, ...]:
    ids = tokenizer.encode("\n" + SUFFIX_START, add_special_tokens=False)
    if not ids or tokenizer.decode(ids[:1]) != "\n":
        raise ValueError(f"the tokenizer merges the newline into {SUFFIX_START!r}: cannot find the template")
    return tuple(ids[1:])


def template_span_starts(input_ids: torch.Tensor, ret_positions: torch.Tensor, tokenizer) -> list[int]:
    """Per row, the index where the fixed prompt suffix starts (the last ``"Summarize above"`` before the row's
    ``[RET]``). Raises naming the row when a row has none (not a retriever prompt)."""
    pattern = _suffix_pattern_cached(tokenizer)
    n, starts = len(pattern), []
    for row, ret in enumerate(ret_positions.tolist()):
        ids = input_ids[row, :ret].tolist()
        start = next((i for i in range(ret - n, -1, -1) if tuple(ids[i:i + n]) == pattern), None)
        if start is None:
            raise ValueError(f"row {row}: no {SUFFIX_START!r} before [RET] (position {ret})")
        starts.append(start)
    return starts


def lm_labels(batch, from_padding: bool = True, template_starts: list[int] | None = None,
              after_pictures: bool = True) -> torch.Tensor:
    """Next-token labels: the input ids with padding and image tokens set to -100 (not predicted).

    ``from_padding`` (``pretrain.predict_from_padding``): a left-padded row's first token stays a label, so
    it is predicted from the padding position before it (HF's shifted next-token loss on left-padded rows;
    the shipped recipe); False drops it, so a row's loss no longer depends on its batch's padding. With it,
    data-parallel pretraining pads every rank's rows to the step's global length (:func:`step_batches`).

    ``template_starts`` (``pretrain.template_loss: false``; :func:`template_span_starts`): per row, where the
    fixed suffix starts; its tokens up to and including ``[RET]`` are then not predicted. They are the same in
    every row, so predicting them rewards states that ignore the content at exactly the positions ``[RET]``
    reads from (docs/results/reproducibility.md).

    ``after_pictures`` (``pretrain.predict_after_picture``): the token after a picture's last token (its
    ``<|vision_end|>``, the same in every row) stays a label, predicted from that picture token (the shipped
    recipe); False predicts nothing from a picture's token. Predicting it there made the vision tower's output
    grow twice as fast (norm 145 vs 64 after 600 steps), the pictures' colour and shape no more readable either
    way (docs/results/reproducibility.md, session 27)."""
    labels = batch["input_ids"].clone()
    mask = batch["attention_mask"]
    labels[mask == 0] = -100
    pictures = batch["mm_token_type_ids"] != 0
    labels[pictures] = -100
    if not after_pictures:
        labels[:, 1:][pictures[:, :-1]] = -100
    if not from_padding:
        labels[:, 1:][mask[:, :-1] == 0] = -100
    if template_starts is not None:
        for row, (start, ret) in enumerate(zip(template_starts, batch["ret_positions"].tolist(), strict=True)):
            labels[row, start:ret + 1] = -100
    return labels


@dataclass
class PretrainTerms:
    """One batch's pretraining loss as sums and their counts (so that a batch split across ranks adds up to
    the whole: :func:`pretrain_base` divides by the global counts)."""

    lm_sum: torch.Tensor  # summed next-token cross-entropy over the labelled positions
    lm_count: int  # labelled positions
    answer_sum: torch.Tensor  # summed answer loss at [RET] over the rows' words
    answer_count: int  # answer terms (words; rows without ``targets``)
    answers: list[tuple[float, str | None]]  # each answer term's value and its row's kind (logging)
    ground_sum: torch.Tensor | float = 0.0  # summed grounding loss over the picture rows' words (ground_terms)
    ground_count: int = 0  # grounding terms

    def loss(self, answer_weight: float) -> torch.Tensor:  # the grounding term is weighed in step_loss
        return self.lm_sum / max(1, self.lm_count) + answer_weight * self.answer_sum / max(1, self.answer_count)


def pretrain_terms(model, batch, targets: list | None = None, kinds: list[str] | None = None,
                   full_logits: bool = False, from_padding: bool = True,
                   template_starts: list[int] | None = None, after_pictures: bool = True,
                   ground: bool = False) -> PretrainTerms:
    """The summed next-token loss over the text tokens and the summed answer loss at ``[RET]``.

    ``targets``: per row, the item's answers (:func:`answer_targets`: a token and its class's tokens).
    The answer loss of a row is then the sum over the item's words of the next-token cross-entropy at
    ``[RET]`` *within the word's class* (the expected loss of the word drawn after ``[RET]``, lower variance
    than one sampled word; that position is left out of the LM sum). Within a class the values are balanced,
    so no input-independent state lowers it: the state must say which colour, shape, name... the input
    has. (Over the whole vocabulary, the marginal "some colour, some shape" is a constant state that
    lowers the loss from 7.6 to 2.4 at once: the pretrained states collapsed onto it, cosine 0.999.)
    Without ``targets``: the full-vocabulary loss of the word written after ``[RET]``, one term per row.
    ``kinds`` (one label per row, e.g. "text" / "image"): each answer term carries its row's kind, for
    logging. ``full_logits``: the naive path, lm_head over every position ``(B, S, V)``, an ignore-index
    cross-entropy and one answer word at a time (the oracle of the default, which projects only the positions
    the loss reads and takes one logsumexp per word class; tests and bench/pretrain_step.py).
    ``from_padding``, ``template_starts``, ``after_pictures``: :func:`lm_labels`. ``ground`` (with ``targets``):
    also the grounding terms of the rows with a picture (:func:`ground_terms`).
    """
    import torch.nn.functional as F

    from puma.model.encoding import MODEL_INPUTS, mrope_positions
    from puma.model.prune import qwen2vl_model

    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    labels = lm_labels(batch, from_padding, template_starts, after_pictures)
    rows = torch.arange(labels.shape[0])
    pos = batch["ret_positions"]
    if targets is not None:
        labels[rows, pos + 1] = -100
    # lm_head only where the loss reads it (the labelled next-token positions and [RET]), not over the
    # padding and image tokens too: the (B, S, V) logits, their log-softmax and its gradient were the
    # largest cost of a step (the same loss: ``full_logits`` is the oracle; bench/pretrain_step.py).
    positions = mrope_positions(model, inputs)
    predicts = labels[:, 1:] != -100  # (B, S-1): position s predicts token s+1
    if full_logits:
        output = model(**inputs, position_ids=positions, use_cache=False,
                       output_hidden_states=ground and targets is not None)
        logits = output.logits  # (B, S, V)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                             reduction="sum")
        at_ret = logits[rows, pos]
    else:
        output = qwen2vl_model(model)(**inputs, position_ids=positions, use_cache=False,
                                      output_hidden_states=ground and targets is not None)
        hidden = output.last_hidden_state
        head = model.get_output_embeddings()  # on the final-norm states (B, S, H), as the LM's own forward
        lm = F.cross_entropy(head(hidden[:, :-1][predicts]), labels[:, 1:][predicts], reduction="sum")
        at_ret = head(hidden[rows, pos])  # (B, V)
    lm_count = int(predicts.sum())
    if targets is None:
        answer = F.cross_entropy(at_ret, batch["input_ids"][rows, pos + 1], reduction="sum")
        return PretrainTerms(lm, lm_count, answer, len(rows), [])
    stacked, term_rows = (_answer_terms_naive if full_logits else _answer_terms)(at_ret, targets)
    term_kinds = [None if kinds is None else kinds[r] for r in term_rows]
    terms = PretrainTerms(lm, lm_count, stacked.sum(), len(term_rows), list(zip(stacked.detach().tolist(), term_kinds)))
    if ground:
        grounded = ground_terms(model, batch["input_ids"], output.hidden_states[0], targets, naive=full_logits)
        if grounded is not None:
            terms.ground_sum, terms.ground_count = grounded.sum(), grounded.numel()
    return terms


def ground_terms(model, input_ids: torch.Tensor, first: torch.Tensor, targets: list,
                 naive: bool = False) -> torch.Tensor | None:
    """The grounding terms of a batch (``pretrain.ground_weight``): for each row with a picture, the vision
    tower's tokens as the decoder reads them (``first``: the input states ``(B, S, H)``, the merged visual
    tokens in place of the image placeholders), mean-pooled, score every word by their dot product with the
    word's *input* embedding row, and each of the row's answer words (``targets``, :func:`answer_targets`)
    costs its cross-entropy within its class, as at ``[RET]``. So a picture's tokens come to look like the
    words that name it, the ones its caption would bring: the decoder, which learns on text rows to carry a
    word it reads to ``[RET]``, then reads the picture the same way (LLaVA's first stage aligns its projector
    to the language model's word space; the miniature does it alongside the language steps, as both move).
    None if no row has a picture. ``naive``: one word at a time (the oracle)."""
    mask = input_ids == model.config.image_token_id  # (B, S)
    rows = mask.any(1).nonzero().flatten().tolist()
    if not rows:
        return None
    weights = mask[rows].unsqueeze(-1).to(first.dtype)
    pooled = (first[rows] * weights).sum(1) / weights.sum(1)  # (n, H)
    scores = pooled @ model.get_input_embeddings().weight.T  # (n, V)
    stacked, _ = (_answer_terms_naive if naive else _answer_terms)(scores, [targets[r] for r in rows])
    return stacked


def _answer_terms_naive(at_ret: torch.Tensor, targets: list) -> tuple[torch.Tensor, list[int]]:
    """Each answer's cross-entropy within its class, one word at a time (the oracle of :func:`_answer_terms`)."""
    terms, rows = [], []
    for row, answers in enumerate(targets):
        for tok, cls in answers:
            logits_row = at_ret[row] if cls is None else at_ret[row, cls.to(at_ret.device)]
            terms.append(torch.logsumexp(logits_row, 0) - at_ret[row, tok])
            rows.append(row)
    return torch.stack(terms), rows


def _answer_terms(at_ret: torch.Tensor, targets: list) -> tuple[torch.Tensor, list[int]]:
    """:func:`_answer_terms_naive` with one logsumexp per word class (the class tensors are shared by
    :class:`AnswerTargets`) instead of one per word: a step has ~10 classes and ~300 words. Returns the
    terms and each term's row, grouped by class."""
    groups: dict[int, tuple[torch.Tensor | None, list[int], list[int]]] = {}
    for row, answers in enumerate(targets):
        for tok, cls in answers:
            _, rows, toks = groups.setdefault(id(cls), (cls, [], []))
            rows.append(row)
            toks.append(tok)
    terms, all_rows = [], []
    for cls, rows, toks in groups.values():
        r = torch.tensor(rows, device=at_ret.device)
        logits = at_ret[r] if cls is None else at_ret[r][:, cls.to(at_ret.device)]  # (n, V) or (n, |class|)
        terms.append(torch.logsumexp(logits, 1) - at_ret[r, torch.tensor(toks, device=at_ret.device)])
        all_rows += rows
    return torch.cat(terms), all_rows


def pretrain_loss(model, batch, answer_weight: float, targets: list | None = None, kinds: list[str] | None = None,
                  full_logits: bool = False, from_padding: bool = True,
                  template_starts: list[int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token loss over the text tokens + ``answer_weight`` x the mean answer loss at ``[RET]``
    (:func:`pretrain_terms`, one batch on one process). The logged terms: ``loss_lm``, ``loss_answer`` and,
    with ``kinds``, ``loss_answer_<kind>`` (the mean answer loss over those rows' words) and ``words_<kind>``
    (their count)."""
    t = pretrain_terms(model, batch, targets, kinds, full_logits, from_padding, template_starts)
    logged = {"loss_lm": t.lm_sum.item() / max(1, t.lm_count), "loss_answer": t.answer_sum.item() / max(1, t.answer_count)}
    for kind in dict.fromkeys(k for _, k in t.answers if k is not None):
        mine = [v for v, k in t.answers if k == kind]
        logged[f"loss_answer_{kind}"], logged[f"words_{kind}"] = sum(mine) / len(mine), len(mine)
    return t.loss(answer_weight), logged


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


@dataclass
class StepBatch:
    """One side (queries or documents) of a pretraining step on this rank: the collated batch, each row's
    answer targets, input kind ("text" / "image", for logging) and, when the suffix is not predicted
    (``pretrain.template_loss: false``), where its fixed prompt suffix starts (:func:`template_span_starts`,
    in the padded batch; None otherwise)."""

    is_query: bool
    batch: Any
    targets: list
    kinds: list[str]
    template_starts: list[int] | None = None


def step_batches(processor, chunk, prompt, ret_token: str, rng: random.Random, targets_of: AnswerTargets,
                 world: int = 1, rank: int = 0, template_loss: bool = True) -> list[StepBatch]:
    """This rank's model batches of one pretraining step. ``chunk``: the step's rows (:func:`pretrain_examples`),
    the same list on every rank. The word written after each row's ``[RET]`` is drawn from ``rng`` for the
    whole chunk, queries first, then documents (every rank draws alike, so a row gets the word one process
    would give it); the rank then takes its slice ``chunk[rank*n:(rank+1)*n]`` (``n = len(chunk) // world``)
    and collates queries and documents apart (they render differently: instruction), each side left-padded
    to the longest row of that side on any rank: the rows one process would have collated. ``template_loss``
    False (``pretrain.template_loss``): each part also records where its fixed prompt suffix starts."""
    from puma.distributed import all_reduce_max
    from puma.model.encoding import collate
    from puma.train.batching import left_pad_batch

    if len(chunk) % world:
        raise ValueError(f"a step of {len(chunk)} rows does not split over {world} processes")
    answers: list[str | None] = [None] * len(chunk)
    for is_query in (True, False):
        for i, (_, q, words) in enumerate(chunk):
            if q == is_query:
                answers[i] = rng.choice(words)
    n = len(chunk) // world
    out = []
    for is_query in (True, False):
        mine = [i for i in range(rank * n, (rank + 1) * n) if chunk[i][1] == is_query]
        if not mine:
            continue
        batch = collate(processor, [chunk[i][0] for i in mine], is_query, prompt, ret_token,
                        answers=[answers[i] for i in mine])
        out.append(StepBatch(is_query, batch, [targets_of(chunk[i][2]) for i in mine],
                             ["image" if _has_image(chunk[i][0]) else "text" for i in mine]))
    if world > 1:  # every rank joins (a rank may hold no row of a side: length 0)
        lengths = {p.is_query: p.batch["input_ids"].shape[1] for p in out}
        longest = all_reduce_max(torch.tensor([lengths.get(True, 0), lengths.get(False, 0)]))
        pad_id = processor.tokenizer.pad_token_id
        for p in out:
            p.batch = left_pad_batch(p.batch, int(longest[0 if p.is_query else 1]), pad_id)
    if not template_loss:  # found only when used: the default step does no per-row scan
        for p in out:
            p.template_starts = template_span_starts(p.batch["input_ids"], p.batch["ret_positions"],
                                                     processor.tokenizer)
    return out


def step_loss(model, parts: list[StepBatch], chunk, answer_weight: float,
              from_padding: bool = True, after_pictures: bool = True,
              ground_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's share of one step's loss, normalised so that the shares of all ranks add up to the loss of
    the whole ``chunk`` on one process (a part with ``template_starts`` leaves its fixed prompt suffix
    unpredicted, :func:`lm_labels`): per side (queries, documents), its fraction of the chunk's rows x
    (mean next-token loss + ``answer_weight`` x mean answer loss + ``ground_weight`` x mean grounding loss,
    :func:`ground_terms`), every mean taken over the *global* count (summed over ranks). The gradients summed
    over ranks (:func:`puma.distributed.all_reduce_grads`) are then the single-process gradient. Returns the
    local loss and the step's logged terms (already summed)."""
    from puma.distributed import all_reduce_sum

    terms = {p.is_query: pretrain_terms(model, p.batch, p.targets, p.kinds, from_padding=from_padding,
                                        template_starts=p.template_starts, after_pictures=after_pictures,
                                        ground=ground_weight > 0)
             for p in parts}
    attrs = ("lm_count", "answer_count", "ground_count")
    counts = torch.tensor([float(getattr(terms.get(side), attr, 0)) for side in (True, False) for attr in attrs],
                          dtype=torch.float64).view(2, len(attrs))
    all_reduce_sum(counts)
    loss = torch.zeros(())
    # logged: loss, its lm part, its answer part, then per kind the summed answer terms and their count, then
    # the grounding part
    logged = torch.zeros(8, dtype=torch.float64)
    for j, side in enumerate((True, False)):
        if side not in terms:
            continue
        t = terms[side]
        share = sum(1 for _, q, _ in chunk if q == side) / len(chunk)
        lm = share * t.lm_sum / counts[j, 0].clamp(min=1).float()
        ans = share * t.answer_sum / counts[j, 1].clamp(min=1).float()
        loss = loss + lm + answer_weight * ans
        logged[1] += lm.item()
        logged[2] += ans.item()
        if ground_weight > 0 and counts[j, 2] > 0:
            grounded = share * t.ground_sum / counts[j, 2].float()
            loss = loss + ground_weight * grounded
            logged[7] += grounded.item()
        for value, kind in t.answers:
            k = 3 if kind == "text" else 5
            logged[k] += value
            logged[k + 1] += 1
    logged[0] = logged[1] + answer_weight * logged[2]
    all_reduce_sum(logged)
    out = {"loss": float(logged[0] + ground_weight * logged[7]), "loss_lm": float(logged[1]),
           "loss_answer": float(logged[2])}
    for k, kind in ((3, "text"), (5, "image")):
        if logged[k + 1] > 0:
            out[f"loss_answer_{kind}"] = float(logged[k] / logged[k + 1])
    if ground_weight > 0 and counts[:, 2].sum() > 0:
        out["loss_ground"] = float(logged[7])
    return loss, out


class VisionNorm:
    """The mean norm of the vision tower's output tokens (the merged visual tokens the decoder reads in place of
    the image placeholders) over this process's forward passes since the last :meth:`read`: the health of the
    picture side. On the tiny base it is ~0.2 (text embedding rows ~0.2-0.9); at the language model's learning
    rate it grew to 130-1000 within 1000-4000 steps while the pictures' tokens became one vector
    (:func:`head_param_groups`)."""

    def __init__(self, model) -> None:
        from puma.model.prune import vision_tower

        merger = getattr(vision_tower(model), "merger", None)
        self.total, self.count = 0.0, 0
        self._handle = merger.register_forward_hook(self._hook) if merger is not None else None

    def _hook(self, _module, _inputs, output) -> None:
        with torch.no_grad():
            norms = output.detach().float().norm(dim=-1)
        self.total += float(norms.sum())
        self.count += norms.numel()

    def read(self) -> float | None:
        """The mean since the last read (None if no picture went through), then start again."""
        value = self.total / self.count if self.count else None
        self.total, self.count = 0.0, 0
        return value

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


def recipe_kwargs(cfg, **overrides) -> dict[str, Any]:
    """:func:`pretrain_base`'s keyword arguments from the ``pretrain`` settings (:class:`puma.config.PretrainSettings`),
    every recipe key, then ``overrides`` (e.g. a fixture's ``steps``): the one place a key of params.yaml becomes an
    argument, for `puma model pretrain` and the tests that pretrain with the shipped recipe."""
    out = {key: getattr(cfg, key) for key in (
        "steps", "batch_size", "lr", "answer_weight", "seed", "head_init", "schedule", "predict_from_padding",
        "template_loss", "text_steps", "head_lr_scale", "head_lr_steps", "vision_lr_scale", "caption_rows",
        "predict_after_picture", "vision_steps", "vision_lr", "align_steps", "align_lr_scale", "ground_weight",
        "weight_decay")}
    unknown = overrides.keys() - out.keys()
    if unknown:
        raise TypeError(f"recipe_kwargs: not pretrain keys: {sorted(unknown)}")
    return {**out, **overrides}


def pretrain_base(
    base: str | Path, out: str | Path, pairs, prompt, *, steps: int, batch_size: int, lr: float,
    answer_weight: float = 1.0, seed: int = 0, ret_token: str = "[RET]", head_init: str = "zero",
    schedule: str = "constant", predict_from_padding: bool = True, template_loss: bool = True,
    text_steps: int = 0, head_lr_scale: float = 1.0, head_lr_steps: int = 0, vision_lr_scale: float = 1.0,
    caption_rows: bool = False, predict_after_picture: bool = True, vision_steps: int = 0, vision_lr: float = 2e-3,
    align_steps: int = 0, align_lr_scale: float = 1.0, ground_weight: float = 0.0, weight_decay: float = 0.01,
    log=None,
) -> dict[str, Any]:
    """Train the full-depth checkpoint ``base`` (a ForConditionalGeneration) on ``pairs``; write ``out``.

    ``batch_size`` rows per process and step: launched on N processes (torchrun; ``runtime.num_processes``)
    each step takes the next ``batch_size x N`` rows, every rank its slice, and the summed gradients are the
    gradient one process would get from the whole step (:func:`step_loss`): N processes follow one process
    with ``batch_size x N`` rows (tests/pipeline/test_pretrain_distributed.py). Rank 0 writes ``out``.
    ``text_steps``: the first steps take text rows only (:func:`step_chunks`). ``head_lr_scale``: lm_head's
    learning rate as a fraction of ``lr`` for the first ``head_lr_steps`` steps, ``vision_lr_scale`` the vision
    tower's throughout (:func:`head_param_groups`). ``caption_rows``: caption pairs also give captioned pictures
    (:func:`caption_row`). ``predict_after_picture``: :func:`lm_labels`' ``after_pictures``. ``vision_steps``
    (> 0): first a vision stage of that many steps at ``vision_lr`` (:mod:`puma.train.vision_stage`: the tower
    learns to name its pictures' attributes, the miniature of a CLIP-pretrained ViT), logged to
    ``vision_log.jsonl``. ``align_steps``: after the text phase, that many alignment steps on the rows that are a
    picture alone (:func:`step_chunks`) in which only the vision tower learns, at ``lr x align_lr_scale``: the
    language model and its head are frozen, as Qwen-VL trained its vision side against a frozen LLM before
    training all of it (a tower that maps pictures to what the text-trained decoder already reads).
    ``ground_weight`` (> 0): every language step also costs that many times the mean grounding loss of its
    picture rows (:func:`ground_terms`: a picture's tokens must score the words that name it against the input
    embeddings), logged as ``loss_ground``. ``weight_decay``: AdamW's, on every parameter of the language steps.
    """
    from transformers import Qwen2VLForConditionalGeneration

    from puma import distributed
    from puma.io import atomic_dir, write_jsonl_atomic
    from puma.model.processor import load_processor
    from puma.numerics import numerics

    distributed.join_group()
    world, rank = distributed.world_size(), distributed.rank()
    say = (log or (lambda msg: None)) if rank == 0 else (lambda msg: None)
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
    examples = pretrain_examples(pairs, seed, caption_rows)
    step_rows = batch_size * world
    if vision_steps < 0 or vision_lr <= 0:
        raise ValueError(f"pretrain.vision_steps must be >= 0 and vision_lr > 0, got {vision_steps}, {vision_lr}")
    vision_rows: list[dict] = []
    vision_start = time.perf_counter()
    if vision_steps:
        from puma.train.vision_stage import vision_stage

        vision_rows = vision_stage(model, processor, scene_pictures(pairs), prompt, steps=vision_steps,
                                   step_rows=step_rows, lr=vision_lr, seed=seed, log=say)
    vision_seconds = round(time.perf_counter() - vision_start, 1)
    if len(examples) < step_rows:
        raise ValueError(f"pretraining needs at least {step_rows} examples ({batch_size} x {world} processes), "
                         f"got {len(examples)}")
    rng = random.Random(seed)
    targets_of = AnswerTargets(processor.tokenizer)
    params = list(model.parameters())
    opt = torch.optim.AdamW(head_param_groups(model, lr), lr=lr, weight_decay=weight_decay)
    align = range(text_steps, text_steps + align_steps)
    factors = lr_factors(steps, schedule, head_lr_scale, head_lr_steps, vision_lr_scale, align, align_lr_scale)
    vision_ids = {id(p) for p in opt.param_groups[2]["params"]}
    language = [p for p in params if id(p) not in vision_ids]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factors)
    log_rows, start = [], time.perf_counter()
    vision_norm = VisionNorm(model)
    try:
        for step, chunk in enumerate(step_chunks(examples, step_rows, steps, text_steps, align_steps)):
            if align and step in (align.start, align.stop):  # into / out of the alignment phase
                for p in language:  # frozen: no gradient, so AdamW leaves them (and their moments) alone
                    p.requires_grad_(step != align.start)
            opt.zero_grad()
            # The answer loss is logged per input kind (text answers can be copied from the input, image answers
            # must be read from the pixels).
            parts = step_batches(processor, chunk, prompt, ret_token, rng, targets_of, world, rank, template_loss)
            loss, terms = step_loss(model, parts, chunk, answer_weight, predict_from_padding, predict_after_picture,
                                    ground_weight)
            loss.backward()
            distributed.all_reduce_grads(params)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))  # before clipping
            opt.step()
            sched.step()
            row = {"step": step + 1, **{k: round(v, 5) for k, v in terms.items()}, "grad_norm": round(grad_norm, 6),
                   "lr": sched.get_last_lr()[0]}
            if (vnorm := vision_norm.read()) is not None:  # this process's pictures (rank 0's in the log)
                row["vision_norm"] = round(vnorm, 4)
            log_rows.append(row)
            if (step + 1) % 10 == 0 or step == 0:
                say(f"pretrain step {step + 1}/{steps} loss {terms['loss']:.3f} answer {terms['loss_answer']:.3f} "
                    f"(text {terms.get('loss_answer_text', float('nan')):.3f}, "
                    f"image {terms.get('loss_answer_image', float('nan')):.3f}; vision tokens' norm "
                    f"{row.get('vision_norm', float('nan')):.2f})")
    finally:
        vision_norm.close()
        for p in language:
            p.requires_grad_(True)
    model.eval()
    _check_in_sync(params)
    record = {"steps": steps, "batch_size": batch_size, "processes": world, "lr": lr, "answer_weight": answer_weight,
              "head_init": head_init, "schedule": schedule, "predict_from_padding": predict_from_padding,
              "template_loss": template_loss, "text_steps": text_steps, "head_lr_scale": head_lr_scale,
              "head_lr_steps": head_lr_steps, "vision_lr_scale": vision_lr_scale, "caption_rows": caption_rows,
              "predict_after_picture": predict_after_picture, "vision_steps": vision_steps,
              "align_steps": align_steps, **({"align_lr_scale": align_lr_scale} if align_steps else {}),
              **({"ground_weight": ground_weight} if ground_weight else {}),
              **({"weight_decay": weight_decay} if weight_decay != 0.01 else {}),
              **({"vision_lr": vision_lr, "vision_final_loss": vision_rows[-1]["loss_vision"]} if vision_rows else {}),
              "seed": seed,
              "examples": len(examples), "final_loss": log_rows[-1]["loss"],
              "escape_step": escape_step(log_rows),  # None: the [RET] states never left their early collapse
              "text_answer_loss_tail": _tail_mean(log_rows, "loss_answer_text", ESCAPE_WINDOW),
              "numerics": numerics()}  # round-off differs by machine, and this training is chaotic in it
    # Wall times are returned, not saved: OUT is then a function of its inputs (the same files on a re-run), so a
    # re-run that reproduces the weights leaves every downstream DVC stage cached.
    timing = {"seconds": round(time.perf_counter() - start, 1),
              **({"vision_seconds": vision_seconds} if vision_rows else {})}
    if rank == 0:
        model.config.puma = {**(getattr(model.config, "puma", None) or {}), "pretrain": record}
        out = Path(out)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            write_jsonl_atomic(tmp / "train_log.jsonl", log_rows)
            if vision_rows:
                write_jsonl_atomic(tmp / "vision_log.jsonl", vision_rows)
    distributed.barrier()
    return {**record, **timing}


# In the collapse the text-answer loss sits at the balanced marginal (~2.3 nats on MBEIR-mini); below this mean over
# one window of steps the states have left it.
ESCAPE_THRESHOLD, ESCAPE_WINDOW = 2.15, 50


def escape_step(rows: list[dict], threshold: float = ESCAPE_THRESHOLD, window: int = ESCAPE_WINDOW,
                key: str = "loss_answer_text", stride: int = 10) -> int | None:
    """The step by which the ``[RET]`` states have left their early collapse: the end of the first ``window``
    steps (every ``stride`` steps) whose mean ``key`` (a ``train_log.jsonl`` row's text-answer loss) is below
    ``threshold``, or None if none is. In the collapse the answer loss sits at the balanced marginal (~2.3
    nats on MBEIR-mini); how much the base learns by the end depends on how long before the end this happens,
    and this varies by seed and by machine (docs/results/reproducibility.md)."""
    for start in range(0, len(rows) - window + 1, stride):
        values = [r[key] for r in rows[start:start + window] if key in r]
        if values and sum(values) / len(values) < threshold:
            return int(rows[start + window - 1]["step"])
    return None


def _tail_mean(rows: list[dict], key: str, window: int) -> float | None:
    """The mean ``key`` over the rows of the last ``window`` that have it; None before one window or without any."""
    values = [r[key] for r in rows[-window:] if key in r]
    return round(sum(values) / len(values), 4) if len(rows) >= window and values else None


def collapse_warning(record: dict) -> str | None:
    """A warning when a pretraining ``record`` (:func:`pretrain_base`) measured a full escape window of
    text-answer losses and never left its early collapse (``escape_step`` None): such a base retrieves near
    chance (pretrain.seed 3 and 4 of the 4x default: 2.5 and 3.7 local against 19-30 for seeds 0-2;
    docs/results/reproducibility.md, session 32). None when it escaped or nothing was measured."""
    tail = record.get("text_answer_loss_tail")
    if record.get("escape_step") is not None or tail is None:
        return None
    return (f"WARNING: after {record['steps']} steps the [RET] states never left their early collapse (text-answer "
            f"loss {tail:.2f} over the last {ESCAPE_WINDOW} steps, escape below {ESCAPE_THRESHOLD}): this base "
            "retrieves near chance. Try another pretrain.seed or more pretrain.steps (ablations/pretrain_escape.py "
            "compares seeds; docs/results/reproducibility.md).")


def _check_in_sync(params) -> None:
    """Every rank applied the same summed gradients, so the weights must be equal on all of them: compare a
    checksum per tensor (a rank that drifted would go unnoticed: only rank 0 saves)."""
    from puma import distributed

    with torch.no_grad():
        sums = torch.stack([p.double().sum() for p in params])
    if not distributed.same_on_all_ranks(sums):
        raise RuntimeError("pretraining: the ranks' weights differ after training (the gradient all-reduce failed)")
