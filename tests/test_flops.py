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

from infinity_jax import sample, schedules
from infinity_jax.model import flops
from infinity_jax.model import transformer as T
from infinity_jax.train import step as step_lib

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
