"""Text like the project's data, for training the embedded tiny tokenizer offline.

The tiny default's byte-level BPE is trained on sentences of the same kind the pipeline feeds it:
M-BEIR-style instructions, scene captions and questions (the MBEIR-mini vocabulary in
:mod:`puma.data.vocab`), and NLI-style sentence pairs, so token counts per input are realistic.
"""

from __future__ import annotations

import random

from puma.data import vocab

# M-BEIR instruction phrasings (the flavour of instructions/query_instructions.tsv).
INSTRUCTIONS = [
    "Retrieve an image that matches the given caption.",
    "Find a picture that corresponds to the description.",
    "Identify the news image described by the headline.",
    "Retrieve a Wikipedia paragraph that answers this question.",
    "Find a passage that provides the answer to the question.",
    "Retrieve a caption that describes the image.",
    "Find a description for this fashion product photo.",
    "Find an image that looks similar to the given image.",
    "Retrieve the day-to-day image most similar to this one.",
    "Given the image and the modification, find the target fashion image.",
    "Retrieve an image that shows the reference image after the described change.",
    "Retrieve a Wikipedia image and description that answer the question about this image.",
    "Find the entity page that the image and question refer to.",
    "Retrieve a news image and headline matching this description.",
]

_NLI_SUBJECTS = ["A man", "A woman", "Two children", "A dog", "An old man", "A group of people", "A girl",
                 "A boy", "The players", "A musician", "A chef", "Several workers"]
_NLI_VERBS = ["is walking", "is running", "is sitting", "is playing", "is cooking", "is reading",
              "is smiling", "is sleeping", "are talking", "is riding a bike", "is singing", "is swimming"]
_NLI_PLACES = ["in the park", "on the street", "at the beach", "in a kitchen", "on a stage", "near the river",
               "in the snow", "inside a house", "at the market", "on a field"]


def tokenizer_corpus(seed: int = 0, n: int = 4000) -> list[str]:
    """``n`` deterministic sentences covering captions, questions, edits, instructions and NLI text."""
    rng = random.Random(seed)
    out = list(INSTRUCTIONS)
    for _ in range(n):
        kind = rng.randrange(5)
        color, shape, size = rng.choice(vocab.COLORS), rng.choice(vocab.SHAPES), rng.choice(vocab.SIZES)
        pos, tex = rng.choice(vocab.POSITIONS), rng.choice(vocab.TEXTURES)
        if kind == 0:
            out.append(f"A {size} {color} {shape} with a {tex} pattern in the {pos} of the picture.")
        elif kind == 1:
            out.append(f"What color is the {shape} in the {pos}? The {shape} is {color}.")
        elif kind == 2:
            out.append(f"Make it {rng.choice(vocab.COLORS)} and change the {shape} to a {rng.choice(vocab.SHAPES)}.")
        elif kind == 3:
            out.append(f"{rng.choice(vocab.ENTITIES)} is known for its {color} {shape} emblem.")
        else:
            s = f"{rng.choice(_NLI_SUBJECTS)} {rng.choice(_NLI_VERBS)} {rng.choice(_NLI_PLACES)}."
            out.append(s)
    return out
