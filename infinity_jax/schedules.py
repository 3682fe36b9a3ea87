"""Scale schedules: which (t, h, w) token grids the model predicts, coarse to fine.

A schedule is a tuple of (t, h, w) triples, one per scale; images use t = 1 (the official
table's t column is for video and is forced to 1 by every image code path). The last scale
is the latent grid: (H / stride, W / stride) for a VAE of spatial stride `stride`.

The official templates cover aspect ratios h/w from 1/3 to 3 (each ratio and its inverse) and
four pixel budgets, which are prefixes of one 13-scale list:
  '0.06M' -> 7 scales (256x256 for h/w = 1), '0.25M' -> 10 (512x512),
  '0.60M' -> 12 (768x768), '1M' -> 13 (1024x1024).
"""

from __future__ import annotations

import math
from typing import Sequence

Schedule = tuple[tuple[int, int, int], ...]

VAE_STRIDE = 16
PIXEL_BUDGETS = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}

# The official (h, w) lists for h/w >= 1 (facts of the released models, 13 scales each).
_TALL_TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: (
        (1, 1),
        (2, 2),
        (4, 4),
        (6, 6),
        (8, 8),
        (12, 12),
        (16, 16),
        (20, 20),
        (24, 24),
        (32, 32),
        (40, 40),
        (48, 48),
        (64, 64),
    ),
    1.250: (
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
        (10, 8),
        (15, 12),
        (20, 16),
        (25, 20),
        (30, 24),
        (35, 28),
        (45, 36),
        (55, 44),
        (70, 56),
    ),
    1.333: (
        (1, 1),
        (2, 2),
        (4, 3),
        (8, 6),
        (12, 9),
        (16, 12),
        (20, 15),
        (24, 18),
        (28, 21),
        (36, 27),
        (48, 36),
        (60, 45),
        (72, 54),
    ),
    1.500: (
        (1, 1),
        (2, 2),
        (3, 2),
        (6, 4),
        (9, 6),
        (15, 10),
        (21, 14),
        (27, 18),
        (33, 22),
        (39, 26),
        (48, 32),
        (63, 42),
        (78, 52),
    ),
    1.750: (
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 4),
        (11, 6),
        (14, 8),
        (21, 12),
        (28, 16),
        (35, 20),
        (42, 24),
        (56, 32),
        (70, 40),
        (84, 48),
    ),
    2.000: (
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 3),
        (10, 5),
        (16, 8),
        (22, 11),
        (30, 15),
        (38, 19),
        (46, 23),
        (60, 30),
        (74, 37),
        (90, 45),
    ),
    2.500: (
        (1, 1),
        (2, 2),
        (5, 2),
        (10, 4),
        (15, 6),
        (20, 8),
        (25, 10),
        (30, 12),
        (40, 16),
        (50, 20),
        (65, 26),
        (80, 32),
        (100, 40),
    ),
    3.000: (
        (1, 1),
        (2, 2),
        (6, 2),
        (9, 3),
        (15, 5),
        (21, 7),
        (27, 9),
        (36, 12),
        (45, 15),
        (54, 18),
        (72, 24),
        (90, 30),
        (111, 37),
    ),
}
# The official video t column; images force t = 1 but we keep it to reproduce the table.
OFFICIAL_T = (1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 21)


def _template_key(ratio: float) -> float:
    """The official key of the inverse template: 1/r truncated (not rounded) to 3 decimals."""
    return int(1 / ratio * 1000) / 1000


def _all_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    out = {}
    for ratio, hws in _TALL_TEMPLATES.items():
        out[ratio] = hws
        if ratio != 1.0:
            out[_template_key(ratio)] = tuple((w, h) for h, w in hws)
    return dict(sorted(out.items()))


TEMPLATES = _all_templates()
H_DIV_W_TEMPLATES = tuple(TEMPLATES)  # sorted ascending: 0.333 ... 3.0


def nearest_h_div_w(h_div_w: float) -> float:
    """The official template key closest to an arbitrary aspect ratio h/w (first on ties, as argmin)."""
    if not (h_div_w > 0 and math.isfinite(h_div_w)):
        raise ValueError(f"h_div_w={h_div_w!r}: expected a positive finite aspect ratio (height / width)")
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(h_div_w - t))


def official_schedule(h_div_w: float, pn: str = "1M", *, video_t: bool = False) -> Schedule:
    """The official schedule for the template nearest `h_div_w` at pixel budget `pn`.

    video_t=True keeps the official t column (for reproducing the table); images use t = 1.
    """
    if pn not in PIXEL_BUDGETS:
        raise ValueError(f"pn={pn!r}: expected one of {sorted(PIXEL_BUDGETS)}")
    hws = TEMPLATES[nearest_h_div_w(h_div_w)][: PIXEL_BUDGETS[pn]]
    ts = OFFICIAL_T if video_t else (1,) * len(hws)
    return tuple((t, h, w) for t, (h, w) in zip(ts, hws))


def image_size(schedule: Schedule, stride: int = VAE_STRIDE) -> tuple[int, int]:
    """Pixel (H, W) of the image a schedule describes."""
    _, h, w = schedule[-1]
    return h * stride, w * stride


def scale_lengths(schedule: Schedule) -> tuple[int, ...]:
    """Tokens per scale: t * h * w."""
    return tuple(t * h * w for t, h, w in schedule)


def num_tokens(schedule: Schedule) -> int:
    """Total tokens over all scales (the transformer's sequence length)."""
    return sum(scale_lengths(schedule))


def scale_offsets(schedule: Schedule) -> tuple[int, ...]:
    """Start index of every scale in the concatenated sequence, plus the total at the end."""
    out = [0]
    for n in scale_lengths(schedule):
        out.append(out[-1] + n)
    return tuple(out)


def validate(schedule: Sequence[Sequence[int]], latent_hw: tuple[int, int] | None = None) -> Schedule:
    """Checks a schedule and returns it as a tuple of int triples.

    Rules: at least one scale; every entry (t, h, w) positive; h and w never decrease from one
    scale to the next and the whole schedule grows; the last scale equals `latent_hw` when given.
    """
    try:
        sched = tuple(tuple(int(v) for v in s) for s in schedule)
    except (TypeError, ValueError) as e:
        raise ValueError(f"schedule={schedule!r}: expected a sequence of (t, h, w) integer triples") from e
    if not sched:
        raise ValueError("schedule is empty: expected at least one (t, h, w) scale")
    for i, s in enumerate(sched):
        if len(s) != 3 or min(s) < 1:
            raise ValueError(f"schedule[{i}]={s}: expected a (t, h, w) triple of positive integers")
    for i in range(1, len(sched)):
        (_, h0, w0), (_, h1, w1) = sched[i - 1], sched[i]
        if h1 < h0 or w1 < w0 or (h1, w1) == (h0, w0):
            raise ValueError(
                f"schedule is not increasing at scale {i}: {sched[i - 1]} -> {sched[i]}; "
                "expected h and w never to shrink and every scale to be larger"
            )
    if latent_hw is not None and tuple(sched[-1][1:]) != tuple(latent_hw):
        raise ValueError(
            f"schedule's last scale {sched[-1][1:]} does not match the latent size {tuple(latent_hw)}; "
            "expected the last (h, w) to equal the VAE latent grid"
        )
    return sched


def custom_schedule(
    image_hw: tuple[int, int], stride: int = VAE_STRIDE, hws: Sequence[tuple[int, int]] | None = None
) -> Schedule:
    """A schedule for small images (tiny configs): the given (h, w) list, or square powers-ish of 2.

    With `hws` None, a square image gets sides 1, 2, 4, ... up to the latent side (the last one
    always the latent side), e.g. 64 px at stride 8 -> (1,2,4,8) and 128 px at stride 16 -> (1,2,4,8).
    """
    H, W = image_hw
    if H % stride or W % stride:
        raise ValueError(f"image size {image_hw} is not a multiple of the VAE stride {stride}")
    latent = (H // stride, W // stride)
    if hws is None:
        if latent[0] != latent[1]:
            raise ValueError(f"image size {image_hw}: give `hws` explicitly for non-square images")
        sides, s = [], 1
        while s < latent[0]:
            sides.append(s)
            s *= 2
        hws = [(s, s) for s in sides] + [latent]
    return validate([(1, h, w) for h, w in hws], latent_hw=latent)


def parse_schedule(spec: str) -> Schedule:
    """'1x1,2x2,4x4' -> ((1,1,1),(1,2,2),(1,4,4)); used by configs and the command line."""
    try:
        hws = [tuple(int(v) for v in part.lower().split("x")) for part in spec.split(",") if part.strip()]
    except ValueError as e:
        raise ValueError(f"schedule spec {spec!r}: expected 'HxW,HxW,...' with integers") from e
    if any(len(hw) != 2 for hw in hws):
        raise ValueError(f"schedule spec {spec!r}: expected 'HxW,HxW,...'")
    return validate([(1, h, w) for h, w in hws])


def resolve(spec: str, h_div_w: float = 1.0) -> tuple[Schedule, float | None]:
    """The one way a schedule spec becomes a schedule: (schedule, h/w template used, or None for a custom one).

    spec: a pixel budget (one of PIXEL_BUDGETS: the official template nearest `h_div_w`) or a custom
    'HxW,HxW,...' list of latent sides (small models, smoke runs). A bad spec raises ValueError naming it.
    """
    spec = str(spec).strip()
    if spec in PIXEL_BUDGETS:
        return official_schedule(float(h_div_w), spec), nearest_h_div_w(float(h_div_w))
    try:
        return parse_schedule(spec), None
    except ValueError as e:
        raise ValueError(
            f"schedule {spec!r}: {e}; expected a pixel budget {tuple(PIXEL_BUDGETS)} or 'HxW,HxW,...'"
        ) from e
