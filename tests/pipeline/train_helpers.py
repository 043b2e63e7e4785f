"""Small deterministic training data for the training tests (text pairs and image/text pairs)."""

from __future__ import annotations

import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20),
           "black": (0, 0, 0), "white": (250, 250, 250)}
SHAPES = ["circle", "square", "triangle", "star"]
SIZES = ["small", "large"]


def text_pairs(n: int, seed: int = 0) -> list[dict]:
    """NLI-like pairs: a phrase and a paraphrase of the same attributes."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        c, s, z = r.choice(list(COLOURS)), r.choice(SHAPES), r.choice(SIZES)
        out.append({"query": {"text": f"a {z} {c} {s}"}, "positive": {"text": f"there is one {s}, {c} and {z}"}})
    return out


def image_pairs(n: int, root: Path, seed: int = 0) -> list[dict]:
    """M-BEIR-like pairs of three modalities: text -> image, image -> text, (image, text) -> image."""
    from PIL import Image, ImageDraw

    r = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        c, s = r.choice(list(COLOURS)), r.choice(SHAPES)
        path = root / f"{i}.png"
        if not path.exists():
            im = Image.new("RGB", (56, 56), (128, 128, 128))
            draw = ImageDraw.Draw(im)
            (draw.ellipse if s == "circle" else draw.rectangle)((8, 8, 48, 48), fill=COLOURS[c])
            im.save(path)
        kind = i % 3
        if kind == 0:
            out.append({"query": {"text": f"a {c} {s}", "instruction": "Find the image."},
                        "positive": {"image": str(path)}})
        elif kind == 1:
            out.append({"query": {"image": str(path), "instruction": "Describe it."},
                        "positive": {"text": f"a {c} {s}"}})
        else:
            out.append({"query": {"image": str(path), "text": f"same {s}", "instruction": "Find it."},
                        "positive": {"image": str(path), "text": f"a {c} {s}"}})
    return out
