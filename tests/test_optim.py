"""Optimizer pieces: lr schedule values, weight-decay mask, EMA, gradient accumulation, compute dtype."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from infinity_jax.train import optim
from infinity_jax.train.state import TrainState, make_step
from tests.train_helpers import TokenData, make_fns


def test_lr_is_base_lr_times_global_batch_over_256():
    assert optim.peak_learning_rate(6e-4, 4096) == pytest.approx(9.6e-3)
    with pytest.raises(ValueError, match="global_batch=0"):
        optim.peak_learning_rate(6e-4, 0)


def test_lin0_schedule_at_start_warmup_end_plateau_and_end():
    peak, total, warm = 2.0, 1001, 100
    f = optim.lr_schedule(peak, total, warm, "lin0", warmup_init=0.005, final_frac=0.3)
    decay = total - 1 - warm  # 900 updates from the peak to the last one
    assert float(f(0)) == pytest.approx(0.005 * peak)
    assert float(f(50)) == pytest.approx(peak * (0.005 + 0.995 * 0.5))
    assert float(f(warm)) == pytest.approx(peak)  # warm-up end: the peak
    assert float(f(warm + 0.05 * decay - 1)) == pytest.approx(peak)  # 5% plateau
    assert float(f(total - 1)) == pytest.approx(0.3 * peak)  # the end: final_frac x peak
    p = 0.5  # halfway: linear between the plateau's end and the final value
    assert float(f(warm + p * decay)) == pytest.approx(peak * (0.3 + 0.7 * (1 - p) / 0.95))
    assert float(f(total + 100)) == pytest.approx(0.3 * peak)  # clamped after the end
    cos = optim.lr_schedule(peak, total, warm, "cos", final_frac=0.1)
    assert float(cos(warm + decay / 2)) == pytest.approx(peak * 0.55)
    with pytest.raises(ValueError, match="lr schedule 'step'"):
        optim.lr_schedule(peak, total, warm, "step")


def test_weight_decay_mask_excludes_norms_biases_embeddings_and_gains():
    init_params, _ = make_fns()
    mask = optim.decay_mask(jax.eval_shape(init_params, jax.random.key(0)))  # boxed, abstract: fine
    flat = {"/".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat == {
        "embedding": False,
        "ln/scale": False,
        "ln/bias": False,
        "qkv/kernel": True,
        "qkv/bias": False,
        "proj/kernel": True,
        "proj/bias": False,
        "fc1/kernel": True,
        "fc1/bias": False,
        "fc2/kernel": True,
        "fc2/bias": False,
        "head/kernel": True,
        "head/bias": False,
    }
    official_like = {  # names as the converted official model will have them
        "blocks_0": {
            "ada_gss": np.zeros((1, 1, 6, 8)),
            "sa": {"mat_qkv": {"kernel": np.zeros((8, 24))}},
            "ffn": {"fc1": {"bias": np.zeros((4,))}},
        },
        "lvl_embed": {"embedding": np.zeros((15, 8))},
        "pos_start": np.zeros((1, 1, 8)),
        "text_proj_for_sos": {"ca": {"mat_q": np.zeros((8, 8))}},
        "word_embed": {"kernel": np.zeros((32, 8))},
    }
    m = optim.decay_mask(official_like)
    assert m["blocks_0"]["sa"]["mat_qkv"]["kernel"] and m["word_embed"]["kernel"]
    assert not (
        m["blocks_0"]["ada_gss"]
        or m["blocks_0"]["ffn"]["fc1"]["bias"]
        or m["lvl_embed"]["embedding"]
        or m["pos_start"]
        or m["text_proj_for_sos"]["ca"]["mat_q"]
    )


def _optim_cfg(**kw):
    c = ml_collections.ConfigDict(
        dict(
            base_lr=256.0,
            b1=0.9,
            b2=0.97,
            eps=1e-8,
            weight_decay=0.005,
            grad_clip=5.0,
            schedule="const",
            warmup_steps=0,
            warmup_init=0.005,
            final_frac=0.3,
        )
    )
    c.update(kw)
    return c


def test_weight_decay_applies_only_where_the_mask_says():
    tx, sched = optim.make_optimizer(_optim_cfg(base_lr=0.1 * 256), total_steps=10, global_batch=1)  # lr 0.1
    params = {
        "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
        "ln": {"scale": jnp.ones((2,))},
        "embedding": jnp.ones((3, 2)),
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.005)  # decoupled: lr x wd x p
    for leaf in (new["dense"]["bias"], new["ln"]["scale"], new["embedding"]):
        np.testing.assert_array_equal(leaf, 1.0)


def test_ema_follows_decay_times_ema_plus_rest_times_params():
    tx = optax.sgd(1.0)
    st = TrainState.create({"w": jnp.array([1.0, 2.0])}, tx, jax.random.key(0), ema_decay=0.9)
    st = st.apply_gradients({"w": jnp.array([1.0, -1.0])})  # params -> [0, 3]
    np.testing.assert_allclose(st.ema_params["w"], [0.9 * 1 + 0.1 * 0, 0.9 * 2 + 0.1 * 3])
    st = st.apply_gradients({"w": jnp.array([1.0, 1.0])})  # params -> [-1, 2]
    np.testing.assert_allclose(st.ema_params["w"], [0.9 * 0.9 + 0.1 * -1, 0.9 * 2.1 + 0.1 * 2], rtol=1e-6)
    assert int(st.step) == 2


def test_gradient_accumulation_over_micro_batches_equals_one_big_batch():
    init_params, loss_fn = make_fns()
    params = jax.jit(lambda k: nn.meta.unbox(init_params(k)))(jax.random.key(1))
    batch = jax.tree.map(jnp.asarray, next(TokenData(16)))
    rng = jax.random.key(2)
    f = jax.jit(optim.accumulate_gradients, static_argnums=(0, 4))
    big = f(loss_fn, params, batch, rng, 1)
    for k in (4,):
        acc = f(loss_fn, params, batch, rng, k)
        assert float(acc[0]) == pytest.approx(float(big[0]), rel=1e-6)
        for a, b in zip(jax.tree.leaves(acc[2]), jax.tree.leaves(big[2])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="grad_accum=3"):
        optim.accumulate_gradients(loss_fn, params, batch, rng, 3)


def test_bf16_compute_keeps_fp32_params_and_optimizer_state():
    init_params, loss_fn = make_fns("bfloat16")
    tx, sched = optim.make_optimizer(_optim_cfg(base_lr=1e-3), total_steps=10, global_batch=16)
    st = jax.jit(lambda: TrainState.create(init_params(jax.random.key(1)), tx, jax.random.key(0)))()
    batch = jax.tree.map(jnp.asarray, next(TokenData(16)))
    _, loss32 = make_fns("float32")
    st16, m16 = jax.jit(make_step(loss_fn, sched, compute_dtype=jnp.bfloat16))(st, batch, jax.random.key(3))
    assert {
        x.dtype for x in jax.tree.leaves((st16.params, st16.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)
    } == {jnp.dtype(jnp.float32)}
    assert float(m16["loss"]) == pytest.approx(float(jax.jit(loss32)(st.params, batch, None)[0]), rel=2e-2)
    assert float(m16["lr"]) == pytest.approx(1e-3 * 16 / 256)


def test_a_run_not_longer_than_its_warmup_warms_up_one_step_less_than_it_runs():
    """A 2-step smoke run of a config with 2 warm-up steps (train_defaults 'tiny', shapes:tiny): warm-up shortened
    to total_steps - 1, so the schedule is valid and its last update is at the peak (it raised before)."""
    peak = 1.0  # base_lr 256 x global_batch 1 / 256
    for total, warmup, lrs in ((2, 2, [0.005, 1.0]), (3, 10, [0.005, 0.5025, 1.0]), (1, 2, [1.0])):
        cfg = _optim_cfg(schedule="lin0", warmup_steps=warmup)
        assert optim.warmup_steps(cfg, total) == total - 1
        _, sched = optim.make_optimizer(cfg, total_steps=total, global_batch=1)
        np.testing.assert_allclose([float(sched(i)) for i in range(total)], np.array(lrs) * peak, rtol=1e-6)
    assert optim.warmup_steps(_optim_cfg(warmup_steps=-1), 1000) == 10  # -1: 1% (official), untouched
    assert optim.warmup_steps(_optim_cfg(warmup_steps=4), 1000) == 4
