"""The procedural shapes dataset: deterministic, captions follow the grammar, the spec matches the pixels."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from infinity_jax.data import shapes

N = 60  # ten of each category

_SHAPE = "(circle|square|triangle)"
_COLOR = "(" + "|".join(shapes.PALETTE) + ")"
GRAMMAR = {
    "single_object": rf"a photo of a {_SHAPE}",
    "two_object": rf"a photo of a {_SHAPE} and a {_SHAPE}",
    "counting": rf"a photo of (two|three|four) {_SHAPE}s",
    "colors": rf"a photo of a {_COLOR} {_SHAPE}",
    "position": rf"a photo of a {_SHAPE} (left of|right of|above|below) a {_SHAPE}",
    "color_attr": rf"a photo of a {_COLOR} {_SHAPE} and a {_COLOR} {_SHAPE}",
}


@pytest.fixture(scope="module")
def examples():
    return [shapes.render(i, seed=3) for i in range(N)]


def test_same_seed_same_pixels_and_spec_other_seed_differs(examples):
    img, cap, spec = shapes.render(7, seed=3)
    assert np.array_equal(img, examples[7][0]) and cap == examples[7][1] and spec == examples[7][2]
    other = [shapes.render(i, seed=4)[0] for i in range(6)]
    assert sum(np.array_equal(a, b[0]) for a, b in zip(other, examples)) == 0


def test_captions_follow_the_grammar_and_name_exactly_the_drawn_objects(examples):
    counts = {c: 0 for c in shapes.CATEGORIES}
    for img, cap, spec in examples:
        cat = spec["category"]
        counts[cat] += 1
        m = re.fullmatch(GRAMMAR[cat], cap)
        assert m, (cat, cap)
        objs = spec["objects"]
        g = m.groups()
        if cat == "single_object":
            assert [o["shape"] for o in objs] == [g[0]]
        elif cat == "two_object":
            assert [o["shape"] for o in objs] == [g[0], g[1]] and g[0] != g[1]
        elif cat == "counting":
            n = {"two": 2, "three": 3, "four": 4}[g[0]]
            assert spec["count"] == n == len(objs) and {o["shape"] for o in objs} == {g[1]}
        elif cat == "colors":
            assert [(o["color"], o["shape"]) for o in objs] == [(g[0], g[1])]
        elif cat == "position":
            assert [o["shape"] for o in objs] == [g[0], g[2]] and spec["relation"] == g[1]
        else:
            assert [(o["color"], o["shape"]) for o in objs] == [(g[0], g[1]), (g[2], g[3])]
            assert g[0] != g[2] and g[1] != g[3]
        assert json.loads(shapes.dumps(spec)) == spec
    assert counts == {c: N // 6 for c in shapes.CATEGORIES}


def _centre(box):
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2


def test_spec_boxes_and_colours_match_the_pixels(examples):
    for img, _, spec in examples:
        H, W = spec["size"]
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        mask = np.zeros((H, W), bool)
        for o in spec["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            # a pixel inside every shape (triangles are widest near the base)
            px = img[int(y0 + 0.75 * (y1 - y0)), (x0 + x1) // 2]
            assert tuple(px) == tuple(shapes.PALETTE[o["color"]]) == tuple(o["rgb"])
            assert not mask[y0:y1, x0:x1].any(), "boxes overlap"
            mask[y0:y1, x0:x1] = True
        # outside every box: only background
        assert (img[~mask] == np.array(shapes.BACKGROUND, np.uint8)).all()


def test_position_relation_is_clear_in_box_centres(examples):
    seen = set()
    for _, _, spec in examples:
        if spec["category"] != "position":
            continue
        (ax, ay), (bx, by) = _centre(spec["objects"][0]["box"]), _centre(spec["objects"][1]["box"])
        rel = spec["relation"]
        seen.add(rel)
        along = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[rel]
        across = abs(ay - by) if rel in ("left of", "right of") else abs(ax - bx)
        assert along > 0 and across < along / 2, (rel, spec["objects"])
    assert len(seen) >= 3


def test_flip_spec_mirrors_boxes_and_swaps_left_and_right():
    spec = next(
        s
        for i in range(200)
        for s in [shapes.make_spec(i, seed=0)]
        if s["category"] == "position" and s["relation"] == "left of"
    )
    f = shapes.flip_spec(spec)
    assert f["relation"] == "right of" and "right of" in f["caption"] and "left of" in spec["caption"]
    assert np.array_equal(shapes.draw(f), shapes.draw(spec)[:, ::-1])
    assert shapes.flip_spec(f) == spec


def test_image_size_is_configurable_and_too_small_is_an_error():
    img, _, spec = shapes.render(0, seed=0, size=(48, 80))
    assert img.shape == (48, 80, 3) and spec["size"] == [48, 80]
    with pytest.raises(ValueError, match="at least 32x32"):
        shapes.render(0, size=16)


def test_slots_layout_places_objects_by_count_and_caption_order():
    from infinity_jax.eval import shapes as shapes_eval

    H = W = 32
    seen = set()
    images, captions = [], []
    for i in range(120):
        img, cap, spec = shapes.render(i, seed=4, size=H, layout="slots")
        images.append(img)
        captions.append(cap)
        centres = [_centre(o["box"]) for o in spec["objects"]]
        n, rel = len(centres), spec.get("relation")
        want = shapes._slot_centres(n, rel)
        for (x, y), (fx, fy) in zip(centres, want):  # jitter 2 px, rounding and clipping 1 more
            assert abs(x - fx * W) <= 3.5 and abs(y - fy * H) <= 3.5, (cap, spec["objects"])
        lo, hi = shapes.OBJECT_SIZES["slots"][min(n, 3)]  # larger than the random layout's
        assert all(int(W * lo) <= o["box"][2] - o["box"][0] < int(W * hi) for o in spec["objects"]), spec
        if spec["category"] in ("two_object", "color_attr"):
            assert centres[0][0] < W / 2 < centres[1][0]  # the first-named object on the left
        seen.add((n, rel))
    assert {(1, None), (2, None), (3, None), (4, None), (2, "left of"), (2, "above")} <= seen
    assert shapes_eval.evaluate(np.stack(images), captions)["overall"] == 1.0
    # random layout is the default and differs
    assert shapes.make_spec(0, seed=4, size=H) != shapes.make_spec(0, seed=4, size=H, layout="slots")
    with pytest.raises(ValueError, match="layout='grid'"):
        shapes.make_spec(0, layout="grid")
