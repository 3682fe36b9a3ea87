"""Procedural text-to-image data: simple coloured shapes with GenEval-style captions.

`render(index, seed, size)` draws example `index` of the dataset named by `seed`; the same
(seed, index, size) always gives the same pixels, caption and spec. Images are small (64x64 by
default) and hold 1-4 objects on a dark background, so a tiny model can learn the data and an
evaluator can score generated images against the spec.

Caption grammar (one category per example, cycling through `CATEGORIES` by index):

    single_object  "a photo of a <shape>"
    two_object     "a photo of a <shape> and a <shape2>"                      shape != shape2
    counting       "a photo of <two|three|four> <shape>s"                      all the same shape
    colors         "a photo of a <color> <shape>"
    position       "a photo of a <shape> <left of|right of|above|below> a <shape2>"   shape != shape2
    color_attr     "a photo of a <color> <shape> and a <color2> <shape2>"     shape != shape2, color != color2

    <shape> := circle | square | triangle        <color> := red | green | blue | yellow | purple | white

The image holds exactly the objects the caption names (nothing else); an object whose colour
the caption does not name gets a random palette colour. Objects never overlap (a gap of at least
one pixel). For `position`, the first-named object (the subject) is offset from the second along
the named axis by at least the larger object's size, and by less than half that offset across it.

Layouts (where the objects go; sizes are random in both):
    random  anywhere, uniformly (the default)
    slots   fixed places by object count, each jittered by up to 1/16 of the image side: one object
            in the centre; two side by side, the first-named on the left (for `position`: the subject
            on the named side, above/below stacked); three in a triangle; four in the quadrants.
            As in photos, where things go follows from the caption, so a model need not draw the
            layout at random (measured on the demo: docs/demo_experiments.md). A slot has room for a
            larger object (`OBJECT_SIZES`: sides up to half the image for one object), so a shape
            spans more latent cells.

Spec (JSON-serialisable dict, one per image):
    {"category": str, "caption": str, "size": [H, W], "background": [r, g, b],
     "objects": [{"shape": str, "color": str, "rgb": [r, g, b], "box": [x0, y0, x1, y1]}, ...],
     "relation": "left of" | ... (position only; objects[0] is the subject, objects[1] the reference),
     "count": n (counting only)}
Boxes are pixel coordinates, x to the right and y down, x1/y1 exclusive. The named objects come
first, in caption order.
"""

from __future__ import annotations

import copy
import json

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 230),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
BACKGROUND = (32, 32, 32)
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
LAYOUTS = ("random", "slots")
# object sides as fractions of the image side [lo, hi), by layout and object count (1, 2, 3 or more);
# a slot has room for a larger object than a place drawn anywhere
OBJECT_SIZES = {
    "random": {1: (0.2, 0.34), 2: (0.2, 0.34), 3: (0.16, 0.26)},
    "slots": {1: (0.3, 0.5), 2: (0.25, 0.41), 3: (0.2, 0.34)},
}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
_MIRROR = {"left of": "right of", "right of": "left of", "above": "above", "below": "below"}
# the demo recipe (infinity-jax demo, configs/shapes.py): its held-out prompts come from a dataset seed
# never trained on (training data uses seed 0), and are sampled at CFG SAMPLE_CFG and temperature
# SAMPLE_TAU (strings: a number or one per scale), chosen on another unseen seed (4242), never on them
HELD_OUT_SEED = 9176
SAMPLE_CFG, SAMPLE_TAU = "1.5", "0.2"


def caption(spec: dict) -> str:
    """The caption of a spec, by the grammar in the module docstring."""
    cat, objs = spec["category"], spec["objects"]
    o0 = objs[0]
    if cat == "single_object":
        return f"a photo of a {o0['shape']}"
    if cat == "two_object":
        return f"a photo of a {o0['shape']} and a {objs[1]['shape']}"
    if cat == "counting":
        return f"a photo of {NUMBER_WORDS[spec['count']]} {o0['shape']}s"
    if cat == "colors":
        return f"a photo of a {o0['color']} {o0['shape']}"
    if cat == "position":
        return f"a photo of a {o0['shape']} {spec['relation']} a {objs[1]['shape']}"
    if cat == "color_attr":
        return f"a photo of a {o0['color']} {o0['shape']} and a {objs[1]['color']} {objs[1]['shape']}"
    raise ValueError(f"category {cat!r}: expected one of {CATEGORIES}")


def _boxes_apart(a, b, gap: int = 1) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _relation_holds(a, b, relation: str) -> bool:
    """Subject box a stands `relation` the reference box b, clearly (see module docstring)."""
    (ax, ay), (bx, by) = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    along = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[relation]
    across = abs(ay - by) if relation in ("left of", "right of") else abs(ax - bx)
    size = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1])
    return along >= size and across < along / 2


def _slot_centres(n: int, relation: str | None) -> list[tuple[float, float]]:
    """Slot centres (x, y) as fractions of (W, H), in caption order (the `slots` layout)."""
    if n == 1:
        return [(0.5, 0.5)]
    if n == 2:
        first, second = {
            "right of": ((0.75, 0.5), (0.25, 0.5)),
            "above": ((0.5, 0.25), (0.5, 0.75)),
            "below": ((0.5, 0.75), (0.5, 0.25)),
        }.get(relation, ((0.25, 0.5), (0.75, 0.5)))
        return [first, second]
    if n == 3:
        return [(0.25, 0.25), (0.75, 0.25), (0.5, 0.75)]
    if n == 4:
        return [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
    raise ValueError(f"slots layout for {n} objects: expected 1 to 4")


def _place(
    rng: np.random.Generator, n: int, H: int, W: int, relation: str | None, layout: str = "random", tries: int = 2000
):
    """n non-overlapping square boxes [x0, y0, x1, y1) inside (H, W) by `layout`; raises if none fit."""
    side = min(H, W)
    lo_frac, hi_frac = OBJECT_SIZES[layout][min(n, 3)]
    lo = max(4, int(side * lo_frac))
    hi = max(lo + 1, int(side * hi_frac))
    if layout == "slots":
        centres, jitter = _slot_centres(n, relation), max(1, side // 16)

        def corner(i: int, s: int) -> tuple[int, int]:
            (fx, fy), j = centres[i], (-jitter, jitter + 1)
            x0 = int(round(fx * W - s / 2)) + int(rng.integers(*j))
            y0 = int(round(fy * H - s / 2)) + int(rng.integers(*j))
            return min(max(x0, 1), W - s - 1), min(max(y0, 1), H - s - 1)
    else:

        def corner(i: int, s: int) -> tuple[int, int]:
            return int(rng.integers(1, W - s)), int(rng.integers(1, H - s))

    for _ in range(tries):
        boxes = []
        for i in range(n):
            s = int(rng.integers(lo, hi))
            x0, y0 = corner(i, s)
            box = [x0, y0, x0 + s, y0 + s]
            if not all(_boxes_apart(box, b) for b in boxes):
                break
            boxes.append(box)
        if len(boxes) == n and (relation is None or _relation_holds(boxes[0], boxes[1], relation)):
            return boxes
    raise ValueError(
        f"could not place {n} objects ({layout} layout) in a {H}x{W} image; expected an image of at least 32x32"
    )


def _draw(img: ImageDraw.ImageDraw, shape: str, box, rgb) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        img.ellipse([x0, y0, x1 - 1, y1 - 1], fill=rgb)
    elif shape == "square":
        img.rectangle([x0, y0, x1 - 1, y1 - 1], fill=rgb)
    elif shape == "triangle":  # pointing up, base on the box's bottom edge
        img.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=rgb)
    else:
        raise ValueError(f"shape {shape!r}: expected one of {SHAPES}")


def check_categories(categories) -> tuple[str, ...]:
    """`categories` as a tuple, refused unless a non-empty subset of CATEGORIES without repeats."""
    categories = tuple(categories)
    bad = [c for c in categories if c not in CATEGORIES]
    if bad or not categories or len(set(categories)) != len(categories):
        raise ValueError(f"categories={categories}: expected a non-empty subset of {CATEGORIES}, each once")
    return categories


def make_spec(
    index: int,
    seed: int = 0,
    size: int | tuple[int, int] = 64,
    categories: tuple[str, ...] = CATEGORIES,
    layout: str = "random",
) -> dict:
    """The spec (objects, colours, boxes, caption) of example `index`; deterministic in its arguments."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    if min(H, W) < 32:
        raise ValueError(f"size={size}: expected images of at least 32x32 pixels")
    categories = check_categories(categories)
    rng = np.random.default_rng([int(seed), int(index)])
    cat = categories[index % len(categories)]
    colors = list(PALETTE)
    pick = lambda seq, k=1: [seq[i] for i in rng.choice(len(seq), size=k, replace=False)]  # noqa: E731
    spec: dict = {"category": cat}
    if cat in ("single_object", "colors"):
        shapes = pick(SHAPES)
    elif cat == "counting":
        spec["count"] = int(rng.integers(2, 5))
        shapes = pick(SHAPES) * spec["count"]
    else:  # two distinct shapes
        shapes = pick(SHAPES, 2)
    obj_colors = pick(colors, 2) if cat == "color_attr" else [colors[int(rng.integers(len(colors)))] for _ in shapes]
    if cat == "position":
        spec["relation"] = RELATIONS[int(rng.integers(len(RELATIONS)))]
    boxes = _place(rng, len(shapes), H, W, spec.get("relation"), layout)
    spec["objects"] = [
        {"shape": s, "color": c, "rgb": list(PALETTE[c]), "box": b} for s, c, b in zip(shapes, obj_colors, boxes)
    ]
    spec.update(size=[H, W], background=list(BACKGROUND))
    spec["caption"] = caption(spec)
    return spec


def draw(spec: dict) -> np.ndarray:
    """Pixels of a spec: (H, W, 3) uint8."""
    H, W = spec["size"]
    im = Image.new("RGB", (W, H), tuple(spec["background"]))
    d = ImageDraw.Draw(im)
    for o in spec["objects"]:
        _draw(d, o["shape"], o["box"], tuple(o["rgb"]))
    return np.asarray(im)


def render(
    index: int,
    seed: int = 0,
    size: int | tuple[int, int] = 64,
    categories: tuple[str, ...] = CATEGORIES,
    layout: str = "random",
) -> tuple[np.ndarray, str, dict]:
    """Example `index`: (image (H, W, 3) uint8, caption, spec)."""
    spec = make_spec(index, seed, size, categories, layout)
    return draw(spec), spec["caption"], spec


def held_out_prompts(
    n: int, size: int, layout: str = "random", categories: tuple[str, ...] | None = None, seed: int = HELD_OUT_SEED
) -> tuple[list[str], list[np.ndarray]]:
    """n captions and ground-truth images (H, W, 3) uint8 from a dataset seed the models never saw (another
    unseen seed, such as 4242, checks a run beyond the demo's own held-out prompts: README, "The demo")."""
    examples = [render(i, seed, size, categories or CATEGORIES, layout) for i in range(n)]
    return [cap for _, cap, _ in examples], [np.asarray(image) for image, _, _ in examples]


def flip_spec(spec: dict) -> dict:
    """The spec of the horizontally mirrored image: boxes mirrored, left/right swapped in relation
    and caption (so a random flip keeps position captions true)."""
    out = copy.deepcopy(spec)
    W = spec["size"][1]
    for o in out["objects"]:
        x0, y0, x1, y1 = o["box"]
        o["box"] = [W - x1, y0, W - x0, y1]
    if "relation" in out:
        out["relation"] = _MIRROR[out["relation"]]
    out["caption"] = caption(out)
    return out


def dumps(spec: dict) -> str:
    """Compact, key-sorted JSON of a spec (what the datasets store per example)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] (the model's convention, any leading shape) -> uint8 0..255, rounded: what the shapes
    evaluator scores (sample.to_uint8 truncates instead, as the official sampler writes its PNGs)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
