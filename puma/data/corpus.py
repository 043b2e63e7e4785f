"""Text like the project's data, for training the embedded tiny tokenizer offline.

The tiny default's byte-level BPE is trained on sentences of the same kind the pipeline feeds it:
the M-BEIR instruction phrasings MBEIR-mini writes, and captions, headlines, product descriptions,
edits, entity questions/passages and NLI triples produced by the very functions of
:mod:`puma.data.vocab` the generator uses, so token counts per input are realistic. Deterministic.
"""

from __future__ import annotations

import random

from puma.data import vocab
from puma.data.instructions import PHRASINGS

INSTRUCTIONS = [p for prompts in PHRASINGS.values() for p in prompts]


def _scene_sentence(rng: random.Random, kind: int) -> str:
    obj = vocab.random_scene(rng, "object")
    garment = vocab.random_scene(rng, "garment")
    if kind == 0:
        return vocab.coco_caption(obj, rng.randrange(3))
    if kind == 1:
        return vocab.news_caption(obj, rng.randrange(3))
    if kind == 2:
        return vocab.fashion_caption(garment, rng.randrange(3))
    base = obj if kind == 3 else garment
    after, attr = vocab.change_one(rng, base)
    return vocab.edit_text(base, after, attr, rng.randrange(2))


def _entity_sentence(rng: random.Random, catalog: list[vocab.Entity]) -> str:
    e = rng.choice(catalog)
    fact = rng.choice(vocab.FACTS + ("emblem",))
    form = rng.randrange(4)
    if form == 0:
        return vocab.entity_question(e, fact, rng.randrange(2))
    if form == 1:
        return vocab.image_question("entity" if fact == "emblem" else fact, rng.randrange(2))
    if form == 2:
        return vocab.entity_passage(e, fact)
    return vocab.emblem_title(e)


def tokenizer_corpus(seed: int = 0, n: int = 4000) -> list[str]:
    """``n`` deterministic sentences covering captions, questions, edits, instructions and NLI text."""
    rng = random.Random(seed)
    catalog = vocab.entity_catalog(random.Random(f"corpus:{seed}"))
    out = list(INSTRUCTIONS)
    # Every entity once, so each name the generator can write is in the corpus.
    out += [vocab.entity_passage(e, "emblem") for e in catalog]
    for _ in range(n):
        kind = rng.randrange(7)
        if kind < 5:
            out.append(_scene_sentence(rng, kind))
        elif kind == 5:
            out.append(_entity_sentence(rng, catalog))
        else:
            out.extend(vocab.nli_triple(rng))
    return out
