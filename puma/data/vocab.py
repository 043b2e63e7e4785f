"""The closed world of MBEIR-mini scenes: the attribute values images and texts are built from.

Shared by the synthetic data generator and the tiny tokenizer's training corpus.
"""

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "brown", "gray", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon"]
SIZES = ["small", "medium", "large"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "center"]
TEXTURES = ["plain", "striped", "dotted", "checkered"]
ENTITIES = [
    "Aldermoor Castle", "Brightwater Bridge", "Cinder Peak", "Dunmore Abbey", "Elmsworth Tower",
    "Falconridge Stadium", "Glenhaven Lighthouse", "Harrowgate Museum", "Ironvale Station", "Juniper Hall",
    "Kestrel Harbor", "Larkspur Gardens", "Marrowby Mill", "Northcliff Observatory", "Oakhurst Library",
    "Pinecrest Chapel",
]
