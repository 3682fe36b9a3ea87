"""Report figures (infinity_jax/plots.py): captions wrapped to their tile's width, never into a neighbour."""
from __future__ import annotations

import numpy as np
from PIL import ImageFont

from infinity_jax import plots

CAPTIONS = ["a photo of a yellow square and a purple circle", "supercalifragilisticexpialidocious shapes", "",
            "a photo of a red triangle below a blue square and a green circle left of two yellow squares", "x"]


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
        cell = ink[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w]
        assert not cell[:, :3].any() and not cell[:, 3 + inner:].any(), f"caption {i} leaves its cell"
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
