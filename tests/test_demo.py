"""Pieces of `infinity-jax demo` that are cheap to test: report figures, held-out prompts, step planning."""
import numpy as np
import pytest

from infinity_jax import config_util, demo, plots
from infinity_jax.eval import shapes as shapes_eval


def test_held_out_prompts_are_ground_truth_of_an_unseen_seed():
    captions, images = demo.held_out_prompts(12, 64)
    assert len(captions) == len(images) == 12 and images[0].shape == (64, 64, 3)
    assert shapes_eval.evaluate(np.stack(images), captions)["overall"] == 1.0
    from infinity_jax.data import shapes
    assert captions != [shapes.render(i, 0, 64)[1] for i in range(12)]  # not the training seed


def test_with_steps_caps_warmup_for_short_runs():
    cfg = config_util.load_config("tokenizer_shapes")
    short = demo.with_steps(cfg, 40)
    assert short.train.total_steps == 40 and short.optim.warmup_steps == 4
    assert demo.with_steps(cfg, 5000).optim.warmup_steps == cfg.optim.warmup_steps


def test_captioned_grid_and_line_plots_draw():
    imgs = np.zeros((5, 16, 16, 3), np.uint8)
    g = plots.captioned_grid(imgs, ["a photo of a red circle"] * 5, cols=3, scale=2)
    assert g.size[0] == 3 * (16 * 2 + 6) and g.size[1] > 2 * 16 * 2
    p = plots.line_plots({"a": [(0, 1.0), (1, 0.5)], "b": [(0, 2.0), (5, 1.0)]}, title="loss")
    assert p.size == (720, 300) and np.asarray(p).std() > 0
    with pytest.raises(ValueError, match="one caption per image"):
        plots.captioned_grid(imgs, ["x"])
