"""The closed world of MBEIR-mini: attribute values, entities, and the texts written about them.

Shared by the synthetic data generator (:mod:`puma.data.synth`) and the tiny tokenizer's training
corpus (:mod:`puma.data.corpus`), so every caption, question, edit, passage and NLI sentence the
generator writes is made of the words the tokenizer was trained on. Pure Python, no randomness of its
own: callers pass a ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "brown", "gray", "cyan"]
RGB = {
    "red": (220, 30, 30), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "purple": (130, 50, 170), "orange": (245, 140, 20), "black": (20, 20, 20), "white": (252, 252, 252),
    "pink": (245, 150, 190), "brown": (120, 75, 35), "gray": (128, 128, 128), "cyan": (40, 210, 220),
}
SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon", "pentagon", "octagon", "arrow",
          "heart"]
SIZES = ["small", "medium", "large"]
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
TEXTURES = ["plain", "striped", "dotted", "checkered", "grid", "diagonal"]
GARMENTS = ["dress", "shirt", "skirt", "trousers", "hat", "bag", "coat", "shorts", "scarf", "boot"]
# A garment's trim (the outline of the silhouette) and an emblem's frame: "none" or a colour.
TRIMS = ["none", *COLORS]
REGIONS = ["the north", "the south", "the east", "the west", "the valley", "the lowlands", "the hills", "the old town"]
_NAME_HEADS = ["Alder", "Bright", "Cinder", "Dun", "Elms", "Falcon", "Glen", "Harrow", "Iron", "Juniper", "Kestrel",
               "Lark", "Marrow", "North", "Oak", "Pine", "Quarry", "Raven", "Stone", "Thorn", "Umber", "Vale",
               "Willow", "Yarrow", "Ash", "Birch", "Copper", "Deer", "Ember", "Frost", "Gold", "Hazel"]
_NAME_TAILS = ["moor", "water", "ridge", "haven", "field", "crest", "brook", "ford", "wood", "gate", "hill", "mere"]
_NAME_KINDS = ["Castle", "Bridge", "Tower", "Abbey", "Museum", "Station", "Library", "Harbor", "Palace", "Temple",
               "Gallery", "Theater", "Market", "Chapel", "Fort", "Garden"]
# Every entity name of the world: "Aldermoor Castle", ... (32 x 12 x 16 = 6144 names).
ENTITIES = [f"{h}{t} {k}" for k in _NAME_KINDS for h in _NAME_HEADS for t in _NAME_TAILS]


@dataclass(frozen=True)
class Scene:
    """What one MBEIR-mini image shows. ``kind``: object (MSCOCO/VisualNews/NIGHTS/CIRR scenes),
    garment (Fashion200K/FashionIQ product photos, ``shape`` is a garment) or emblem (an entity's
    emblem with its initials as small text). ``dx, dy, shade`` are render jitter, not described in text."""

    kind: str
    color: str
    shape: str
    size: str = "large"
    position: str = "center"
    texture: str = "plain"
    label: str | None = None
    trim: str = "none"  # garments: trim colour; emblems: frame colour
    dx: int = 0
    dy: int = 0
    shade: int = 0

    def key(self) -> tuple:
        """The attributes texts describe: two scenes with the same key are the same answer."""
        if self.kind == "garment":
            return (self.kind, self.color, self.shape, self.texture, self.trim)
        if self.kind == "emblem":
            return (self.kind, self.color, self.shape, self.texture, self.trim, self.label)
        return (self.kind, self.color, self.shape, self.size, self.position, self.texture)


def random_scene(rng: random.Random, kind: str = "object") -> Scene:
    if kind == "garment":
        color = rng.choice(COLORS)
        return Scene("garment", color, rng.choice(GARMENTS), "large", "center", rng.choice(TEXTURES),
                     trim=rng.choice([t for t in TRIMS if t != color]))
    return Scene(kind, rng.choice(COLORS), rng.choice(SHAPES), rng.choice(SIZES), rng.choice(POSITIONS),
                 rng.choice(TEXTURES))


def all_scenes(kind: str) -> list[Scene]:
    """Every described scene of ``kind`` ("object" or "garment"), in a fixed order (the attribute world:
    12 x 12 x 3 x 9 x 6 = 23,328 objects, 12 x 10 x 6 x 12 = 8,640 garments: a trim never has the
    garment's own colour, which would not show)."""
    if kind == "garment":
        return [Scene("garment", c, g, "large", "center", t, trim=tr)
                for c in COLORS for g in GARMENTS for t in TEXTURES for tr in TRIMS if tr != c]
    return [Scene(kind, c, sh, si, p, t) for c in COLORS for sh in SHAPES for si in SIZES for p in POSITIONS
            for t in TEXTURES]


def jitter(rng: random.Random, scene: Scene, px: int = 3) -> Scene:
    """Same described scene, a slightly different picture (NIGHTS positives, re-shot photos)."""
    return replace(scene, dx=rng.randint(-px, px), dy=rng.randint(-px, px), shade=6 * rng.randint(-3, 3))


EDITABLE = {"object": ("color", "shape", "size", "position", "texture"),
            "garment": ("color", "shape", "texture", "trim")}
_VALUES = {"color": COLORS, "shape": SHAPES, "size": SIZES, "position": POSITIONS, "texture": TEXTURES,
           "trim": TRIMS}


def change_one(rng: random.Random, scene: Scene, attr: str | None = None) -> tuple[Scene, str]:
    """A copy of ``scene`` with one described attribute changed; returns (scene, attribute name)."""
    attr = attr or rng.choice(EDITABLE[scene.kind])
    values = GARMENTS if (attr == "shape" and scene.kind == "garment") else _VALUES[attr]
    # A garment's trim and colour differ (a trim of the garment's own colour would not show).
    clash = {"trim": scene.color, "color": scene.trim} if scene.kind == "garment" else {}
    new = rng.choice([v for v in values if v != getattr(scene, attr) and v != clash.get(attr)])
    return replace(scene, **{attr: new}), attr


def neighbours(scene: Scene, attr: str) -> list[Scene]:
    """Every scene one change of ``attr`` away from ``scene``, in a fixed order (same rules as
    :func:`change_one`)."""
    values = GARMENTS if (attr == "shape" and scene.kind == "garment") else _VALUES[attr]
    clash = {"trim": scene.color, "color": scene.trim} if scene.kind == "garment" else {}
    return [replace(scene, **{attr: v}) for v in values if v != getattr(scene, attr) and v != clash.get(attr)]


# ---------------------------------------------------------------- texts about scenes


def _pattern(t: str) -> str:
    return "" if t == "plain" else f" with a {t} pattern"


def _trim(t: str) -> str:
    return "" if t == "none" else f" with {t} trim"


def coco_caption(s: Scene, variant: int) -> str:
    """MSCOCO-style everyday caption."""
    forms = [
        f"A {s.size} {s.color} {s.shape}{_pattern(s.texture)} in the {s.position} of the picture.",
        f"There is a {s.size} {s.texture} {s.color} {s.shape} at the {s.position}.",
        f"A picture with {_a(s.color)} {s.shape} that is {s.size} and {s.texture}, placed in the {s.position}.",
    ]
    return forms[variant % len(forms)]


def news_caption(s: Scene, variant: int) -> str:
    """VisualNews / EDIS-style headline."""
    forms = [
        f"City unveils a {s.size} {s.color} {s.shape} monument in the {s.position} of the main square.",
        f"Crowds gather around a {s.texture} {s.color} {s.shape} sculpture at the {s.position} of the park.",
        f"Officials report a {s.size} {s.color} {s.shape}{_pattern(s.texture)} seen in the {s.position} of town.",
    ]
    return forms[variant % len(forms)]


def fashion_caption(s: Scene, variant: int) -> str:
    """Fashion200K-style terse product description."""
    forms = [f"{s.color} {s.texture} {s.shape}{_trim(s.trim)}", f"{s.texture} {s.shape} in {s.color}{_trim(s.trim)}",
             f"women's {s.color} {s.shape}{_trim(s.trim)}, {s.texture} fabric"]
    return forms[variant % len(forms)]


def edit_text(before: Scene, after: Scene, attr: str, variant: int) -> str:
    """FashionIQ / CIRR-style modification text turning ``before`` into ``after``."""
    noun = before.shape
    if before.kind == "garment":
        forms = {
            "color": [f"is {after.color} instead of {before.color}", f"make it {after.color}"],
            "texture": [f"has a {after.texture} pattern", f"is {after.texture} instead of {before.texture}"],
            "shape": [f"is a {after.shape} instead of a {noun}", f"make it a {after.shape}"],
            "trim": [f"has {after.trim} trim" if after.trim != "none" else "has no trim",
                     f"make the trim {after.trim}" if after.trim != "none" else "remove the trim"],
        }[attr]
    else:
        forms = {
            "color": [f"make the {noun} {after.color}", f"change the color of the {noun} to {after.color}"],
            "shape": [f"change the {noun} to a {after.shape}", f"replace the {noun} with a {after.shape}"],
            "size": [f"make the {noun} {after.size}", f"the {noun} should be {after.size}"],
            "position": [f"move the {noun} to the {after.position}", f"put the {noun} in the {after.position}"],
            "texture": [f"give the {noun} a {after.texture} pattern", f"make the {noun} {after.texture}"],
        }[attr]
    return forms[variant % len(forms)]


# ---------------------------------------------------------------- entities (WebQA, OVEN, InfoSeek)


@dataclass(frozen=True)
class Entity:
    name: str
    emblem: Scene  # kind "emblem", label = the name's initials
    year: int
    region: str

    @property
    def kind(self) -> str:
        return self.name.split()[-1].lower()


# Emblem designs (colour, shape, pattern, frame): 12 x 12 x 6 x 12 = 10,368, more than there are entities.
EMBLEM_DESIGNS = [(c, sh, t, f) for c in COLORS for sh in SHAPES for t in TEXTURES for f in COLORS]


def entity_catalog(rng: random.Random) -> list[Entity]:
    """Every entity of the world with its own emblem design (no two entities share one, so the picture
    identifies the entity), a founding year and a region."""
    designs = rng.sample(EMBLEM_DESIGNS, len(ENTITIES))
    out = []
    for name, (color, shape, texture, frame) in zip(ENTITIES, designs, strict=True):
        initials = "".join(w[0] for w in name.split())
        emblem = Scene("emblem", color, shape, "large", "center", texture, initials, trim=frame)
        out.append(Entity(name, emblem, rng.randint(1700, 1999), rng.choice(REGIONS)))
    return out


FACTS = ("year", "region")


def entity_question(e: Entity, fact: str, variant: int) -> str:
    """A WebQA-style question about a named entity."""
    forms = {
        "year": [f"When was {e.name} founded?", f"In which year was {e.name} built?"],
        "region": [f"Where is {e.name} located?", f"In which part of the country is {e.name}?"],
        "emblem": [f"What does the emblem of {e.name} look like?", f"Which emblem does {e.name} have?"],
    }[fact]
    return forms[variant % len(forms)]


def image_question(fact: str, variant: int) -> str:
    """An OVEN / InfoSeek-style question about a pictured emblem (the entity is not named)."""
    forms = {
        "entity": ["Which place has this emblem?", "What is the name of the place shown by this emblem?"],
        "year": ["When was the place with this emblem founded?", "In which year was this place built?"],
        "region": ["Where is the place with this emblem?", "In which part of the country is this place?"],
    }[fact]
    return forms[variant % len(forms)]


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def emblem_words(e: Entity) -> str:
    s = e.emblem
    return f"{_a(s.color)} {s.shape}{_pattern(s.texture)} in a {s.trim} frame"


def entity_passage(e: Entity, fact: str) -> str:
    """A Wikipedia-style passage about one fact of an entity; every passage also describes the emblem."""
    if fact == "year":
        return f"{e.name} was founded in {e.year}. Its emblem is {emblem_words(e)}."
    if fact == "region":
        return f"{e.name} is {_a(e.kind)} in {e.region}. Its emblem shows {emblem_words(e)}."
    return f"{e.name} is {_a(e.kind)} known for its emblem, {emblem_words(e)}."


def emblem_title(e: Entity) -> str:
    return f"The emblem of {e.name}."


# ---------------------------------------------------------------- NLI sentences (stage 1)

# (subject, is_plural, paraphrases that entail it)
NLI_SUBJECTS = [
    ("A man", False, ["A guy", "A person"]), ("A woman", False, ["A lady", "A person"]),
    ("Two children", True, ["Two kids", "Some children"]), ("A dog", False, ["An animal", "A pet dog"]),
    ("An old man", False, ["An elderly man", "A man"]), ("A group of people", False, ["A crowd", "A group of persons"]),
    ("A girl", False, ["A young girl", "A child"]), ("A boy", False, ["A young boy", "A child"]),
    ("The players", True, ["The athletes", "Some players"]), ("A musician", False, ["A performer", "An artist"]),
    ("A chef", False, ["A cook", "A person"]), ("Several workers", True, ["Some workers", "A few employees"]),
]
# (activity, paraphrases, a contradicting activity)
NLI_VERBS = [
    ("walking", ["strolling", "taking a walk"], "sleeping"), ("running", ["jogging", "sprinting"], "sitting still"),
    ("sitting", ["sitting down", "taking a seat"], "running"), ("playing", ["playing a game", "having fun"], "sleeping"),
    ("cooking", ["preparing food", "making a meal"], "sleeping"), ("reading", ["reading a book", "looking at a book"],
                                                                   "dancing"),
    ("smiling", ["grinning", "looking happy"], "crying"), ("sleeping", ["taking a nap", "napping"], "running"),
    ("talking", ["chatting", "having a conversation"], "sitting in silence"),
    ("riding a bike", ["cycling", "riding a bicycle"], "walking"), ("singing", ["performing a song", "singing a song"],
                                                                    "sleeping"),
    ("swimming", ["taking a swim", "swimming around"], "sleeping"),
]
# (place, paraphrases)
NLI_PLACES = [
    ("in the park", ["in a park", "outdoors in a park"]), ("on the street", ["on a road", "outside on the street"]),
    ("at the beach", ["on the beach", "by the sea"]), ("in a kitchen", ["inside a kitchen", "indoors in a kitchen"]),
    ("on a stage", ["on stage", "in front of an audience"]), ("near the river", ["by the river", "close to a river"]),
    ("in the snow", ["outside in the snow", "on snowy ground"]), ("inside a house", ["indoors", "in a home"]),
    ("at the market", ["at a market", "among market stalls"]), ("on a field", ["on a grassy field", "outdoors on a field"]),
]


def world_nli_triple(rng: random.Random, catalog: list[Entity]) -> tuple[str, str, str]:
    """A SimCSE triple about MBEIR-mini's own world (what stage 1 trains on, so it can transfer to retrieval):
    sent0 describes a scene or an entity, sent1 describes the same one in another form, hard_neg describes a
    neighbour one attribute away in sent0's form (objects and garments: captions of every style; entities:
    a fact passage, paraphrased by another passage about the same entity, against another entity's passage
    on the same fact). Only the generator's own sentence forms, so the tokenizer knows every word."""
    kind = rng.choices(("object", "garment", "entity"), weights=(3, 1, 1))[0]
    if kind == "entity":
        e, facts = rng.choice(catalog), ["year", "region", "emblem"]
        fact = rng.choice(facts)
        other = rng.choice([f for f in facts if f != fact])
        neg = rng.choice([x for x in catalog if x.kind == e.kind and x.name != e.name])
        return entity_passage(e, fact), entity_passage(e, other), entity_passage(neg, fact)
    scene = random_scene(rng, kind)
    forms = ([(fashion_caption, v) for v in range(3)] if kind == "garment"
             else [(f, v) for f in (coco_caption, news_caption) for v in range(3)])
    (f0, v0), (f1, v1) = rng.sample(forms, 2)
    sent0 = f0(scene, v0)
    # A neighbour whose change sent0's form shows (some forms leave out the size or the texture).
    attrs = [a for a in EDITABLE[kind] if f0(neighbours(scene, a)[0], v0) != sent0]
    neighbour = change_one(rng, scene, rng.choice(attrs))[0]
    return sent0, f1(scene, v1), f0(neighbour, v0)


def nli_triple(rng: random.Random) -> tuple[str, str, str]:
    """(premise, entailed paraphrase, contradiction): SimCSE's (sent0, sent1, hard_neg) by construction."""
    subj, plural, subj_para = rng.choice(NLI_SUBJECTS)
    verb, verb_para, verb_contra = rng.choice(NLI_VERBS)
    place, place_para = rng.choice(NLI_PLACES)
    be = "are" if plural else "is"
    sent0 = f"{subj} {be} {verb} {place}."
    sent1 = f"{rng.choice(subj_para)} {be} {rng.choice(verb_para)} {rng.choice(place_para)}."
    hard_neg = f"{subj} {be} {verb_contra} {place}."
    return sent0, sent1, hard_neg
