"""MBEIR-mini: a synthetic M-BEIR in the exact layout and schema, learnable by construction.

Every image is a PIL drawing of a :class:`~puma.data.vocab.Scene` (colour, shape or garment, size,
position, texture, trim, small text); every caption, question, edit and passage is written from the same
attributes, and positives are defined by them. So a retriever can *learn* each task (the attributes
are visible in both modalities), while some columns are hard on purpose: near-duplicate distractors
that differ in one attribute (NIGHTS, Fashion200K, MSCOCO), same-entity passages that answer another
question (WebQA, InfoSeek), and composed image + edit -> image queries whose pool holds the reference
image and other edits of it (FashionIQ, CIRR).

Layout written under ``out`` (real M-BEIR's; ``img_path`` relative to ``out``)::

    query/train/mbeir_<dataset>_train.jsonl            (one file per dataset, no train qrels)
    query/union_train/mbeir_union_up_train.jsonl       cand_pool/global/mbeir_union_train_cand_pool.jsonl
    query/{val,test}/mbeir_<column>_{val,test}.jsonl   qrels/{val,test}/mbeir_<column>_{val,test}_qrels.txt
    query/union_val/mbeir_union_val.jsonl              cand_pool/global/mbeir_union_{val,test}_cand_pool.jsonl
    cand_pool/local/mbeir_<column>_cand_pool.jsonl     (val and test share it; MSCOCO's test pool is
                                                        mbeir_mscoco_task<N>_test_cand_pool.jsonl)
    instructions/query_instructions.tsv                mbeir_images/<dataset>_images/<split>/*.jpg

Val and test queries of a column come from one generator call, so they share the column's pool (as in
M-BEIR, where val and test local pools are one file except MSCOCO's 5k test subset). The attribute
world is large (23,328 object scenes, 8,640 garments, 6,144 entities with distinct emblems) and a pool
that fills its random neighbourhood falls back to the first free scene of the whole world, so every
seed works and ``scale`` 50 (1,200 test queries a column, pools of ~4,600) is routine.

Deterministic: the same (seed, scale) gives the same bytes (string-seeded ``random.Random`` per
(split, column); JPEGs carry no metadata). Built in a temporary sibling folder and moved into place
(:func:`puma.io.atomic_dir`), so an interrupted run never leaves a half-written dataset.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from puma.data import vocab
from puma.data.columns import (
    INSTRUCTIONS_FILE,
    TABLE1_COLUMNS,
    UNION_TRAIN_QUERIES,
    UNION_VAL_QUERIES,
    Column,
    global_pool_file,
    train_query_file,
)
from puma.data.instructions import write_instructions
from puma.data.schema import Candidate, Query, modality_of, write_jsonl
from puma.data.vocab import Entity, Scene
from puma.io import atomic_dir, atomic_write, write_json_atomic, write_text_atomic

IMAGE_SIZE = 84  # 3x3 merged visual tokens: inside the tiny pixel budget (4..16 tokens)
JPEG_QUALITY = 90
# Sizes at synth_scale 1.0 (per column); scale multiplies all four.
TEST_QUERIES, VAL_QUERIES, DISTRACTORS, TRAIN_QUERIES = 24, 12, 56, 48
MANIFEST = "mbeir_mini.json"

# Per-dataset background tint: a domain cue, like the real datasets' photographic styles.
BACKGROUND = {
    "VisualNews": (228, 224, 212), "MSCOCO": (236, 236, 236), "Fashion200K": (250, 248, 244),
    "WebQA": (214, 218, 232), "EDIS": (232, 220, 214), "NIGHTS": (222, 232, 222), "OVEN": (214, 218, 232),
    "InfoSeek": (220, 214, 232), "FashionIQ": (246, 244, 250), "CIRR": (240, 236, 226),
}


@dataclass
class CandSpec:
    txt: str | None
    scene: Scene | None
    src: dict = field(default_factory=dict)


@dataclass
class QuerySpec:
    txt: str | None
    scene: Scene | None
    pos: list[int]  # indices into the column's candidate list
    src: dict = field(default_factory=dict)


# ---------------------------------------------------------------- drawing


def _regular(n: int, r_in: float | None = None, start: float = -90.0) -> list[tuple[float, float]]:
    pts = []
    steps = n * (2 if r_in else 1)
    for i in range(steps):
        ang = math.radians(start + 360.0 * i / steps)
        r = r_in if (r_in and i % 2) else 1.0
        pts.append((r * math.cos(ang), r * math.sin(ang)))
    return pts


# Unit-box outlines (x right, y down). Garments are product silhouettes.
_POLYGONS = {
    "square": [[(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]],
    "triangle": [[(0, -1), (0.95, 0.8), (-0.95, 0.8)]],
    "star": [_regular(5, 0.45)],
    "diamond": [[(0, -1), (0.8, 0), (0, 1), (-0.8, 0)]],
    "cross": [[(-0.3, -1), (0.3, -1), (0.3, 1), (-0.3, 1)], [(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)]],
    "hexagon": [_regular(6, None, 0.0)],
    "pentagon": [_regular(5)],
    "octagon": [_regular(8, None, 22.5)],
    "arrow": [[(-1, -0.3), (0.1, -0.3), (0.1, -0.8), (1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3)]],
    "heart": [[(0, 1), (-0.95, -0.05), (-0.9, -0.6), (-0.5, -0.9), (0, -0.55), (0.5, -0.9), (0.9, -0.6),
               (0.95, -0.05)]],
    "dress": [[(-0.35, -1), (0.35, -1), (0.4, -0.3), (0.9, 1), (-0.9, 1), (-0.4, -0.3)]],
    "shirt": [[(-1, -0.7), (-0.4, -1), (0.4, -1), (1, -0.7), (0.8, -0.3), (0.5, -0.4), (0.5, 1), (-0.5, 1),
               (-0.5, -0.4), (-0.8, -0.3)]],
    "skirt": [[(-0.5, -0.8), (0.5, -0.8), (0.95, 0.9), (-0.95, 0.9)]],
    "trousers": [[(-0.6, -1), (0.6, -1), (0.7, 1), (0.15, 1), (0, -0.3), (-0.15, 1), (-0.7, 1)]],
    "hat": [[(-1, 0.4), (1, 0.4), (1, 0.65), (-1, 0.65)], [(-0.5, -0.5), (0.5, -0.5), (0.55, 0.4), (-0.55, 0.4)]],
    "bag": [[(-0.8, -0.2), (0.8, -0.2), (0.9, 1), (-0.9, 1)], [(-0.45, -0.2), (-0.35, -0.8), (0.35, -0.8),
                                                             (0.45, -0.2), (0.3, -0.2), (0.22, -0.6),
                                                             (-0.22, -0.6), (-0.3, -0.2)]],
    "coat": [[(-0.9, -0.8), (-0.3, -1), (0.3, -1), (0.9, -0.8), (1, 0.6), (0.7, 0.6), (0.6, 1), (-0.6, 1),
              (-0.7, 0.6), (-1, 0.6)]],
    "shorts": [[(-0.8, -0.6), (0.8, -0.6), (0.9, 0.5), (0.1, 0.5), (0, -0.05), (-0.1, 0.5), (-0.9, 0.5)]],
    "scarf": [[(-1, -0.6), (1, -0.6), (1, -0.25), (0.55, -0.25), (0.55, 1), (0.15, 1), (0.15, -0.25),
               (-1, -0.25)]],
    "boot": [[(-0.5, -1), (0.1, -1), (0.1, 0.3), (0.95, 0.5), (0.95, 1), (-0.5, 1)]],
}
_ROWS = {"top": 0.28, "": 0.5, "bottom": 0.72}
_COLS = {"left": 0.28, "": 0.5, "right": 0.72}
# The 3 x 3 grid of positions: "top left", "top", ..., "center", ..., "bottom right".
_CENTERS = {" ".join(w for w in (r, c) if w) or "center": (cx, cy) for r, cy in _ROWS.items() for c, cx in _COLS.items()}
_RADIUS = {"small": 0.12, "medium": 0.2, "large": 0.28}


def _shade(rgb: tuple[int, int, int], delta: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + delta)) for c in rgb)


@functools.lru_cache(maxsize=4096)
def _fill(color: str, texture: str, shade: int, size: int) -> Image.Image:
    """The textured fill of a shape (cached: a pure function of its arguments; callers only read it)."""
    base = _shade(vocab.RGB[color], shade)
    # The pattern colour must contrast with the base: darker for light colours, lighter for dark ones.
    alt = _shade(base, 110) if sum(base) < 200 else tuple(int(c * 0.55) for c in base)
    img = Image.new("RGB", (size, size), base)
    d = ImageDraw.Draw(img)
    if texture == "striped":
        for y in range(0, size, 6):
            d.rectangle((0, y, size, y + 2), fill=alt)
    elif texture == "dotted":
        for y in range(2, size, 6):
            for x in range(2, size, 6):
                d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=alt)
    elif texture == "checkered":
        for y in range(0, size, 6):
            for x in range((y // 6) % 2 * 6, size, 12):
                d.rectangle((x, y, x + 5, y + 5), fill=alt)
    elif texture == "grid":
        for v in range(0, size, 7):
            d.rectangle((0, v, size, v + 1), fill=alt)
            d.rectangle((v, 0, v + 1, size), fill=alt)
    elif texture == "diagonal":
        for c in range(-size, size, 7):
            d.line((c, 0, c + size, size), fill=alt, width=2)
    return img


@functools.cache
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def render(scene: Scene, background: tuple[int, int, int], size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene as an RGB ``size`` x ``size`` image (pure function of its arguments)."""
    cx, cy = _CENTERS[scene.position]
    cx, cy = cx * size + scene.dx, cy * size + scene.dy
    r = _RADIUS[scene.size] * size
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    polys = []
    if scene.shape in ("circle", "ring"):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if scene.shape == "ring":
            d.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    else:
        polys = [[(round(cx + x * r, 2), round(cy + y * r, 2)) for x, y in poly] for poly in _POLYGONS[scene.shape]]
        for poly in polys:
            d.polygon(poly, fill=255)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    if scene.kind == "emblem":  # a badge framed in the emblem's frame colour
        draw.rectangle((1, 1, size - 2, size - 2), outline=vocab.RGB[scene.trim], width=4)
    img.paste(_fill(scene.color, scene.texture, scene.shade, size), mask=mask)
    if scene.kind == "garment" and scene.trim != "none":  # trim: a 2-pixel outline of the silhouette
        for poly in polys:
            draw.polygon(poly, outline=vocab.RGB[scene.trim], width=2)
    if scene.label:
        draw.text((5, size - 16), scene.label, fill=(0, 0, 0), font=_font())
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    """JPEG as real M-BEIR stores (4:4:4 chroma, so thin textures keep their colour); no EXIF or
    timestamps: same pixels -> same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


# ---------------------------------------------------------------- column generators


@functools.cache
def _world(kind: str) -> tuple[Scene, ...]:
    return tuple(vocab.all_scenes(kind))


class _Keys:
    """Described-attribute keys already used in one pool, so no distractor is secretly a positive."""

    def __init__(self) -> None:
        self.taken: set[tuple] = set()

    def take(self, s: Scene) -> Scene:
        self.taken.add(s.key())
        return s

    def fresh(self, rng: random.Random, make: Callable[[], Scene], kind: str, tries: int = 64) -> Scene:
        """A scene from ``make()`` whose key is free; once ``tries`` draws collide (the neighbourhood
        ``make`` samples is full), the first free scene of the whole world from a random start."""
        for _ in range(tries):
            s = make()
            if s.key() not in self.taken:
                return self.take(s)
        world = _world(kind)
        start = rng.randrange(len(world))
        for i in range(len(world)):
            s = world[(start + i) % len(world)]
            if s.key() not in self.taken:
                return self.take(s)
        raise RuntimeError(f"MBEIR-mini: a pool needs more than the {len(world)} distinct {kind} scenes of the "
                           "attribute world; lower data.synth_scale")

    def neighbour(self, rng: random.Random, base: Scene, attr: str | None = None) -> Scene | None:
        """A free scene one described attribute away from ``base`` (``attr`` if given), or None."""
        for _ in range(8):
            s = vocab.change_one(rng, base, attr)[0]
            if s.key() not in self.taken:
                return self.take(s)
        attrs = [attr] if attr else list(vocab.EDITABLE[base.kind])
        rng.shuffle(attrs)
        for a in attrs:
            for s in vocab.neighbours(base, a):
                if s.key() not in self.taken:
                    return self.take(s)
        return None


def _scenes(rng, keys: _Keys, kind: str, n: int) -> list[Scene]:
    return [keys.fresh(rng, lambda: vocab.random_scene(rng, kind), kind) for _ in range(n)]


def _near_dups(rng, keys: _Keys, bases: list[Scene], n: int) -> list[Scene]:
    """Distractors one attribute away from a positive (the hard part of a column); where every
    neighbour of the drawn positive is taken, another positive's, else any free scene."""
    out = []
    for _ in range(n if bases else 0):
        for _try in range(8):
            s = keys.neighbour(rng, rng.choice(bases))
            if s is not None:
                break
        else:
            s = keys.fresh(rng, lambda: vocab.random_scene(rng, bases[0].kind), bases[0].kind)
        out.append(s)
    return out


def _src(scene: Scene | None, **extra) -> dict:
    out = {"scene": {k: v for k, v in asdict(scene).items() if k not in ("dx", "dy", "shade")}} if scene else {}
    out.update(extra)
    return out


_CAPTIONS = {"VisualNews": ("object", vocab.news_caption), "MSCOCO": ("object", vocab.coco_caption),
             "Fashion200K": ("garment", vocab.fashion_caption)}


def _caption_column(col: Column, rng, n_q: int, n_d: int, _catalog) -> tuple[list[QuerySpec], list[CandSpec]]:
    """Task 0 (caption -> image) and task 3 (image -> caption) for VisualNews, MSCOCO, Fashion200K."""
    kind, caption = _CAPTIONS[col.dataset]
    keys = _Keys()
    pos = _scenes(rng, keys, kind, n_q)
    hard = _near_dups(rng, keys, pos, n_d // 2)
    scenes = pos + hard + _scenes(rng, keys, kind, n_d - len(hard))
    if col.task_id == 0:
        cands = [CandSpec(None, vocab.jitter(rng, s), _src(s)) for s in scenes]
        queries = [QuerySpec(caption(s, rng.randrange(3)), None, [i], _src(s)) for i, s in enumerate(pos)]
    else:
        cands = [CandSpec(caption(s, rng.randrange(3)), None, _src(s)) for s in scenes]
        queries = [QuerySpec(None, vocab.jitter(rng, s), [i], _src(s)) for i, s in enumerate(pos)]
    return queries, cands


def _nights(col, rng, n_q, n_d, _catalog):
    """Image -> most similar image: the positive is a re-shot (jittered) copy; distractors differ in one attribute."""
    keys = _Keys()
    pos = _scenes(rng, keys, "object", n_q)
    hard = _near_dups(rng, keys, pos, (2 * n_d) // 3)
    scenes = pos + hard + _scenes(rng, keys, "object", n_d - len(hard))
    cands = [CandSpec(None, vocab.jitter(rng, s, 4), _src(s)) for s in scenes]
    queries = [QuerySpec(None, vocab.jitter(rng, s, 4), [i], _src(s)) for i, s in enumerate(pos)]
    return queries, cands


def _edis(col, rng, n_q, n_d, _catalog):
    """Headline -> (news photo, headline): two positives per query (two shots with other headlines)."""
    keys = _Keys()
    pos = _scenes(rng, keys, "object", n_q)
    cands, queries = [], []
    for s in pos:
        v = rng.randrange(3)
        queries.append(QuerySpec(vocab.news_caption(s, v), None, [len(cands), len(cands) + 1], _src(s)))
        for other in (v + 1, v + 2):
            cands.append(CandSpec(vocab.news_caption(s, other), vocab.jitter(rng, s), _src(s)))
    hard = _near_dups(rng, keys, pos, n_d // 2)
    for s in hard + _scenes(rng, keys, "object", n_d - len(hard)):
        cands.append(CandSpec(vocab.news_caption(s, rng.randrange(3)), vocab.jitter(rng, s), _src(s)))
    return queries, cands


def _ref_and_target(rng, keys: _Keys, kind: str) -> tuple[Scene, Scene]:
    """A fresh reference scene and a free target one attribute away from it."""
    while True:
        ref = keys.fresh(rng, lambda: vocab.random_scene(rng, kind), kind)
        target = keys.neighbour(rng, ref)
        if target is not None:
            return ref, target


def _composed(col, rng, n_q, n_d, _catalog):
    """(reference image, edit) -> target image (FashionIQ garments, CIRR scenes). The pool holds the
    reference images and other edits of the same attribute: matching the reference is not enough."""
    kind = "garment" if col.dataset == "FashionIQ" else "object"
    keys = _Keys()
    queries, cands, targets = [], [], []
    for _ in range(n_q):
        ref, target = _ref_and_target(rng, keys, kind)
        attr = next(a for a in vocab.EDITABLE[kind] if getattr(ref, a) != getattr(target, a))
        targets.append((ref, target, attr))
        queries.append(QuerySpec(vocab.edit_text(ref, target, attr, rng.randrange(2)), vocab.jitter(rng, ref),
                                 [len(cands)], _src(target, reference=_src(ref)["scene"], edit=attr)))
        cands.append(CandSpec(None, vocab.jitter(rng, target), _src(target)))
    distract: list[Scene] = []
    # Hard: the reference image itself (already a taken key) for a third, other edits of it for a third.
    for ref, _t, _a in targets[: min(n_d // 3, len(targets))]:
        distract.append(ref)
    for ref, _t, attr in targets[: min(n_d // 3, len(targets))]:
        other = keys.neighbour(rng, ref, attr) or keys.neighbour(rng, ref)
        distract.append(other or keys.fresh(rng, lambda: vocab.random_scene(rng, kind), kind))
    distract += _scenes(rng, keys, kind, n_d - len(distract))
    cands += [CandSpec(None, vocab.jitter(rng, s), _src(s)) for s in distract]
    return queries, cands


def _entities(rng, catalog: list[Entity], n: int) -> list[Entity]:
    """``n`` distinct entities (their emblems differ by construction: the image identifies the entity)."""
    if n > len(catalog):
        raise RuntimeError(f"MBEIR-mini: a column needs {n} entities, the world has {len(catalog)}; "
                           "lower data.synth_scale")
    return rng.sample(catalog, n)


def _emblem(rng, e: Entity) -> Scene:
    """An entity's emblem photographed at some size and place."""
    return vocab.jitter(rng, replace(e.emblem, size=rng.choice(["medium", "large"]),
                                     position=rng.choice(vocab.POSITIONS)))


def _entity_column(col, rng, n_q, n_d, catalog):
    """WebQA (tasks 1, 2), OVEN and InfoSeek (tasks 6, 8): questions about entities of the world."""
    hard_n = min(n_q // 2, n_d) if col.dataset in ("WebQA", "InfoSeek") and col.task_id != 2 else 0
    ents = _entities(rng, catalog, n_q + n_d - hard_n)
    asked, others = ents[:n_q], ents[n_q:]
    with_img = col.task_id in (2, 8)

    def card(e: Entity, fact: str) -> CandSpec:
        if col.task_id == 2:
            return CandSpec(vocab.emblem_title(e), _emblem(rng, e), {"entity": e.name, "fact": "emblem"})
        return CandSpec(vocab.entity_passage(e, fact), _emblem(rng, e) if with_img else None,
                        {"entity": e.name, "fact": fact})

    queries, cands = [], []
    for i, e in enumerate(asked):
        if col.dataset == "OVEN" or col.task_id == 2:
            fact = "emblem"
        else:
            fact = rng.choice(vocab.FACTS + (("emblem",) if col.dataset == "WebQA" else ()))
        v = rng.randrange(2)
        if col.task_id in (1, 2):
            q = QuerySpec(vocab.entity_question(e, fact, v), None, [len(cands)], {"entity": e.name, "fact": fact})
        else:
            q = QuerySpec(vocab.image_question("entity" if fact == "emblem" else fact, v), _emblem(rng, e),
                          [len(cands)], {"entity": e.name, "fact": fact})
        queries.append(q)
        cands.append(card(e, fact))
        if i < hard_n:  # same entity, the passage answering another question
            cands.append(card(e, rng.choice([f for f in vocab.FACTS + ("emblem",) if f != fact])))
    cands += [card(e, rng.choice(vocab.FACTS + ("emblem",))) for e in others]
    return queries, cands


GENERATORS = {
    "visualnews_task0": _caption_column, "mscoco_task0": _caption_column, "fashion200k_task0": _caption_column,
    "visualnews_task3": _caption_column, "mscoco_task3": _caption_column, "fashion200k_task3": _caption_column,
    "webqa_task1": _entity_column, "webqa_task2": _entity_column, "edis_task2": _edis, "nights_task4": _nights,
    "oven_task6": _entity_column, "infoseek_task6": _entity_column, "oven_task8": _entity_column,
    "infoseek_task8": _entity_column, "fashioniq_task7": _composed, "cirr_task7": _composed,
}


# ---------------------------------------------------------------- writing


class _Writer:
    """Assigns ids (per dataset, in generation order), writes images, builds records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.next_q: dict[int, int] = {}
        self.next_c: dict[int, int] = {}
        self.images = 0

    def _image(self, col: Column, split: str, name: str, scene: Scene) -> str:
        rel = f"mbeir_images/{col.dataset.lower()}_images/{split}/{name}.jpg"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(render(scene, BACKGROUND[col.dataset])))  # inside atomic_dir's temp tree
        self.images += 1
        return rel

    def candidates(self, col: Column, split: str, cands: list[CandSpec], rng) -> tuple[list[Candidate], list[str]]:
        """The column's pool in a shuffled order (positives must not sit at predictable positions) and
        the did of each spec."""
        ds = col.dataset_id
        order = list(range(len(cands)))
        rng.shuffle(order)
        dids = [""] * len(cands)
        out = []
        for idx in order:
            spec = cands[idx]
            n = self.next_c.get(ds, 1)
            self.next_c[ds] = n + 1
            did = dids[idx] = f"{ds}:{n}"
            img = self._image(col, split, f"c{ds}_{n}", spec.scene) if spec.scene else None
            out.append(Candidate(did, spec.txt, img, modality_of(bool(spec.txt), bool(img)),
                                 json.dumps(spec.src, sort_keys=True)))
        return out, dids

    def queries(self, col: Column, split: str, specs: list[QuerySpec], dids: list[str]) -> list[Query]:
        ds, out = col.dataset_id, []
        for spec in specs:
            n = self.next_q.get(ds, 1)
            self.next_q[ds] = n + 1
            img = self._image(col, split, f"q{ds}_{n}", spec.scene) if spec.scene else None
            src = json.dumps(dict(spec.src, column=col.name), sort_keys=True)
            out.append(Query(f"{ds}:{n}", spec.txt, img, col.query_modality, src, [dids[i] for i in spec.pos], [],
                             col.task_id))
        return out


def _qrels_text(queries: list[Query]) -> str:
    return "".join(f"{q.qid} 0 {did} 1 {q.task_id}\n" for q in queries for did in q.pos_cand_list)


def scaled(n: int, scale: float) -> int:
    return max(2, round(n * scale))


def _val_indices(n_total: int, n_val: int) -> set[int]:
    """``n_val`` query indices spread evenly over ``range(n_total)`` (the rest are test queries)."""
    return {i for i in range(n_total) if (i * n_val) // n_total != ((i + 1) * n_val) // n_total}


def synth_mbeir(out: str | Path, seed: int = 0, scale: float = 1.0, eval_scale: float = 1.0) -> Path:
    """Write MBEIR-mini under ``out`` (replacing it) and return the path. Same (seed, scale, eval_scale) ->
    same bytes. ``eval_scale`` multiplies, on top of ``scale``, the test queries and the pools' distractors
    only (not train or val): more test queries narrow the confidence intervals (24 a column = 4.2 points
    a query; 96 = 1.04) without lengthening training."""
    if scale <= 0 or eval_scale <= 0:
        raise ValueError(f"scale and eval_scale must be > 0, got {scale}, {eval_scale}")
    out = Path(out)
    n_train, n_test, n_val, n_d = (scaled(n, scale) for n in (TRAIN_QUERIES, TEST_QUERIES, VAL_QUERIES, DISTRACTORS))
    n_test, n_d = scaled(n_test, eval_scale), scaled(n_d, eval_scale)
    catalog = vocab.entity_catalog(random.Random(f"mbeir-mini:{seed}:catalog"))
    with atomic_dir(out) as tmp:
        writer = _Writer(tmp)
        train_q: dict[str, list[Query]] = {}
        union_c: list[Candidate] = []
        for col in TABLE1_COLUMNS:
            rng = random.Random(f"mbeir-mini:{seed}:train:{col.name}")
            qspecs, cspecs = GENERATORS[col.name](col, rng, n_train, 0, catalog)
            cands, dids = writer.candidates(col, "train", cspecs, rng)
            train_q.setdefault(col.dataset, []).extend(writer.queries(col, "train", qspecs, dids))
            union_c += cands
        for dataset, queries in sorted(train_q.items()):
            write_jsonl(tmp / train_query_file(dataset), queries)
        write_jsonl(tmp / UNION_TRAIN_QUERIES, [q for col_q in train_q.values() for q in col_q])
        write_jsonl(tmp / global_pool_file("train"), union_c)

        split_q: dict[str, list[Query]] = {"val": [], "test": []}
        split_pools: dict[str, dict[str, list[Candidate]]] = {"val": {}, "test": {}}
        for col in TABLE1_COLUMNS:
            rng = random.Random(f"mbeir-mini:{seed}:eval:{col.name}")
            qspecs, cspecs = GENERATORS[col.name](col, rng, n_test + n_val, n_d, catalog)
            cands, dids = writer.candidates(col, "test", cspecs, rng)
            val_idx = _val_indices(len(qspecs), n_val)
            by_split = {"val": [q for i, q in enumerate(qspecs) if i in val_idx],
                        "test": [q for i, q in enumerate(qspecs) if i not in val_idx]}
            val_only = {dids[p] for q in by_split["val"] for p in q.pos}
            for split, specs in by_split.items():
                queries = writer.queries(col, split, specs, dids)
                query_file, pool_file, qrels_file = col.files(split)
                write_jsonl(tmp / query_file, queries)
                write_text_atomic(tmp / qrels_file, _qrels_text(queries))
                split_q[split] += queries
                # MSCOCO's test pool is its own file: the val queries' positives are not in it.
                pool = cands
                if split == "test" and pool_file != col.pool_file_for("val"):
                    pool = [c for c in cands if c.did not in val_only]
                if pool_file not in split_pools[split]:
                    split_pools[split][pool_file] = pool
                    write_jsonl(tmp / pool_file, pool)
        write_jsonl(tmp / UNION_VAL_QUERIES, split_q["val"])
        for split, pools in split_pools.items():
            write_jsonl(tmp / global_pool_file(split), [c for pool in pools.values() for c in pool])
        write_instructions(tmp / INSTRUCTIONS_FILE)
        write_json_atomic(tmp / MANIFEST, {
            "name": "MBEIR-mini", "seed": seed, "scale": scale, "eval_scale": eval_scale, "image_size": IMAGE_SIZE, "image_format": "JPEG",
            "images": writer.images,
            "queries": {"train": sum(len(q) for q in train_q.values()), **{k: len(v) for k, v in split_q.items()}},
            "global_pool": {"train": len(union_c), **{k: sum(map(len, v.values())) for k, v in split_pools.items()}},
        }, sort_keys=True)
    return out


def synth_nli(out: str | Path, rows: int = 512, seed: int = 0) -> Path:
    """SimCSE-format NLI csv (``sent0,sent1,hard_neg``) about MBEIR-mini's world (issue 14): sent1 describes
    sent0's scene or entity in another form, hard_neg a neighbour one attribute away
    (:func:`puma.data.vocab.world_nli_triple`; the entities are MBEIR-mini's for the same ``seed``).
    Deterministic; written atomically."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    out = Path(out)
    rng = random.Random(f"nli:{seed}")
    catalog = vocab.entity_catalog(random.Random(f"mbeir-mini:{seed}:catalog"))

    def write(f) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sent0", "sent1", "hard_neg"])
        for _ in range(rows):
            w.writerow(vocab.world_nli_triple(rng, catalog))

    atomic_write(out, write, mode="w")
    return out
