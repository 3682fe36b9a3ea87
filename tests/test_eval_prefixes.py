"""`infinity-jax eval prefixes`: drawing the scales after a true prefix reproduces the sampler when
nothing is given, keeps what is given, and the teacher-forced accuracy counts what it says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax import sample, schedules
from infinity_jax.convert import infinity as conv_inf
from infinity_jax.eval import prefixes
from infinity_jax.model import transformer

SCHEDULE = schedules.validate(((1, 1, 1), (1, 2, 2), (1, 3, 3)))
B, D = 3, 8


@pytest.fixture(scope="module")
def tiny():
    cfg = transformer.InfinityConfig.from_dict(dict(conv_inf.load_config("tiny").model.to_dict(), codebook_dim=D))
    params = transformer.init_params(cfg, jax.random.key(0))
    params = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a, params)  # sharper logits than the init's
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.normal(size=(B, 5, cfg.text_channels)), jnp.float32)
    mask = jnp.asarray(np.arange(5)[None] < np.array([[5], [3], [1]]))
    true_bits = [jnp.asarray(rng.integers(0, 2, (B, h, w, D)), jnp.uint8) for _, h, w in SCHEDULE]
    return cfg, params, text, mask, true_bits


@pytest.mark.parametrize("greedy", [True, False])
def test_no_true_scales_reproduces_the_sampler(tiny, greedy):
    cfg, params, text, mask, true_bits = tiny
    sp = sample.sampling_params(len(SCHEDULE), cfg="1,2,3", tau="1,0.5,2", top_k=0, top_p=0.9, greedy=greedy)
    seeds = np.array([3, 5, 7], np.uint32)
    want, _, _ = jax.jit(lambda p: sample.generate_tokens(cfg, SCHEDULE, p, text, mask, seeds, sp))(params)
    got = prefixes.draw_after_prefix(cfg, SCHEDULE, params, text, mask, true_bits, 0, seeds, sp)
    got = np.concatenate([np.asarray(b).reshape(B, -1, D) for b in got], 1)
    # the cached and the full forward differ in fp32 rounding only: a bit may flip at a near-tie
    assert (got == np.asarray(want)).mean() > 0.99
    assert (got != np.asarray(true_bits[1]).reshape(B, -1, D)[:, :1]).any()


def test_true_scales_are_kept_and_the_rest_is_drawn(tiny):
    cfg, params, text, mask, true_bits = tiny
    sp = sample.sampling_params(len(SCHEDULE), cfg=3.0)
    seeds = np.arange(B)
    all_true = prefixes.draw_after_prefix(cfg, SCHEDULE, params, text, mask, true_bits, 3, seeds, sp)
    assert all(np.array_equal(a, b) for a, b in zip(all_true, true_bits))
    two = prefixes.draw_after_prefix(cfg, SCHEDULE, params, text, mask, true_bits, 2, seeds, sp)
    assert all(np.array_equal(two[k], true_bits[k]) for k in (0, 1))
    assert not np.array_equal(two[2], true_bits[2])  # random truth vs the model's draw
    with pytest.raises(ValueError, match="num_true=4"):
        prefixes.draw_after_prefix(cfg, SCHEDULE, params, text, mask, true_bits, 4, seeds, sp)


def test_teacher_forced_accuracy_counts_bits_and_whole_positions(tiny):
    cfg, params, text, mask, true_bits = tiny
    # scale 1 sees only the text: label it with the model's own argmax, bit 0 flipped
    logits = transformer.Infinity(cfg).apply(
        {"params": params}, text, mask, prefixes.bsq.teacher_forcing_inputs(true_bits, SCHEDULE), SCHEDULE
    )
    first = np.asarray(logits)[:, :1].reshape(B, 1, 1, D, 2)
    first = (first[..., 1] > first[..., 0]).astype(np.uint8)
    first[..., 0] ^= 1
    labels = [jnp.asarray(first)] + list(true_bits[1:])
    background = np.zeros((B, 3, 3), bool)
    background[0] = True  # image 0 is all background
    rows = prefixes.teacher_forced_accuracy(cfg, SCHEDULE, params, text, mask, labels, background=background)
    assert [r["scale"] for r in rows] == ["1x1", "2x2", "3x3"]
    assert rows[0]["bit_acc"] == pytest.approx((D - 1) / D) and rows[0]["all_bits_right"] == 0.0
    assert rows[0]["background_share"] == pytest.approx(1 / 3)
    assert "background_share" not in rows[1]  # a 2x2 grid does not tile the 3x3 background map
    last = rows[2]
    assert last["background_share"] == pytest.approx(1 / 3) and 0.0 <= last["background_bit_acc"] <= 1.0
    assert 0.3 < last["bit_acc"] < 0.7  # random labels


def test_the_command_names_a_bad_run_or_out_in_one_line(tmp_path, capsys):
    """`infinity-jax eval prefixes` refuses a folder as --out before any work, and a --run that is no training
    run with what was expected (exit status 2, one line)."""
    from infinity_jax import commands

    run = tmp_path / "nope"
    assert commands.main(["eval", "prefixes", "--run", str(run), "--out", str(tmp_path)]) == 2
    assert (
        f"infinity-jax eval prefixes: error: --out '{tmp_path}' is a folder: expected a JSON file path"
        in capsys.readouterr().err
    )
    assert commands.main(["eval", "prefixes", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("infinity-jax eval prefixes: error: transformer checkpoint") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1
