"""GenEval-style prompt adherence for the synthetic shapes dataset (infinity_jax/data/shapes.py).

An image is scored from its caption alone: `parse_caption` turns the caption back into what it
asks for, `detect` finds the coloured shapes in the pixels, and `score` applies the GenEval rule of
the caption's category (1.0 or 0.0 per image). `evaluate` averages per category and, as GenEval
does, reports `overall` as the mean of the per-category accuracies.

Detection (no learned model; numpy only):
  1. Colour. Every pixel is explained as a blend of the background and one palette colour: for
     each palette colour c the pixel is projected on the segment background -> c, giving a blend
     weight alpha in [0, 1] and a residual (distance off the segment). The pixel takes the colour
     with the smallest residual and is foreground when alpha >= 0.5. Blurred edges (a tokenizer's
     reconstruction, anti-aliasing) lie on that segment, so they are split at half-way instead of
     turning into rings of some other palette colour, as plain nearest-colour would do. A pixel far
     from the background (> `other_dist`) that fits no palette segment (residual > `max_residual`)
     is foreground of colour None ("other"): such a shape still counts as a shape, never as a
     colour match.
  2. Objects. 4-connected components per colour; components smaller than `min_area_frac` of the
     image or thinner than `min_side_frac` of its short side are dropped (specks, seams left in
     the one-pixel gaps between blurred objects). The bounding box drops ragged outermost rows and
     columns (a pixel or two that noise tipped over half-way next to a full edge).
  3. Shape. From the share of the component's pixels in the bottom half of its box (the dataset's
     triangles point up: ~3/4; circles and squares ~1/2) and the fill ratio of its rectangle (square ~1,
     circle ~pi/4, triangle ~1/2): bottom share >= 0.58 is a triangle, else fill >= 0.89 a square,
     fill >= 0.55 a circle. The bottom share decides triangles because it survives blur on small
     objects (a blurred 6-pixel triangle loses its apex and fills 0.76 of its box, like a circle).
     The fill counts soft coverage (the sum of blend weights in and around the object, which blur
     conserves), so a blurred 5-pixel square, whose corners fall below half, still fills ~1. Coverage is
     measured against the object's own colour (the level its interior reaches), so a colour a little off
     the palette does not read as a partly covered pixel, and it also counts the pixels no object claims
     (a JPEG's paler rim). The rectangle is measured on a sub-pixel outline (each edge placed by the
     coverage summed across it; pixel borders would be up to half a pixel off a side on anti-aliased
     edges) and turned with the object (its sides found from the fourth cumulant of its mass), up to 22.5
     degrees, halfway to a diamond: a model's square need not be upright. A component whose rectangle is
     elongated (aspect > `max_aspect`) or that fills too little is no shape (None): every dataset shape
     sits in a square box.
     tests/test_eval_shapes_foreign.py scores images of an independent renderer (anti-aliased, rounded,
     turned, blurred, JPEG, colours off the palette, noise), not only the dataset's own pixels.

Rules per category (GenEval's, with "most confident detection" read as "largest component"):
  single_object  at least one <shape>
  two_object     at least one of each shape
  counting       exactly n of <shape> (GenEval: include n, exclude n+1); other shapes allowed
  colors         some <shape> has <color>
  position       the largest subject and the largest reference stand in the named relation by
                 GenEval's `relative_position`: box centres, offsets shrunk by 0.1 x the sum of
                 the box sizes, then the unit direction's component along the axis must exceed 0.5
  color_attr     some <shape> has <color> and some <shape2> has <color2>
GenEval checks colour on its most confident detection only; here any detection of the shape will
do (a deliberate, slightly more lenient choice: our "confidence" would only be area).

Samples folder (what `infinity-jax eval shapes --samples DIR` reads, `write_samples` writes):
    DIR/captions.jsonl   one JSON object per line: {"file": "<image path relative to DIR>",
                         "caption": "<the prompt>"}; other keys are ignored (the same file is a
                         valid `image_folder` dataset sidecar, see data/sources.py)
    DIR/<file>           the images, any format PIL reads (PNG by default), RGB or RGBA
Without captions.jsonl, DIR/samples.json (what `infinity-jax sample --out DIR` writes) is read instead:
its "samples" list gives each image's "file" and "prompt".
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
from PIL import Image

from infinity_jax import fileio
from infinity_jax.data import shapes as data

# Shape thresholds. Drawn large: square fill 1, circle pi/4, triangle 1/2; bottom-half share 1/2
# for squares and circles, 3/4 for (up-pointing) triangles. Measured on 600 renders at 32 and 64 px,
# clean and with blur 0.75 px + noise 4: bottom share circles/squares <= 0.51, triangles >= 0.60;
# soft fill of the turned sub-pixel rectangle (1st-99th percentile, seed 7) circles 0.67-0.84, squares
# 0.96-1.0 (blur 1 px at 32 px smears 5-pixel objects past this: a 5-px circle, noiseless, fills 0.87). On
# the anti-aliased, rounded, turned, blurred, JPEG'd renders of 8-24 px of tests/test_eval_shapes_foreign.py
# (1st-99th percentile) squares 0.91-1.0, circles 0.76-0.85.
TRIANGLE_BOTTOM = 0.58
SQUARE_FILL = (1 + math.pi / 4) / 2
MIN_FILL = 0.55
# A square is recognised turned up to halfway to a diamond, no further: the dataset's circles (drawn without
# anti-aliasing) are octagons that look squarest turned by 45 degrees (a 6-px one fills 0.98 of its 45-degree
# rectangle, 0.67 of its upright one).
MAX_TURN = 22.5
_SOFT_PAD, _SOFT_MIN = 2, 0.1  # soft coverage: pixels around the box, ignoring noise-level weights
_WORD_NUMBERS = {w: n for n, w in data.NUMBER_WORDS.items()}
POSITION_THRESHOLD = 0.1  # GenEval's default


# ----------------------------------------------------------------------------------- captions


class CaptionError(ValueError):
    """A caption outside the shapes grammar: `score_samples` skips its image instead of failing."""


def parse_caption(caption: str) -> dict:
    """What a caption asks for, by the dataset's grammar (data/shapes.py).

    Returns a spec-like dict: {"category", "objects": [{"shape"[, "color"]}, ...],
    "relation" (position), "count" (counting; `objects` then holds `count` entries)}.
    Case, surrounding spaces and a final period are ignored. Raises CaptionError (a ValueError) otherwise.
    """
    text = " ".join(str(caption).strip().lower().rstrip(".").split())
    shp = "|".join(data.SHAPES)
    col = "|".join(data.PALETTE)
    rel = "|".join(data.RELATIONS)
    num = "|".join(_WORD_NUMBERS)
    obj = lambda i, color: (f"(?P<c{i}>{col}) " if color else "") + f"(?P<s{i}>{shp})"  # noqa: E731
    grammar = [
        ("single_object", rf"a photo of a {obj(0, False)}"),
        ("two_object", rf"a photo of a {obj(0, False)} and a {obj(1, False)}"),
        ("counting", rf"a photo of (?P<n>{num}) (?P<s0>{shp})s"),
        ("colors", rf"a photo of a {obj(0, True)}"),
        ("position", rf"a photo of a {obj(0, False)} (?P<rel>{rel}) a {obj(1, False)}"),
        ("color_attr", rf"a photo of a {obj(0, True)} and a {obj(1, True)}"),
    ]
    for category, pattern in grammar:
        m = re.fullmatch(pattern, text)
        if m is None:
            continue
        g = m.groupdict()
        objects = [
            {"shape": g[f"s{i}"], **({"color": g[f"c{i}"]} if g.get(f"c{i}") else {})}
            for i in range(2)
            if g.get(f"s{i}")
        ]
        out: dict = {"category": category, "objects": objects}
        if category == "counting":
            out["count"] = _WORD_NUMBERS[g["n"]]
            out["objects"] = [dict(objects[0]) for _ in range(out["count"])]
        if category == "position":
            out["relation"] = g["rel"]
        return out
    raise CaptionError(
        f"caption {caption!r} does not follow the shapes grammar; expected e.g. 'a photo of a circle', "
        f"'a photo of three squares', 'a photo of a red triangle and a blue circle', "
        f"'a photo of a circle left of a square' (shapes {data.SHAPES}, colours {tuple(data.PALETTE)}, "
        f"relations {data.RELATIONS}, counts {tuple(_WORD_NUMBERS)})"
    )


# ---------------------------------------------------------------------------------- detection


def blend(image: np.ndarray, max_residual: float = 60.0, other_dist: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel as background blended with one palette colour (module docstring, step 1).

    image: (H, W, 3) uint8 RGB. Returns (labels (H, W) int: index into `list(data.PALETTE)`,
    -1 background, len(PALETTE) foreground of no palette colour; alpha (H, W, K): blend weight
    of each palette colour in [0, 1]).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image of shape {img.shape}: expected (H, W, 3) RGB")
    if img.dtype != np.uint8:  # a [-1, 1] float image would silently read as all background
        raise ValueError(
            f"image of dtype {img.dtype}: expected uint8 pixels 0..255 "
            "(convert model outputs in [-1, 1] with `data.shapes.to_uint8`)"
        )
    bg = np.asarray(data.BACKGROUND, np.float32)
    cols = np.asarray(list(data.PALETTE.values()), np.float32) - bg  # (K, 3)
    d = img.astype(np.float32) - bg  # (H, W, 3)
    alpha = np.clip(d @ cols.T / (cols * cols).sum(-1), 0.0, 1.0)  # (H, W, K)
    resid = np.linalg.norm(d[..., None, :] - alpha[..., None] * cols, axis=-1)  # (H, W, K)
    k = resid.argmin(-1)
    a = np.take_along_axis(alpha, k[..., None], -1)[..., 0]
    r = np.take_along_axis(resid, k[..., None], -1)[..., 0]
    labels = np.where((a >= 0.5) & (r <= max_residual), k, -1)
    other = (r > max_residual) & (np.linalg.norm(d, axis=-1) > other_dist)
    return np.where(other, len(cols), labels), alpha


def classify_pixels(image: np.ndarray, max_residual: float = 60.0, other_dist: float = 90.0) -> np.ndarray:
    """Colour label per pixel: (H, W) int, as the labels of `blend`."""
    return blend(image, max_residual, other_dist)[0]


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean (H, W) mask: (labels (H, W) int, 0 = off, 1..n; n).

    Min-label propagation with pointer jumping: every pixel starts as its own flat index, takes the
    smallest label among itself and its on-neighbours, then follows label -> label's label; a few
    dozen vectorised passes at most for the blob-like components here.
    """
    mask = np.asarray(mask, bool)
    H, W = mask.shape
    big = H * W
    lab = np.where(mask, np.arange(big).reshape(H, W), big)
    while True:
        new = lab.copy()
        np.minimum(new[1:], lab[:-1], out=new[1:])
        np.minimum(new[:-1], lab[1:], out=new[:-1])
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        new = np.where(mask, new, big)
        flat = np.append(new.ravel(), big)
        new = np.where(mask, flat[flat[new]], big)  # jump: adopt the label's own label
        if np.array_equal(new, lab):
            break
        lab = new
    roots, out = np.unique(lab, return_inverse=True)
    out = out.reshape(H, W)
    if roots[-1] == big:  # background is the largest value
        n = len(roots) - 1
        out = np.where(mask, out + 1, 0)
    else:
        n = len(roots)
        out = out + 1
    return out, n


def classify_shape(
    component: np.ndarray, weight: np.ndarray | None = None, max_aspect: float = 1.6, outline: np.ndarray | None = None
) -> tuple[str | None, dict]:
    """Shape of one object: (name or None, features).

    component: (h, w) bool, the object's pixels cropped to their bounding box. weight: optional
    soft coverage (blend weights in and around the box, any shape; see `detect`); its sum stands
    for the area in the fill ratio, which keeps a blurred square (corners below half) at fill ~1.
    outline: optional (N, 2) sub-pixel points (y, x) of the object's outline, in the coordinates of
    `weight` (`_outline`); the fill and the aspect then refer to the rectangle around them turned as the
    object (`_orientation` of `weight`, upright without it), not to the box, so a turned square still
    fills its rectangle.
    """
    h, w = component.shape
    area = float(component.sum())
    rect, aspect = (
        (float(h * w), max(h, w) / min(h, w))
        if outline is None
        else _rect(outline, 0.0 if weight is None else _orientation(weight))
    )
    fill = (area if weight is None else float(weight.sum())) / rect
    bottom = component[(h + 1) // 2 :].sum() + (0.5 * component[h // 2].sum() if h % 2 else 0.0)
    bottom_frac = float(bottom) / area  # share of pixels below the box's middle row
    feats = {"fill": round(fill, 4), "bottom": round(bottom_frac, 4), "aspect": round(aspect, 4)}
    if aspect > max_aspect:
        return None, feats
    if bottom_frac >= TRIANGLE_BOTTOM:
        return "triangle", feats
    if fill < MIN_FILL:  # hollow or pointed blob that is not an up-pointing triangle
        return None, feats
    return ("square" if fill >= SQUARE_FILL else "circle"), feats


def _outline(inside: np.ndarray, cover: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """(N, 2) points (y, x) of an object's outline, to a fraction of a pixel: one on each step from a pixel p
    `inside` to a 4-neighbour q outside it, where the coverage along that line adds up to the edge. Coverage is
    the share of a pixel's area the object covers, so along a row (or column) it sums to the length the object
    covers there: the edge lies (a + b - 1/2) px beyond p's centre, a and b the coverage of p and q, plus the
    coverage of the next pixel out and minus what the pixel in before p lacks. That is exact for a straight
    edge at any angle and any sub-pixel offset, sharp or blurred (as far as the blur fits in those four
    pixels); the borders of the pixels over half covered would be up to half a pixel off a side (an 8-px
    square's box up to a pixel too wide and too tall: fill 0.79). Binary pixels give the pixel borders.
    inside: (h, w) bool; cover: (h, w) float; region: where coverage may count outside (default: anywhere);
    outside the window counts as coverage 0."""
    region = np.ones_like(inside) if region is None else region
    ins = np.pad(inside, 2)
    cov = np.pad(np.where(inside | region, np.asarray(cover, np.float64), 0.0), 2)
    points = []
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        at = lambda k: np.roll(cov, (-k * dy, -k * dx), (0, 1))  # noqa: E731 (coverage k steps out; pad wraps)
        ys, xs = np.nonzero(ins & ~np.roll(ins, (-dy, -dx), (0, 1)))
        back = np.roll(ins, (dy, dx), (0, 1))[ys, xs]  # the pixel in before p belongs to the object
        t = at(0)[ys, xs] + at(1)[ys, xs] + at(2)[ys, xs] - np.where(back, 1.0 - at(-1)[ys, xs], 0.0) - 0.5
        t = np.clip(t, -0.5, 1.5)
        points.append(np.stack([ys + t * dy, xs + t * dx], 1))
    return np.concatenate(points) - 2.0


def _orientation(weight: np.ndarray, max_turn: float = MAX_TURN) -> float:
    """How far (degrees) an object is turned from upright, taken as the direction along which its mass is
    spread most evenly: where the fourth cumulant of the mass projected on it is lowest (a square's projection
    on its own side is flat, on its diagonal peaked). Cumulants above the second are unchanged by a Gaussian
    blur and every pixel counts: measured on 8-px anti-aliased squares, off by 0.3 degrees on average, 1.2
    with blur, JPEG and noise on top. The smallest rectangle over all turns would pick out noise instead: a
    5-px circle blurred by 1 px fills 0.92 of its smallest, like a square (0.87 upright). 0 beyond `max_turn`."""
    m = float(weight.sum())
    if m <= 0:
        return 0.0
    ys, xs = np.mgrid[: weight.shape[0], : weight.shape[1]]
    dy, dx = ys - (weight * ys).sum() / m, xs - (weight * xs).sum() / m
    th = np.arange(8) * (math.pi / 8)
    u = dx[..., None] * np.cos(th) + dy[..., None] * np.sin(th)  # (h, w, 8) projections
    w = weight[..., None] / m
    k4 = (w * u**4).sum((0, 1)) - 3 * (w * u**2).sum((0, 1)) ** 2
    turn = math.degrees((math.pi - np.angle((k4 * np.exp(-4j * th)).sum())) / 4)  # k4 ~ a - b cos 4(th - turn)
    turn = (turn + 45) % 90 - 45
    return turn if abs(turn) <= max_turn else 0.0


def _rect(points: np.ndarray, turn: float = 0.0) -> tuple[float, float]:
    """(area, long side / short side) of the rectangle around `points` ((N, 2), (y, x)) turned by `turn` degrees."""
    c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
    e1 = float(np.ptp(points[:, 1] * c + points[:, 0] * s))
    e2 = float(np.ptp(points[:, 0] * c - points[:, 1] * s))
    lo, hi = max(min(e1, e2), 1e-6), max(e1, e2)
    return max(e1 * e2, 1e-6), hi / lo


def _trimmed_box(mask: np.ndarray, x0: int, y0: int, x1: int, y1: int, steps: int = 2, ratio: float = 0.25):
    """Bounding box without ragged edges: an outermost row or column holding under `ratio` of the
    pixels of the next one in (noise that tipped a pixel or two of a blurred edge over half-way)
    is cut, up to `steps` times per side. Real outlines (a circle's top, a triangle's apex) taper
    more gently than that."""
    m = mask[y0:y1, x0:x1]
    rows, cols = m.sum(1), m.sum(0)
    t, b, l, r = 0, len(rows), 0, len(cols)
    for _ in range(steps):
        t += int(b - t > 2 and rows[t] < ratio * rows[t + 1])
        b -= int(b - t > 2 and rows[b - 1] < ratio * rows[b - 2])
        l += int(r - l > 2 and cols[l] < ratio * cols[l + 1])
        r -= int(r - l > 2 and cols[r - 1] < ratio * cols[r - 2])
    return int(x0 + l), int(y0 + t), int(x0 + r), int(y0 + b)


def _projection(image: np.ndarray, k: int) -> np.ndarray:
    """Blend weight of palette colour k per pixel (as in `blend`, not clipped at 1): (h, w) float."""
    bg = np.asarray(data.BACKGROUND, np.float32)
    c = np.asarray(list(data.PALETTE.values())[k], np.float32) - bg
    return np.maximum((np.asarray(image, np.float32) - bg) @ c / float(c @ c), 0.0)


def _level(inside: np.ndarray, cover: np.ndarray) -> float:
    """The blend weight an object's interior reaches, i.e. its own colour's full coverage: the upper quartile
    of `cover` over the pixels whose four neighbours are in the object too (blur dims a small object's rim,
    not its centre; noise moves single pixels), over all its pixels when none is. At least 1/2, where the
    object's pixels start."""
    core = inside.copy()
    core[1:] &= inside[:-1]
    core[:-1] &= inside[1:]
    core[:, 1:] &= inside[:, :-1]
    core[:, :-1] &= inside[:, 1:]
    vals = cover[core] if core.any() else cover[inside]
    return max(float(np.percentile(vals, 75)), 0.5)


def detect(
    image: np.ndarray,
    min_area_frac: float = 0.004,
    min_side_frac: float = 0.05,
    max_residual: float = 60.0,
    other_dist: float = 90.0,
    max_aspect: float = 1.6,
) -> list[dict]:
    """Objects in an image of the shapes dataset. `image`: (H, W, 3) uint8 RGB.

    Returns [{"shape": str | None, "color": str | None, "box": [x0, y0, x1, y1] (x1, y1 exclusive),
    "centroid": [x, y], "area": int, "features": {...}}], largest first.
    """
    img = np.asarray(image)
    labels, alpha = blend(img, max_residual, other_dist)
    H, W = labels.shape
    names = list(data.PALETTE) + [None]
    min_area = max(3, min_area_frac * H * W)
    min_side = max(2, round(min_side_frac * min(H, W)))
    kept = []  # (colour, component labels, index, pixels, trimmed box) of every object large enough
    for k in np.unique(labels[labels >= 0]):
        comp, n = connected_components(labels == k)
        for i in range(1, n + 1):
            ys, xs = np.nonzero(comp == i)
            if len(ys) < min_area:
                continue
            box = _trimmed_box(comp == i, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            if min(box[2] - box[0], box[3] - box[1]) >= min_side:
                kept.append((int(k), comp, i, ys, xs, box))
    claimed = np.zeros((H, W), bool)
    for _, comp, i, *_ in kept:
        claimed |= comp == i
    found = []
    for k, comp, i, ys, xs, (x0, y0, x1, y1) in kept:
        mask = comp[y0:y1, x0:x1] == i
        weight = outline = None
        if k < len(data.PALETTE):
            # Soft coverage, in a window around the whole component: the object's own pixels plus the pixels
            # around it that no object claims (background, specks) and that lean towards its colour: blur
            # spreads mass there, and JPEG's coarse colour turns a bright object's rim pixels paler (white,
            # or no palette colour). Coverage is measured against the object's own colour, the level its
            # interior reaches (`_level`), not the palette's: a model's red is a little off red, and at
            # 0.85 of the way to red a flat square would otherwise fill 0.85 of itself.
            p = _SOFT_PAD
            sy = slice(max(int(ys.min()) - p, 0), min(int(ys.max()) + 1 + p, H))
            sx = slice(max(int(xs.min()) - p, 0), min(int(xs.max()) + 1 + p, W))
            inside = comp[sy, sx] == i
            a = _projection(img[sy, sx], k)
            a = np.clip(a / _level(inside, a), 0.0, 1.0)
            own = inside | (~claimed[sy, sx] & (a >= _SOFT_MIN))
            weight = np.where(own, a, 0.0)
            outline = _outline(inside, a, own)
        shape, feats = classify_shape(mask, weight, max_aspect, outline)
        found.append(
            {
                "shape": shape,
                "color": names[k],
                "box": [int(x0), int(y0), int(x1), int(y1)],
                "centroid": [float(xs.mean()), float(ys.mean())],
                "area": int(len(ys)),
                "features": feats,
            }
        )
    return sorted(found, key=lambda o: -o["area"])


# ------------------------------------------------------------------------------------ scoring


def relative_position(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box a to box b ({"left of", "above", ...}) by GenEval's rule (module docstring)."""
    a, b = np.asarray(box_a, float).reshape(2, 2), np.asarray(box_b, float).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def judge(objects: list[dict], want: dict) -> tuple[bool, str]:
    """GenEval's verdict for detections `objects` (from `detect`) against `want` (from
    `parse_caption`): (correct, reason when not)."""
    cat, req = want["category"], want["objects"]
    of = lambda shape: [o for o in objects if o["shape"] == shape]  # noqa: E731 (largest first)
    has = lambda o: any(d["color"] == o["color"] for d in of(o["shape"]))  # noqa: E731
    if cat in ("single_object", "two_object"):
        missing = [o["shape"] for o in req if not of(o["shape"])]
        return not missing, f"no {', '.join(missing)} found" if missing else ""
    if cat == "counting":
        n = len(of(req[0]["shape"]))
        return n == want["count"], "" if n == want[
            "count"
        ] else f"expected {want['count']} {req[0]['shape']}s, found {n}"
    if cat in ("colors", "color_attr"):
        missing = [f"{o['color']} {o['shape']}" for o in req if not has(o)]
        return not missing, f"no {', '.join(missing)} found" if missing else ""
    if cat == "position":
        subj, ref = of(req[0]["shape"]), of(req[1]["shape"])
        if not subj or not ref:
            return False, f"no {req[0]['shape'] if not subj else req[1]['shape']} found"
        rels = relative_position(subj[0]["box"], ref[0]["box"])
        ok = want["relation"] in rels
        return ok, "" if ok else f"expected {want['relation']}, found {' and '.join(sorted(rels)) or 'no relation'}"
    raise ValueError(f"category {cat!r}: expected one of {data.CATEGORIES}")


def score(image: np.ndarray, caption: str, **detect_kwargs) -> dict:
    """Score one image against its caption: {"category", "score" (1.0 or 0.0), "reason", "objects"}."""
    want = parse_caption(caption)
    objects = detect(image, **detect_kwargs)
    ok, reason = judge(objects, want)
    return {"category": want["category"], "score": float(ok), "reason": reason, "objects": objects}


def aggregate(results: list[dict]) -> dict:
    """Per-category accuracy of `score` results, plus 'overall' (mean of the categories present)."""
    by_cat: dict[str, list[float]] = {}
    for r in results:
        by_cat.setdefault(r["category"], []).append(r["score"])
    out = {c: float(np.mean(by_cat[c])) for c in data.CATEGORIES if c in by_cat}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def evaluate(images, captions, **detect_kwargs) -> dict:
    """{category: accuracy, ..., 'overall': mean over categories} for paired images and captions."""
    images, captions = list(images), list(captions)
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions: expected one caption per image")
    return aggregate([score(im, c, **detect_kwargs) for im, c in zip(images, captions)])


# --------------------------------------------------------------------------- samples on disk

CAPTIONS_FILE = "captions.jsonl"
SAMPLER_FILE = "samples.json"  # what `infinity-jax sample --out DIR` writes; read when there is no captions.jsonl
_FILE_KEYS = ("file", "file_name", "image", "image_path", "path")


def write_samples(folder: str, images, captions, extra: list[dict] | None = None, overwrite: bool = False) -> str:
    """Write images ((H, W, 3) uint8 each) as NNNNNN.png plus captions.jsonl; returns the jsonl path.
    `extra`: optional per-image dicts merged into each jsonl record (e.g. seed, cfg). The folder appears
    whole (written beside it, then renamed); a non-empty one is refused unless `overwrite`, which replaces it."""
    images, captions = list(images), list(captions)
    extra = list(extra) if extra is not None else [{}] * len(images)
    if not len(images) == len(captions) == len(extra):
        raise ValueError(
            f"{len(images)} images, {len(captions)} captions, {len(extra)} extra records: "
            "expected one of each per image"
        )
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"samples folder {folder!r} is a file: expected a folder (new, or empty)")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise ValueError(f"samples folder {folder!r} exists and is not empty: pass overwrite=True to replace it")
    with fileio.atomic_folder(folder) as tmp, open(os.path.join(tmp, CAPTIONS_FILE), "w", encoding="utf-8") as f:
        for i, (im, cap) in enumerate(zip(images, captions)):
            name = f"{i:06d}.png"
            Image.fromarray(np.asarray(im, np.uint8)).save(os.path.join(tmp, name))
            f.write(json.dumps({"file": name, "caption": cap, **extra[i]}) + "\n")
    return os.path.join(folder, CAPTIONS_FILE)


def read_samples(folder: str) -> list[tuple[str, str]]:
    """[(image path, caption)] of a samples folder: its captions.jsonl (format in the module docstring),
    else the samples.json that `infinity-jax sample --out DIR` writes (a "samples" list of records with
    "file" and "prompt"). Raises FileNotFoundError / ValueError that name the folder, file and record at fault."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"samples folder {folder!r} does not exist; expected a folder with images "
            f"and {CAPTIONS_FILE} (or the {SAMPLER_FILE} of `infinity-jax sample`)"
        )
    path = os.path.join(folder, CAPTIONS_FILE)
    if os.path.isfile(path):
        records, caption_key = _jsonl_records(path), "caption"
    elif os.path.isfile(os.path.join(folder, SAMPLER_FILE)):
        path = os.path.join(folder, SAMPLER_FILE)
        records, caption_key = _sampler_records(path), "prompt"
    else:
        raise FileNotFoundError(
            f"no {CAPTIONS_FILE} (or {SAMPLER_FILE} of `infinity-jax sample`) in {folder!r}; "
            'expected one JSON object per line: {"file": "000000.png", "caption": "a photo of a '
            'red circle"}'
        )
    out = []
    for where, rec in records:
        name = next((rec[k] for k in _FILE_KEYS if isinstance(rec, dict) and rec.get(k)), None)
        if name is None or not isinstance(rec.get(caption_key), str):
            raise ValueError(
                f"{where}: {json.dumps(rec)[:120]!r} lacks 'file' or {caption_key!r}; "
                f'expected {{"file": "000000.png", "{caption_key}": "..."}}'
            )
        image = os.path.join(folder, name)
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{where}: image {name!r} not found in {folder!r}")
        out.append((image, rec[caption_key]))
    if not out:
        raise ValueError(f"{path} lists no images; expected one record per image")
    return out


def score_samples(folder: str, **detect_kwargs) -> tuple[list[dict], list[dict]]:
    """(results, skipped) of a samples folder (`read_samples`), in its order. results: {"file" (relative to
    the folder), "caption", "category", "score", "reason", "objects"} per scored image; skipped: {"file",
    "caption", "reason"} per image whose caption is outside the shapes grammar (not scored, image not read).
    An unreadable image raises ValueError naming it; so does a folder with nothing to score."""
    results, skipped = [], []
    for path, caption in read_samples(folder):
        name = os.path.relpath(path, folder)
        try:
            parse_caption(caption)
        except CaptionError as e:
            skipped.append({"file": name, "caption": caption, "reason": str(e)})
            continue
        try:
            results.append({"file": name, "caption": caption, **score(load_image(path), caption, **detect_kwargs)})
        except (ValueError, OSError) as e:
            raise ValueError(f"{name}: {e}") from None
    if not results:
        raise ValueError(
            f"nothing to score in {folder!r}: all {len(skipped)} caption(s) are outside the shapes "
            f"grammar; the first, {skipped[0]['file']}: {skipped[0]['reason']}"
        )
    return results, skipped


def _jsonl_records(path: str) -> list[tuple[str, object]]:
    """[('file:line', record)] of a JSON-lines file, blank lines skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f'{path}:{lineno}: not JSON ({e}); expected {{"file": ..., "caption": ...}}'
                    ) from None
    return records


def _sampler_records(path: str) -> list[tuple[str, object]]:
    """[('file: samples[i]', record)] of the summary `infinity-jax sample` writes."""
    with open(path, encoding="utf-8") as f:
        try:
            summary = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
    listed = summary.get("samples") if isinstance(summary, dict) else None
    if not isinstance(listed, list):
        raise ValueError(f"{path}: no 'samples' list; expected the summary `infinity-jax sample` writes")
    return [(f"{path}: samples[{i}]", rec) for i, rec in enumerate(listed)]


def load_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (alpha and palette modes converted)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def degrade(image: np.ndarray, blur: float = 0.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Gaussian blur (std `blur` px, edge-padded) then Gaussian noise (std `noise`, 0..255 scale),
    rounded to uint8: stands in for a tokenizer's slightly blurry reconstruction in robustness checks."""
    a = np.asarray(image, np.float32)
    if blur > 0:
        r = int(math.ceil(3 * blur))
        k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * blur**2))
        k /= k.sum()
        for axis in (0, 1):
            pad = [(0, 0)] * a.ndim
            pad[axis] = (r, r)
            p = np.pad(a, pad, mode="edge")
            n = a.shape[axis]
            a = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    if noise > 0:
        a = a + np.random.default_rng(seed).normal(0.0, noise, a.shape)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def chance_scores(truth: list[np.ndarray], captions: list[str]) -> dict:
    """The evaluator on images of *other* prompts (ground truth of the same prompts, rolled by half): what a
    model that ignores the text scores (the demo's chance reference)."""
    rolled = list(truth[len(truth) // 2 :]) + list(truth[: len(truth) // 2])
    return evaluate(np.stack(rolled), captions)
