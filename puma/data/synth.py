"""MBEIR-mini: a synthetic M-BEIR in the exact layout and schema, learnable by construction.

Every image is a PIL drawing of a :class:`~puma.data.vocab.Scene` (colour, shape or garment, size,
position, texture, small text); every caption, question, edit and passage is written from the same
attributes, and positives are defined by them. So a retriever can *learn* each task (the attributes
are visible in both modalities), while some columns are hard on purpose: near-duplicate distractors
that differ in one attribute (NIGHTS, Fashion200K, MSCOCO), same-entity passages that answer another
question (WebQA, InfoSeek), and composed image + edit -> image queries whose pool holds the reference
image and other edits of it (FashionIQ, CIRR).

Layout written under ``out`` (M-BEIR's; ``img_path`` relative to ``out``)::

    query/{train,union_train,test}/...jsonl   cand_pool/local/...   cand_pool/global/mbeir_union_{train,test}_cand_pool.jsonl
    qrels/{train,test}/...txt   instructions/query_instructions.tsv   mbeir_images/<dataset>_images/<split>/*.png

Deterministic: the same (seed, scale) gives the same bytes (string-seeded ``random.Random`` per
(split, column); PNGs carry no metadata). Built in a temporary sibling folder and moved into place,
so an interrupted run never leaves a half-written dataset.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from puma.data import vocab
from puma.data.columns import (
    GLOBAL_TEST_POOL,
    GLOBAL_TRAIN_POOL,
    INSTRUCTIONS_FILE,
    TABLE1_COLUMNS,
    UNION_TRAIN_QUERIES,
    Column,
)
from puma.data.instructions import write_instructions
from puma.data.schema import Candidate, Query, modality_of, write_jsonl
from puma.data.vocab import Entity, Scene

IMAGE_SIZE = 84  # 3x3 merged visual tokens: inside the tiny pixel budget (4..16 tokens)
# Sizes at synth_scale 1.0 (per column); scale multiplies all three.
TEST_QUERIES, DISTRACTORS, TRAIN_QUERIES = 24, 56, 48
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
    "dress": [[(-0.35, -1), (0.35, -1), (0.4, -0.3), (0.9, 1), (-0.9, 1), (-0.4, -0.3)]],
    "shirt": [[(-1, -0.7), (-0.4, -1), (0.4, -1), (1, -0.7), (0.8, -0.3), (0.5, -0.4), (0.5, 1), (-0.5, 1),
               (-0.5, -0.4), (-0.8, -0.3)]],
    "skirt": [[(-0.5, -0.8), (0.5, -0.8), (0.95, 0.9), (-0.95, 0.9)]],
    "trousers": [[(-0.6, -1), (0.6, -1), (0.7, 1), (0.15, 1), (0, -0.3), (-0.15, 1), (-0.7, 1)]],
    "hat": [[(-1, 0.4), (1, 0.4), (1, 0.65), (-1, 0.65)], [(-0.5, -0.5), (0.5, -0.5), (0.55, 0.4), (-0.55, 0.4)]],
    "bag": [[(-0.8, -0.2), (0.8, -0.2), (0.9, 1), (-0.9, 1)], [(-0.45, -0.2), (-0.35, -0.8), (0.35, -0.8),
                                                             (0.45, -0.2), (0.3, -0.2), (0.22, -0.6),
                                                             (-0.22, -0.6), (-0.3, -0.2)]],
}
_CENTERS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7),
            "center": (0.5, 0.5)}
_RADIUS = {"small": 0.12, "medium": 0.2, "large": 0.28}


def _shade(rgb: tuple[int, int, int], delta: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + delta)) for c in rgb)


def _fill(color: str, texture: str, shade: int, size: int) -> Image.Image:
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
    return img


def render(scene: Scene, background: tuple[int, int, int], size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene as an RGB ``size`` x ``size`` image (pure function of its arguments)."""
    cx, cy = _CENTERS[scene.position]
    cx, cy = cx * size + scene.dx, cy * size + scene.dy
    r = _RADIUS[scene.size] * size
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    if scene.shape in ("circle", "ring"):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if scene.shape == "ring":
            d.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    else:
        for poly in _POLYGONS[scene.shape]:
            d.polygon([(round(cx + x * r, 2), round(cy + y * r, 2)) for x, y in poly], fill=255)
    img = Image.new("RGB", (size, size), background)
    if scene.kind == "emblem":  # a framed badge
        ImageDraw.Draw(img).rectangle((1, 1, size - 2, size - 2), outline=(60, 60, 90), width=3)
    img.paste(_fill(scene.color, scene.texture, scene.shade, size), mask=mask)
    if scene.label:
        ImageDraw.Draw(img).text((5, size - 16), scene.label, fill=(0, 0, 0), font=ImageFont.load_default())
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # no text chunks or timestamps: same pixels -> same bytes
    return buf.getvalue()


# ---------------------------------------------------------------- column generators


class _Keys:
    """Described-attribute keys already used in one pool, so no distractor is secretly a positive."""

    def __init__(self) -> None:
        self.taken: set[tuple] = set()

    def fresh(self, rng: random.Random, make: Callable[[], Scene], tries: int = 10_000) -> Scene:
        for _ in range(tries):
            s = make()
            if s.key() not in self.taken:
                self.taken.add(s.key())
                return s
        raise RuntimeError("MBEIR-mini: attribute space exhausted; lower data.synth_scale")


def _scenes(rng, keys: _Keys, kind: str, n: int) -> list[Scene]:
    return [keys.fresh(rng, lambda: vocab.random_scene(rng, kind)) for _ in range(n)]


def _near_dups(rng, keys: _Keys, bases: list[Scene], n: int) -> list[Scene]:
    """Distractors one attribute away from a positive (the hard part of a column)."""
    return [keys.fresh(rng, lambda: vocab.change_one(rng, rng.choice(bases))[0]) for _ in range(n)] if bases else []


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


def _composed(col, rng, n_q, n_d, _catalog):
    """(reference image, edit) -> target image (FashionIQ garments, CIRR scenes). The pool holds the
    reference images and other edits of the same attribute: matching the reference is not enough."""
    kind = "garment" if col.dataset == "FashionIQ" else "object"
    keys = _Keys()
    refs = _scenes(rng, keys, kind, n_q)
    queries, cands, targets = [], [], []
    for ref in refs:
        target = keys.fresh(rng, lambda ref=ref: vocab.change_one(rng, ref)[0])
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
        distract.append(keys.fresh(rng, lambda ref=ref, attr=attr: vocab.change_one(rng, ref, attr)[0]))
    distract += _scenes(rng, keys, kind, n_d - len(distract))
    cands += [CandSpec(None, vocab.jitter(rng, s), _src(s)) for s in distract]
    return queries, cands


def _entities(rng, catalog: list[Entity], n: int) -> list[Entity]:
    """``n`` distinct entities whose emblems are pairwise different (the image must identify the entity)."""
    out, seen = [], set()
    for e in rng.sample(catalog, len(catalog)):
        if e.emblem.key()[:4] not in seen:
            seen.add(e.emblem.key()[:4])
            out.append(e)
            if len(out) == n:
                return out
    raise RuntimeError("MBEIR-mini: not enough distinct entities; lower data.synth_scale")


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

    def _image(self, col: Column, split: str, name: str, scene: Scene) -> str:
        rel = f"mbeir_images/{col.dataset.lower()}_images/{split}/{name}.png"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(render(scene, BACKGROUND[col.dataset])))
        return rel

    def column(self, col: Column, split: str, queries: list[QuerySpec], cands: list[CandSpec], rng):
        ds = col.dataset_id
        order = list(range(len(cands)))
        rng.shuffle(order)  # positives must not sit at predictable pool positions (ties, order effects)
        dids: dict[int, str] = {}
        out_c = []
        for idx in order:
            spec = cands[idx]
            n = self.next_c.get(ds, 1)
            self.next_c[ds] = n + 1
            did = f"{ds}:{n}"
            dids[idx] = did
            img = self._image(col, split, f"c{ds}_{n}", spec.scene) if spec.scene else None
            modality = modality_of(bool(spec.txt), bool(img))
            out_c.append(Candidate(did, spec.txt, img, modality, json.dumps(spec.src, sort_keys=True)))
        out_q = []
        for spec in queries:
            n = self.next_q.get(ds, 1)
            self.next_q[ds] = n + 1
            qid = f"{ds}:{n}"
            img = self._image(col, split, f"q{ds}_{n}", spec.scene) if spec.scene else None
            src = json.dumps(dict(spec.src, column=col.name), sort_keys=True)
            out_q.append(Query(qid, spec.txt, img, col.query_modality, src, [dids[i] for i in spec.pos], [],
                               col.task_id))
        return out_q, out_c


def _qrels_lines(queries: list[Query]) -> list[str]:
    return [f"{q.qid} 0 {did} 1 {q.task_id}\n" for q in queries for did in q.pos_cand_list]


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def scaled(n: int, scale: float) -> int:
    return max(2, round(n * scale))


def synth_mbeir(out: str | Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Write MBEIR-mini under ``out`` (replacing it) and return the path. Same (seed, scale) -> same bytes."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        catalog = vocab.entity_catalog(random.Random(f"mbeir-mini:{seed}:catalog"))
        writer = _Writer(tmp)
        union_q: list[Query] = []
        union_c: list[Candidate] = []
        test_c: list[Candidate] = []
        for split, n_q, n_d in (("train", scaled(TRAIN_QUERIES, scale), 0),
                                ("test", scaled(TEST_QUERIES, scale), scaled(DISTRACTORS, scale))):
            for col in TABLE1_COLUMNS:
                rng = random.Random(f"mbeir-mini:{seed}:{split}:{col.name}")
                qspecs, cspecs = GENERATORS[col.name](col, rng, n_q, n_d, catalog)
                queries, cands = writer.column(col, split, qspecs, cspecs, rng)
                if split == "train":
                    write_jsonl(tmp / f"query/train/mbeir_{col.name}_train.jsonl", queries)
                    _write_text(tmp / f"qrels/train/mbeir_{col.name}_train_qrels.txt", _qrels_lines(queries))
                    union_q += queries
                    union_c += cands
                else:
                    write_jsonl(tmp / col.query_file, queries)
                    write_jsonl(tmp / col.pool_file, cands)
                    _write_text(tmp / col.qrels_file, _qrels_lines(queries))
                    test_c += cands
        write_jsonl(tmp / UNION_TRAIN_QUERIES, union_q)
        write_jsonl(tmp / GLOBAL_TRAIN_POOL, union_c)
        write_jsonl(tmp / GLOBAL_TEST_POOL, test_c)
        write_instructions(tmp / INSTRUCTIONS_FILE)
        manifest = {"name": "MBEIR-mini", "seed": seed, "scale": scale, "image_size": IMAGE_SIZE}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            shutil.rmtree(old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def synth_nli(out: str | Path, rows: int = 512, seed: int = 0) -> Path:
    """SimCSE-format NLI csv (``sent0,sent1,hard_neg``): sent1 entails sent0 (paraphrase of every part),
    hard_neg contradicts it (another activity). Deterministic; written atomically."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"nli:{seed}")
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sent0", "sent1", "hard_neg"])
        for _ in range(rows):
            w.writerow(vocab.nli_triple(rng))
    os.replace(tmp, out)
    return out
