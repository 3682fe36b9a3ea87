"""Figures for reports: captioned image grids (PIL, so the tiles stay pixel-exact) and charts (matplotlib on
its Agg canvas, so no display is needed): training curves and log-log scaling plots."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from infinity_jax.fileio import atomic_write

DPI = 100  # figure sizes are given in pixels: inches = pixels / DPI


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
        lines = lines[: max_lines - 1] + [last.rstrip() + "..."]
    return lines


def captioned_grid(
    images: np.ndarray, captions: Sequence[str], cols: int = 8, scale: int = 2, max_lines: int = 4
) -> Image.Image:
    """images (N, H, W, 3) uint8 -> one image, each tile upscaled by `scale` with its caption below, wrapped
    to the tile's width (measured in the font, so no caption runs into its neighbour) in at most `max_lines`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(captions):
        raise ValueError(
            f"images {images.shape} {images.dtype} / {len(captions)} captions: expected "
            "(N, H, W, 3) uint8 and one caption per image"
        )
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
            draw.text(
                (x - min(font.getbbox(line)[0], 0), y + h * scale + 2 + line_h * j), line, fill=(0, 0, 0), font=font
            )
    return canvas


def _figure(size: tuple[int, int]):
    """A matplotlib Figure of `size` pixels on an Agg canvas (matplotlib imported here: only charts need it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _to_image(fig) -> Image.Image:
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")


def save_png(fig, path: str) -> None:
    """Writes a Figure as a PNG atomically (a temp file renamed over `path`: readers never see half a file)."""
    atomic_write(path, lambda f: fig.canvas.print_png(f))


def line_plots(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str = "",
    size: tuple[int, int] = (720, 300),
    xlabel: str = "step",
    ylabel: str | None = None,
) -> Image.Image:
    """One panel per named series of (x, y) points, side by side (each on its own y scale: e.g. a tokenizer's
    and a transformer's loss), titled by its name under the overall `title`; ylabel defaults to the title."""
    names = [k for k, v in series.items() if len(v)]
    ylabel = (title or "value") if ylabel is None else ylabel
    fig = _figure(size)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for i, (ax, name) in enumerate(zip(axes, names)):
        pts = np.asarray(series[name], np.float64).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], color=f"C{i}", linewidth=1.5)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    if not names:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes)
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    return _to_image(fig)


def _positive(pts) -> np.ndarray:
    """The (x, y) points a log-log axis can show (both > 0), as an (n, 2) array."""
    a = np.asarray(list(pts), np.float64).reshape(-1, 2)
    return a[(a > 0).all(axis=1)]


def _short_log_ticks(axis, values: np.ndarray) -> None:
    """Five labelled ticks spread over the data on a log axis spanning under two decades (a loss axis often
    spans less than one, where the default ticks label one value or none); wider axes keep the decades."""
    lo, hi = float(values.min()), float(values.max())
    if hi >= 100 * lo:
        return
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis.set_major_locator(FixedLocator(np.geomspace(lo, hi, 5) if hi > lo else [lo]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}".replace("e+0", "e").replace("e+", "e")))
    axis.set_minor_locator(NullLocator())


def loglog_png(
    path: str, series: Sequence[dict], title: str, xlabel: str, ylabel: str, size: tuple[int, int] = (720, 480)
) -> None:
    """A log-log plot written to `path` (PNG, atomically). series: {label, points [(x, y)], line [(x, y)]
    (optional: e.g. a fitted curve), marker (matplotlib's: 'o', 's', '^', 'd', ...)}, one colour each, in
    order; every labelled series gets a legend entry. Non-positive values are left out (no log)."""
    fig = _figure(size)
    ax = fig.subplots()
    drawn = False
    for i, s in enumerate(series):
        line, points = _positive(s.get("line", ())), _positive(s.get("points", ()))
        label = s.get("label")
        if len(line) > 1:
            ax.plot(line[:, 0], line[:, 1], "-", color=f"C{i}", linewidth=1.5, label=None if len(points) else label)
            drawn = True
        if len(points):
            ax.plot(
                points[:, 0], points[:, 1], linestyle="none", marker=s.get("marker", "o"), color=f"C{i}", label=label
            )
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        data = np.concatenate([_positive(s.get(k, ())) for s in series for k in ("points", "line")])
        _short_log_ticks(ax.xaxis, data[:, 0])
        _short_log_ticks(ax.yaxis, data[:, 1])
        ax.grid(which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # outside the axes: a sweep can have many series
            fig.legend(loc="outside right upper", fontsize="small")
    else:  # log axes need data; say why the plot is empty instead
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    save_png(fig, path)
