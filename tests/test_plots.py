"""Report figures (infinity_jax/plots.py): captions wrapped to their tile's width, never into a neighbour;
matplotlib charts of the expected size with each series drawn where it belongs."""

from __future__ import annotations

import os

import numpy as np
from PIL import ImageFont

from infinity_jax import plots

CAPTIONS = [
    "a photo of a yellow square and a purple circle",
    "supercalifragilisticexpialidocious shapes",
    "",
    "a photo of a red triangle below a blue square and a green circle left of two yellow squares",
    "x",
]


def test_captions_stay_inside_their_cells():
    side, scale, cols = 32, 2, 3
    images = np.full((len(CAPTIONS), side, side, 3), 255, np.uint8)  # white tiles: every dark pixel is text
    grid = np.asarray(plots.captioned_grid(images, CAPTIONS, cols=cols, scale=scale))
    ink = (grid < 255).any(-1)
    tile_w, inner = side * scale + 6, side * scale
    rows = -(-len(CAPTIONS) // cols)
    tile_h = grid.shape[0] // rows
    for i, caption in enumerate(CAPTIONS):
        r, c = divmod(i, cols)
        cell = ink[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w]
        assert not cell[:, :3].any() and not cell[:, 3 + inner :].any(), f"caption {i} leaves its cell"
        assert cell.any() == bool(caption)


def _extent(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return right - min(left, 0)


def test_fit_lines_wraps_by_width_and_marks_what_was_left_out():
    font = ImageFont.load_default()
    lines = plots._fit_lines(CAPTIONS[0], font, 64, 4)
    assert " ".join(lines) == CAPTIONS[0] and all(_extent(font, ln) <= 64 for ln in lines)
    long = plots._fit_lines(CAPTIONS[3], font, 64, 4)
    assert len(long) == 4 and long[-1].endswith("...") and all(_extent(font, ln) <= 64 for ln in long)
    word = plots._fit_lines("supercalifragilisticexpialidocious", font, 40, 9)
    assert "".join(word) == "supercalifragilisticexpialidocious" and all(_extent(font, ln) <= 40 for ln in word)


def _has_colour(img: np.ndarray, name: str, tol: int = 12) -> bool:
    """Whether any pixel is (within tol) the matplotlib colour `name`, e.g. 'C0'."""
    from matplotlib.colors import to_rgb

    rgb = np.round(np.array(to_rgb(name)) * 255)
    return bool((np.abs(img.astype(int) - rgb).max(-1) <= tol).any())


def test_line_plots_draws_one_labelled_panel_per_series():
    series = {"tokenizer": [(s, 1.0 / (s + 1)) for s in range(50)], "transformer": [(0, 5.0), (100, 2.0)], "empty": []}
    img = plots.line_plots(series, title="training loss")
    arr = np.asarray(img)
    assert img.mode == "RGB" and img.size == (720, 300)
    left, right = arr[:, :360], arr[:, 360:]  # first series in the left panel in C0, second in the right in C1
    assert _has_colour(left, "C0") and not _has_colour(right, "C0")
    assert _has_colour(right, "C1") and not _has_colour(left, "C1")
    assert not _has_colour(arr, "C2")  # the empty series has no panel
    dark = (arr < 100).all(-1)
    assert dark[:30].any() and dark[-25:].any()  # a title above, axis labels below
    assert plots.line_plots({}, size=(400, 200)).size == (400, 200)


def test_loglog_png_writes_a_labelled_plot_atomically(tmp_path):
    from PIL import Image

    path = tmp_path / "scaling.png"
    path.write_bytes(b"old")
    xs = np.geomspace(1e9, 1e13, 5)
    series = [
        {"label": "d8: b=0.150", "points": list(zip(xs, 30 * xs**-0.15)), "line": list(zip(xs, 30 * xs**-0.15))},
        {"label": "d16", "points": [(1e10, 0.5), (0.0, 0.4), (1e12, -1.0)], "marker": "s"},
    ]
    plots.loglog_png(str(path), series, "loss vs compute", "training FLOPs", "val loss")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (480, 720, 3)
    assert _has_colour(img, "C0") and _has_colour(img, "C1")
    legend = img[:, 560:]  # the legend sits right of the axes: a swatch per series
    assert _has_colour(legend, "C0") and _has_colour(legend, "C1")
    assert os.listdir(tmp_path) == ["scaling.png"]  # replaced through a temp file, none left over


def test_loglog_png_without_data_still_writes_its_axes(tmp_path):
    from PIL import Image

    path = tmp_path / "empty.png"
    plots.loglog_png(str(path), [{"label": "d8", "points": []}], "loss vs compute", "FLOPs", "loss", size=(400, 300))
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (300, 400, 3) and (img < 100).all(-1).mean() > 0.005  # text and the frame
    assert not _has_colour(img, "C0")
