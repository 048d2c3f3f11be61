"""The closed vocabulary of ShapeGen: shapes, colour words, background, GenEval tags.

Shared by the renderer (`mdd.data.shapes`) and the offline scorer (`mdd.eval.shapes_geneval`),
so both agree on what "red" or "above" means. Colour words are GenEval's ten; RGB values are
chosen far apart in RGB and from the neutral background so a nearest-palette rule is reliable.
"""

SHAPES = ("circle", "square", "triangle")

# GenEval's colour words, in GenEval's order, with the RGB ShapeGen paints them in.
COLORS = {
    "red": (220, 20, 20),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 20),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "purple": (130, 30, 160),
    "pink": (255, 120, 200),
    "brown": (120, 70, 20),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
COLOR_NAMES = tuple(COLORS)

# Neutral mid-grey background; far from black and white alike.
BACKGROUND = (128, 128, 128)

# GenEval's six tags and four relations.
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")

# Counting scenes hold this many objects of one shape.
MIN_COUNT, MAX_COUNT = 2, 4

# The held-out compositional split: these (colour, shape) pairs and (shape, relation, shape)
# triples never appear in a training scene or caption; the `heldout` split is made only of them.
HELDOUT_COLOR_SHAPE = (
    ("red", "triangle"),
    ("blue", "circle"),
    ("green", "square"),
    ("pink", "triangle"),
    ("white", "circle"),
)
HELDOUT_RELATIONS = (
    ("triangle", "above", "circle"),
    ("square", "left of", "triangle"),
)
