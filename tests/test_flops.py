"""model/flops.py against the traced forward pass: the matmul FLOPs of every dot product in the jaxpr of
the teacher-forced forward (dense attention, so every query-key pair is a product) equal the count's
weights plus dense attention, for the model's variants; and the training and sampler counts use it."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from infinity_jax import config_util, sample, schedules
from infinity_jax.model import flops
from infinity_jax.model import transformer as T
from infinity_jax.train import optim
from infinity_jax.train import step as step_lib
from infinity_jax.train.state import TrainState, make_step

SCHEDULE = ((1, 1, 1), (1, 2, 2), (1, 3, 3))  # 14 tokens, 3 scales
TEXT_LEN = 5
BASE = T.InfinityConfig(depth=2, embed_dim=64, num_heads=2, block_chunks=1, text_channels=128, attention="xla")


def dot_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general, sub-jaxprs included (a scan's body times its length)."""
    total = 0
    for eqn in jaxpr.eqns:
        assert eqn.primitive.name not in ("cond", "while"), eqn.primitive  # counts would be ambiguous
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(lhs[i] for i in contract) * math.prod(eqn.outvars[0].aval.shape)
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += times * dot_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += times * dot_flops(sub)
    return total


def traced_forward_flops(cfg: T.InfinityConfig) -> int:
    model = T.Infinity(cfg)
    params = nn.unbox(T.abstract_params(cfg))
    tokens = schedules.num_tokens(SCHEDULE)
    text = jax.ShapeDtypeStruct((1, TEXT_LEN, cfg.text_channels), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, TEXT_LEN), jnp.bool_)
    x = jax.ShapeDtypeStruct((1, tokens - 1, cfg.codebook_dim), jnp.float32)
    fn = lambda p, t, m, x: model.apply({"params": p}, t, m, x, SCHEDULE)  # noqa: E731
    return dot_flops(jax.make_jaxpr(fn)(params, text, mask, x).jaxpr)


@pytest.mark.parametrize(
    "changes",
    [{}, {"shared_aln": False}, {"scan_layers": True}, {"cross_attn_layer_scale": 1.0, "codebook_dim": 16}],
    ids=["default", "per_block_adaln", "scan", "layer_scale_d16"],
)
def test_the_count_equals_the_dot_products_of_the_traced_forward(changes):
    cfg = dataclasses.replace(BASE, **changes)
    f = flops.forward_flops(cfg, SCHEDULE, TEXT_LEN)
    tokens = schedules.num_tokens(SCHEDULE)
    dense_self = 4 * cfg.embed_dim * tokens * tokens * cfg.depth  # the traced pass's attention sees every key
    assert traced_forward_flops(cfg) == f["weights"] + dense_self + f["cross_attention"]
    assert f["total"] == f["weights"] + f["self_attention"] + f["cross_attention"]


def test_block_causal_attention_counts_the_pairs_a_query_sees():
    f = flops.forward_flops(BASE, SCHEDULE, TEXT_LEN)
    pairs = 1 * 1 + 4 * 5 + 9 * 14
    assert f["self_attention"] == 4 * BASE.embed_dim * pairs * BASE.depth


def test_training_and_sampler_counts_use_the_forward_count():
    f = flops.forward_flops(BASE, SCHEDULE, TEXT_LEN)["total"]
    assert step_lib.train_flops_per_example(BASE, SCHEDULE, text_len=TEXT_LEN) == 3 * f
    assert sample.transformer_flops(BASE, SCHEDULE, 4, TEXT_LEN) == 2 * 4 * f
    assert sample.transformer_flops(BASE, SCHEDULE, 4, TEXT_LEN, cfg_batch=False) == 4 * f
    per = sample.scale_flops(BASE, SCHEDULE, 4, TEXT_LEN)  # the profile's per-scale utilisation
    assert len(per) == 3 and per[0] < per[1] < per[2] and sum(per) == pytest.approx(2 * 4 * f)


def test_text_weights_count_per_text_token_not_per_image_token():
    """The 2B's cross-attention keys/values are ~12% of its weights; at 256² (646 tokens) and 64 text tokens
    counting them per image token, as 6 N L does, overstates the step by about a tenth."""
    cfg = T.InfinityConfig()  # the 2B's shapes
    sched, _ = schedules.resolve("0.06M", 1.0)
    f = flops.forward_flops(cfg, sched, 64)
    w = flops.weight_sizes(cfg)
    assert 0.10 < w["text"] / T.count_params(cfg) < 0.15
    six_n_l = 2 * T.count_params(cfg) * schedules.num_tokens(sched)
    assert 1.05 < six_n_l / f["weights"] < 1.2


def test_every_projection_of_the_blocks_in_a_bf16_training_step_takes_bf16_operands():
    """A float32 operand makes XLA run the product as a float32 GEMM (at best half the bf16 rate on a GPU):
    the backward pass of a projection whose output was float32 did that for 13.6% of the 2B's FLOPs. (The
    attention kernels keep float32 scores; the dense reference's backward multiplies them as such.)"""
    cfg = dataclasses.replace(BASE, dtype="bfloat16", scan_layers=True, remat="full")
    model = T.Infinity(cfg)
    tx, lr = optim.make_optimizer(config_util.load_config("train_defaults").optim, 10, 2)
    step = make_step(step_lib.make_loss_fn(model, SCHEDULE), lr, 1, jnp.bfloat16)
    key = jax.random.key(0)
    state = jax.eval_shape(lambda: TrainState.create(nn.unbox(T.init_params(cfg, key)), tx, key, 0.0))
    batch = {
        "latent": jax.ShapeDtypeStruct((2, 3, 3, cfg.vae_codebook_dim), jnp.float32),
        "text_features": jax.ShapeDtypeStruct((2, TEXT_LEN, cfg.text_channels), jnp.float32),
        "text_mask": jax.ShapeDtypeStruct((2, TEXT_LEN), jnp.bool_),
    }
    dots = list(flops.dot_products(jax.make_jaxpr(lambda s, b: step(s, b, jax.random.key(1)))(state, batch).jaxpr))
    scores = ("bhlm", "bhqk")  # the attention kernels' query-key scores
    projections = [d for d in dots if "_blocks" in d[0] and not any(s in d[0] for s in scores)]
    assert len(projections) >= 24  # 8 projections per block: forward, backward (2 each), rematerialised
    wide = [(name, lhs, rhs) for name, lhs, rhs, _ in projections if jnp.float32 in (lhs, rhs)]
    assert not wide, wide
