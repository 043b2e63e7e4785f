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


def entity_pairs(n: int, seed: int = 0, held_out: bool = False) -> list[dict]:
    """Knowledge pairs: an entity's name alone -> a description of it without the name ("Aldermoor" -> "a red
    star, dotted"): the query and its positive share no word, so matching them takes what a model learnt
    about the name (MBEIR-mini's entity names). ``held_out``: the same
    entities described in another phrasing ("one dotted star coloured red")."""
    from puma.data import vocab

    r = random.Random(seed)
    names = list(dict.fromkeys(e.split()[0] for e in vocab.ENTITIES))
    r.shuffle(names)
    out = []
    for name in names[:n]:
        c, s, t = r.choice(vocab.COLORS), r.choice(vocab.SHAPES), r.choice(vocab.TEXTURES)
        text = f"one {t} {s} coloured {c}" if held_out else f"a {c} {s}, {t}"
        out.append({"query": {"text": name}, "positive": {"text": text}})
    return out


def image_pairs(n: int, root: Path, seed: int = 0, with_scenes: bool = False) -> list[dict]:
    """M-BEIR-like pairs of three modalities: text -> image, image -> text, (image, text) -> image.
    ``with_scenes``: each pair also carries its positive's scene record (``positive_scene``, as
    puma.train.pretrain.load_pairs reads MBEIR-mini's), whose colour and shape are the picture's."""
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
        if with_scenes:
            out[-1]["positive_scene"] = {"kind": "object", "color": c, "shape": s, "texture": "plain",
                                         "size": "medium", "position": "center"}
    return out


# The depth fixture's pictures: 8 colours x 4 shapes, one 56x56 picture each (4 visual tokens after merging).
FIXTURE_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 220, 30),
                   "purple": (140, 40, 180), "orange": (250, 140, 20), "black": (10, 10, 10),
                   "white": (250, 250, 250)}
FIXTURE_SHAPES = ["circle", "square", "triangle", "cross"]


def shape_pictures(root: Path) -> list[tuple[str, str]]:
    """Draw the depth fixture's 32 pictures under ``root`` (``COLOUR-SHAPE.png`` on grey; kept if present) and
    return their captions and paths: ``[("a red circle", ".../red-circle.png"), ...]``. The colour fills a large
    part of the picture; the shape is told only by where it lies across the 4 merged visual tokens."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for colour, rgb in FIXTURE_COLOURS.items():
        for shape in FIXTURE_SHAPES:
            path = root / f"{colour}-{shape}.png"
            if not path.exists():
                im = Image.new("RGB", (56, 56), (128, 128, 128))
                draw = ImageDraw.Draw(im)
                if shape == "circle":
                    draw.ellipse((6, 6, 50, 50), fill=rgb)
                elif shape == "square":
                    draw.rectangle((8, 8, 48, 48), fill=rgb)
                elif shape == "triangle":
                    draw.polygon([(28, 4), (52, 52), (4, 52)], fill=rgb)
                else:
                    draw.rectangle((22, 4, 34, 52), fill=rgb)
                    draw.rectangle((4, 22, 52, 34), fill=rgb)
                im.save(path)
            out.append((f"a {colour} {shape}", str(path)))
    return out


def shape_picture_pairs(pictures: list[tuple[str, str]]) -> list[dict]:
    """The depth fixture's pretraining pairs from :func:`shape_pictures`' list: each picture once, alternately as
    the positive of its caption (text -> image) and as a query whose positive is its caption (image -> text)."""
    out = []
    for i, (caption, path) in enumerate(pictures):
        if i % 2 == 0:
            out.append({"query": {"text": caption, "instruction": "Find the image."}, "positive": {"image": path}})
        else:
            out.append({"query": {"image": path, "instruction": "Describe it."}, "positive": {"text": caption}})
    return out
