"""Small PIL-only figures for reports (no matplotlib): captioned image grids and line plots."""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def _fit_lines(text: str, font, width: int, max_lines: int) -> list[str]:
    """`text` wrapped at word breaks into lines at most `width` pixels wide in `font` (a word wider than that
    is broken inside), at most `max_lines` of them, the last ending in '...' when text was left out."""
    def fits(s: str) -> bool:  # the ink's extent: a glyph may start left of the pen (getbbox left < 0)
        left, _, right, _ = font.getbbox(s)
        return right - min(left, 0) <= width

    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] += f" {word}"
            continue
        while len(word) > 1 and not fits(word):  # an over-long word: as many characters as fit per line
            cut = max([k for k in range(1, len(word)) if fits(word[:k])], default=1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + "..."]
    return lines


def captioned_grid(images: np.ndarray, captions: Sequence[str], cols: int = 8, scale: int = 2,
                   max_lines: int = 4) -> Image.Image:
    """images (N, H, W, 3) uint8 -> one image, each tile upscaled by `scale` with its caption below, wrapped
    to the tile's width (measured in the font, so no caption runs into its neighbour) in at most `max_lines`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(captions):
        raise ValueError(f"images {images.shape} {images.dtype} / {len(captions)} captions: expected "
                         "(N, H, W, 3) uint8 and one caption per image")
    n, h, w, _ = images.shape
    cols = min(cols, n)
    rows = -(-n // cols)
    font = ImageFont.load_default()
    _, top, _, bottom = font.getbbox("Ag")
    line_h = bottom - min(top, 0) + 1  # the font's own height (load_default is a 10 px TrueType font or bitmap)
    wrapped = [_fit_lines(c, font, w * scale, max_lines) for c in captions]
    text_h = line_h * max(len(t) for t in wrapped) + 4
    tw, th = w * scale + 6, h * scale + text_h + 6
    canvas = Image.new("RGB", (cols * tw, rows * th), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (img, lines) in enumerate(zip(images, wrapped)):
        x, y = (i % cols) * tw + 3, (i // cols) * th + 3
        canvas.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        for j, line in enumerate(lines):  # shifted right by any ink left of the pen, as _fit_lines measured
            draw.text((x - min(font.getbbox(line)[0], 0), y + h * scale + 2 + line_h * j), line, fill=(0, 0, 0),
                      font=font)
    return canvas


def line_plots(series: Mapping[str, Sequence[tuple[float, float]]], title: str = "",
               size: tuple[int, int] = (720, 300)) -> Image.Image:
    """One panel per named series of (x, y) points, side by side, with min/max labels."""
    font = ImageFont.load_default()
    names = [k for k, v in series.items() if len(v)]
    panel_w, panel_h = size[0] // max(1, len(names)), size[1]
    canvas = Image.new("RGB", (panel_w * max(1, len(names)), panel_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for p, name in enumerate(names):
        pts = np.asarray(series[name], np.float64)
        x0, y0, x1, y1 = p * panel_w + 50, 24, (p + 1) * panel_w - 10, panel_h - 30
        draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        xs, ys = pts[:, 0], pts[:, 1]
        lo, hi = float(ys.min()), float(ys.max())
        hi = hi if hi > lo else lo + 1e-6
        px = x0 + (xs - xs.min()) / max(xs.max() - xs.min(), 1e-9) * (x1 - x0)
        py = y1 - (ys - lo) / (hi - lo) * (y1 - y0)
        draw.line(list(zip(px.tolist(), py.tolist())), fill=COLORS[p % len(COLORS)], width=2)
        draw.text((x0, 6), f"{title}: {name}".strip(": "), fill=(0, 0, 0), font=font)
        draw.text((p * panel_w + 2, y0), f"{hi:.3g}", fill=(0, 0, 0), font=font)
        draw.text((p * panel_w + 2, y1 - 10), f"{lo:.3g}", fill=(0, 0, 0), font=font)
        draw.text((x0, y1 + 4), f"step {xs.min():.0f}", fill=(0, 0, 0), font=font)
        draw.text((x1 - 60, y1 + 4), f"step {xs.max():.0f}", fill=(0, 0, 0), font=font)
    return canvas
