"""Small PIL-only figures for reports (no matplotlib): captioned image grids and line plots."""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def captioned_grid(images: np.ndarray, captions: Sequence[str], cols: int = 8, scale: int = 2,
                   chars: int = 18) -> Image.Image:
    """images (N, H, W, 3) uint8 -> one image, each tile upscaled by `scale` with its caption below."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(captions):
        raise ValueError(f"images {images.shape} {images.dtype} / {len(captions)} captions: expected "
                         "(N, H, W, 3) uint8 and one caption per image")
    n, h, w, _ = images.shape
    cols = min(cols, n)
    rows = -(-n // cols)
    font = ImageFont.load_default()
    wrapped = [textwrap.wrap(c, chars)[:4] for c in captions]
    text_h = 11 * max(len(t) for t in wrapped) + 4
    tw, th = w * scale + 6, h * scale + text_h + 6
    canvas = Image.new("RGB", (cols * tw, rows * th), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (img, lines) in enumerate(zip(images, wrapped)):
        x, y = (i % cols) * tw + 3, (i // cols) * th + 3
        canvas.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + h * scale + 2 + 11 * j), line, fill=(0, 0, 0), font=font)
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
