"""The shapes evaluator (infinity_jax/eval/shapes.py) on images it did not render (issue 32, item 6).

The other evaluator tests score renders of the project's own renderer (infinity_jax/data/shapes.py), so a
bug shared by renderer and evaluator, or an evaluator that knows only the renderer's exact pixels, passes
them. Here an independent renderer (PIL at 8x resolution, box-downsampled: anti-aliased, sub-pixel
placement) draws what a generative model makes of the same prompts: rounded corners, small rotations,
Gaussian blur, a JPEG round trip, colours a little off the palette, noise. Only the palette values and
the caption grammar are shared with the project (both are the dataset's definition, written out again
here). Each image comes with a caption that is true of it and one that is false (wrong shape, count,
colour, relation or colour binding).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from infinity_jax.eval import shapes as ev

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 230),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
BACKGROUND = (32, 32, 32)
SHAPES = ("circle", "square", "triangle")
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
SUPERSAMPLE = 8
# Perturbations: what a sample of a generative model looks like next to the dataset's flat, aligned shapes.
PERTURBATIONS = {
    "antialiased": {},
    "rounded": {"rounded": True},  # corner radius 0.2-0.4 x the inradius (squares, triangles)
    "rotated": {"rotated": True},  # 3-12 degrees either way (squares, triangles)
    "blur1": {"blur": 1.0},  # Gaussian, std in px
    "blur2": {"blur": 2.0},  # 64 px only: the same blur as 1 px at 32 (`SIZES`)
    "jpeg75": {"jpeg": 75},  # 4:2:0 chroma, as PIL saves by default
    "colour_shift": {"shift": True},  # each channel 10-20 off the palette, either way
    "noise": {"noise": 6.0},  # Gaussian, 0..255 scale
    "all": {"rounded": True, "rotated": True, "blur": 1.0, "jpeg": 75, "shift": True, "noise": 4.0},
}
SIDES = {64: (12.0, 24.0), 32: (8.0, 13.0)}  # object sides in px: every shape still plain to see at its size
SIZES = {name: (64,) if name == "blur2" else (64, 32) for name in PERTURBATIONS}  # 2 px at 32 px: blobs of 8


# ------------------------------------------------------------------------------------------- renderer


def _corners(shape, cx, cy, side, angle):
    """Vertices of a square, or of the dataset's up-pointing triangle (base = height = side), turned by angle."""
    h = side / 2
    pts = [(-h, -h), (h, -h), (h, h), (-h, h)] if shape == "square" else [(0, -h), (h, h), (-h, h)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _inset(pts, r):
    """The convex polygon `pts` with each edge moved inwards by r (meeting points of the moved edges)."""
    p = np.asarray(pts, float)
    centre, lines = p.mean(0), []
    for a, b in zip(p, np.roll(p, -1, 0)):
        d = (b - a) / np.linalg.norm(b - a)
        normal = np.array([-d[1], d[0]])
        normal = normal if np.dot(centre - a, normal) > 0 else -normal
        lines.append((a + r * normal, d))
    out = []
    for (p1, d1), (p2, d2) in zip(lines[-1:] + lines[:-1], lines):
        t = np.linalg.solve(np.stack([d1, -d2], 1), p2 - p1)[0]
        out.append(tuple(p1 + t * d1))
    return out


def _draw(draw, o):
    """One object at SUPERSAMPLE x scale. A rounded polygon is drawn as the shrunk polygon grown by a disc of
    the corner radius (its Minkowski sum): straight edges where they were, every corner an arc of that radius."""
    k = SUPERSAMPLE
    cx, cy, side, rgb = o["cx"] * k, o["cy"] * k, o["side"] * k, tuple(o["rgb"])
    if o["shape"] == "circle":
        r = side / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        return
    pts = _corners(o["shape"], cx, cy, side, o["angle"])
    r = o["rounding"] * side
    if r <= 0:
        draw.polygon(pts, fill=rgb)
        return
    core = _inset(pts, r)
    draw.polygon(core, fill=rgb)
    for (x, y), (x2, y2) in zip(core, core[1:] + core[:1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)
        draw.line([(x, y), (x2, y2)], fill=rgb, width=int(round(2 * r)))


def render(objects, size, perturb, rng):
    """(size, size, 3) uint8: the objects drawn anti-aliased, then blurred, JPEG round-tripped, noised."""
    im = Image.new("RGB", (size * SUPERSAMPLE,) * 2, BACKGROUND)
    draw = ImageDraw.Draw(im)
    for o in objects:
        _draw(draw, o)
    im = im.resize((size, size), Image.BOX)  # the mean over each pixel's area: exact anti-aliasing
    if perturb.get("blur"):
        im = im.filter(ImageFilter.GaussianBlur(perturb["blur"]))
    if perturb.get("jpeg"):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=perturb["jpeg"])
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    a = np.asarray(im, np.float32)
    if perturb.get("noise"):
        a = a + rng.normal(0.0, perturb["noise"], a.shape)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _object(shape, color, side, perturb, rng):
    rgb = np.asarray(PALETTE[color], float)
    if perturb.get("shift"):
        rgb = np.clip(rgb + rng.choice([-1, 1], 3) * rng.uniform(10, 20, 3), 0, 255)
    inradius = 0.5 if shape == "square" else 1 / (1 + math.sqrt(5))  # x side; the triangle's: area / half-perimeter
    polygon = shape != "circle"
    return {
        "shape": shape,
        "color": color,
        "rgb": [int(round(v)) for v in rgb],
        "side": side,
        "angle": math.radians(rng.choice([-1, 1]) * rng.uniform(3, 12)) if polygon and perturb.get("rotated") else 0.0,
        "rounding": rng.uniform(0.2, 0.4) * inradius if polygon and perturb.get("rounded") else 0.0,
    }


def _reach(o):
    """Half the side of the object's axis-aligned box (a turned polygon reaches further)."""
    return o["side"] / 2 * (abs(math.cos(o["angle"])) + abs(math.sin(o["angle"])))


def _box(o):
    return o["cx"] - _reach(o), o["cy"] - _reach(o), o["cx"] + _reach(o), o["cy"] + _reach(o)


def _place(objects, size, gap, rng, relation=None):
    """Random sub-pixel centres, one object after the other: boxes `gap` px apart and off the border; for
    `relation`, objects[0] clearly so of objects[1] (offset along the axis past the larger box, across at most
    a third of the offset)."""
    apart = lambda a, b: a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]  # noqa
    for _ in range(100):
        placed = []
        for o in reversed(objects):  # the reference first, for `relation`
            for _ in range(200):
                m = _reach(o) + 1
                o["cx"], o["cy"] = rng.uniform(m, size - m, 2)
                if relation is not None and placed:
                    (ux, uy), b = RELATIONS[relation], objects[1]
                    along = 2 * max(_reach(o), _reach(b)) + gap + rng.uniform(0, size / 4)
                    across = rng.uniform(-along / 3, along / 3)
                    o["cx"], o["cy"] = b["cx"] + along * ux + across * uy, b["cy"] + along * uy + across * ux
                x0, y0, x1, y1 = _box(o)
                if min(x0, y0) >= 1 and max(x1, y1) <= size - 1 and all(apart(_box(o), _box(p)) for p in placed):
                    placed.append(o)
                    break
        if len(placed) == len(objects):
            return objects
    raise AssertionError(f"could not place {len(objects)} objects in {size} px")


def scene(category, size, perturb, rng):
    """(image, a caption true of it, one false of it) for one example of `category`: the false one names a shape
    that is not there, one object more or less, another colour, the opposite relation or swapped colours."""
    lo, hi = SIDES[size]
    side = lambda n: rng.uniform(lo, lo + (1.0, 0.6, 0.4)[min(n, 3) - 1] * (hi - lo))  # noqa: E731 (n objects)
    shapes = [str(s) for s in rng.permutation(SHAPES)]
    colors = [str(c) for c in rng.permutation(list(PALETTE))]
    relation = None
    if category in ("single_object", "colors"):
        objects = [_object(shapes[0], colors[0], side(1), perturb, rng)]
    elif category == "counting":
        n = int(rng.integers(2, 5))
        objects = [_object(shapes[0], colors[i % 3], side(n), perturb, rng) for i in range(n)]
    else:
        relation = str(rng.choice(list(RELATIONS))) if category == "position" else None
        objects = [_object(shapes[i], colors[i], side(2), perturb, rng) for i in range(2)]
    _place(objects, size, 2 + 2 * perturb.get("blur", 0.0), rng, relation)  # blur must not merge them
    image = render(objects, size, perturb, rng)
    (s0, s1, other), (c0, c1) = shapes, colors[:2]
    if category == "single_object":
        return image, f"a photo of a {s0}", f"a photo of a {s1}"
    if category == "two_object":
        return image, f"a photo of a {s0} and a {s1}", f"a photo of a {s0} and a {other}"
    if category == "counting":
        wrong = n + 1 if n < 4 else n - 1
        return image, f"a photo of {NUMBERS[n]} {s0}s", f"a photo of {NUMBERS[wrong]} {s0}s"
    if category == "colors":
        return image, f"a photo of a {c0} {s0}", f"a photo of a {c1} {s0}"
    if category == "position":
        flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
        return image, f"a photo of a {s0} {relation} a {s1}", f"a photo of a {s0} {flip} a {s1}"
    return image, f"a photo of a {c0} {s0} and a {c1} {s1}", f"a photo of a {c1} {s0} and a {c0} {s1}"


def batch(perturbation, size, per_category, seed=0):
    """Scenes of every category under one perturbation: [(category, image, true caption, false caption)]."""
    rng = np.random.default_rng([seed, size, list(PERTURBATIONS).index(perturbation)])
    return [(c, *scene(c, size, PERTURBATIONS[perturbation], rng)) for c in CATEGORIES for _ in range(per_category)]


def verdicts(examples):
    """[(category, true caption judged correct, false caption judged correct)]; one detection per image."""
    out = []
    for category, image, yes, no in examples:
        objects = ev.detect(image)
        out.append((category, ev.judge(objects, ev.parse_caption(yes))[0], ev.judge(objects, ev.parse_caption(no))[0]))
    return out


PER_CATEGORY = 5  # images per category and condition: 30 a condition, 85 a category over all conditions
CONDITIONS = [(name, size) for size in (64, 32) for name in PERTURBATIONS if size in SIZES[name]]


@pytest.fixture(scope="module")
def judged():
    return {(name, size): verdicts(batch(name, size, PER_CATEGORY)) for name, size in CONDITIONS}


def test_the_renderer_shares_only_the_dataset_definition():
    from infinity_jax.data import shapes as ds

    assert PALETTE == ds.PALETTE and BACKGROUND == ds.BACKGROUND and SHAPES == ds.SHAPES
    assert CATEGORIES == ds.CATEGORIES and tuple(RELATIONS) == ds.RELATIONS and NUMBERS == ds.NUMBER_WORDS
    colours = {tuple(int(v) for v in c) for _, image, *_ in batch("antialiased", 64, 1) for c in image.reshape(-1, 3)}
    assert len(colours - {BACKGROUND, *PALETTE.values()}) > 50  # anti-aliased: blends the dataset never draws


@pytest.mark.parametrize("name,size", CONDITIONS, ids=[f"{n}-{s}px" for n, s in CONDITIONS])
def test_true_captions_score_high_and_false_ones_low(judged, name, size):
    got = judged[(name, size)]
    true, false = np.mean([t for _, t, _ in got]), np.mean([f for _, _, f in got])
    # Measured over 20 seeds of 30 images (mean, worst): 1.0 on most; jpeg75 at 32 px 0.96, 0.90. Everything at
    # once at 32 px is harder: 0.85, 0.70 (8-10 px triangles rounded, blurred and JPEG'd lose their apex).
    assert true >= (0.7 if (name, size) == ("all", 32) else 0.9), (name, size, true)
    assert false <= 0.1, (name, size, false)


def test_every_category_scores_high_over_the_perturbations(judged):
    for category in CATEGORIES:
        got = [(t, f) for rows in judged.values() for c, t, f in rows if c == category]
        true, false = np.mean([t for t, _ in got]), np.mean([f for _, f in got])
        assert true >= 0.9 and false <= 0.05, (category, true, false)  # measured worst of 20 seeds: 0.95, 0.024


@pytest.mark.parametrize("size", [64, 32])
def test_a_clearly_square_green_object_is_a_square(size):
    """The reported case: a plainly square green object scored 0. Turned (up to 20 degrees), rounded, blurred,
    JPEG'd, off-colour or all at once, alone in the picture, it is one green square and nothing else."""
    rng = np.random.default_rng(size)
    side = 20.3 if size == 64 else 10.3
    variants = [{"turn": t} for t in (0, 5, -10, 15, -20)] + [
        {"rounded": True},
        {"blur": 1.0},
        {"jpeg": 75},
        {"shift": True, "noise": 6.0},
        {"turn": 10, "rounded": True, "blur": 1.0, "jpeg": 75, "shift": True, "noise": 4.0},
    ]
    for v in variants:
        o = _object("square", "green", side, v, rng)
        o["angle"] = math.radians(v.get("turn", 0))
        o["cx"], o["cy"] = rng.uniform(size / 2 - 2, size / 2 + 2, 2)  # anywhere between the pixel grid's lines
        image = render([o], size, v, rng)
        objects = ev.detect(image)
        assert [(d["shape"], d["color"]) for d in objects] == [("square", "green")], (v, objects)
        assert ev.score(image, "a photo of a green square")["score"] == 1.0
        assert ev.score(image, "a photo of a green circle")["score"] == 0.0
        assert ev.score(image, "a photo of a blue square")["score"] == 0.0


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_fill_is_measured_on_the_drawn_outline_not_the_pixel_grid(shape):
    """An anti-aliased square fills its rectangle (~1) and a circle pi/4 wherever the edges fall between pixel
    centres and, for the square, however far it is turned up to 20 degrees; the box of whole pixels would be
    up to a pixel too large (an 8-px square then fills 0.79) and, turned, larger still."""
    rng = np.random.default_rng(0)
    fills = []
    for offset in np.linspace(0.0, 0.9, 7):
        for turn in (0, 7, -14, 20) if shape == "square" else (0,):
            o = _object(shape, "white", 8.4, {}, rng)
            o.update(cx=15.0 + offset, cy=16.0 + offset / 2, angle=math.radians(turn))
            (obj,) = ev.detect(render([o], 32, {}, rng))
            fills.append(obj["features"]["fill"])
    lo, hi = (0.95, 1.05) if shape == "square" else (0.74, 0.84)
    assert lo <= min(fills) and max(fills) <= hi, fills


if __name__ == "__main__":  # the table of the report: python -m tests.test_eval_shapes_foreign [per_category [seed]]
    import sys

    per, seed = (int(a) for a in (sys.argv[1:] + ["20", "1"])[:2])
    for name, size in CONDITIONS:
        got = verdicts(batch(name, size, per, seed))
        row = {c: tuple(np.mean([v[1:] for v in got if v[0] == c], 0)) for c in CATEGORIES}
        print(
            f"{name}@{size}".ljust(16),
            "true %.3f false %.3f |" % tuple(np.mean(list(row.values()), 0)),
            " ".join(f"{c} {t:.2f}/{f:.2f}" for c, (t, f) in row.items()),
        )
