"""Splash attention (model/attention_tpu.py) in Pallas interpret mode on CPU against a dense reference:
block-causal over scales, plain with l != m (the cached sampler), padded cross-attention, bf16, the
block-sparse mask table, and gradients through the kernel's custom VJP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax.model import attention_tpu

B, H, C = 2, 2, 32
SCALE_LENS = (1, 4, 16, 36)  # a tiny schedule: 57 tokens, not a multiple of the 128 block


def scale_ids(lens) -> np.ndarray:
    return np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(lens)])


def reference(q, k, v, scale, q_scales=None, kv_scales=None, kv_valid=None):
    """Dense attention: float32 logits * scale, hidden keys at -inf, softmax, weighted sum."""
    logits = jnp.einsum("blhc,bmhc->bhlm", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    mask = jnp.ones(logits.shape, bool)
    if q_scales is not None:
        mask &= (jnp.asarray(kv_scales)[None, :] <= jnp.asarray(q_scales)[:, None])[None, None]
    if kv_valid is not None:
        mask &= kv_valid[:, None, None, :]
    probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhlm,bmhc->blhc", probs, v.astype(jnp.float32))


def qkv(l, m, c=C, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, l, H, c), np.float32)
    k = rng.standard_normal((B, m, H, c), np.float32)
    v = rng.standard_normal((B, m, H, c), np.float32)
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def check(l, m, *, scale, q_scales=None, kv_scales=None, kv_valid=None, dtype=jnp.float32, atol=1e-5, c=C, block=128):
    q, k, v = qkv(l, m, c, dtype)
    out = attention_tpu.splash_attention(
        q, k, v, scale=scale, q_scales=q_scales, kv_scales=kv_scales, kv_valid=kv_valid, interpret=True, block=block
    )
    assert out.shape == (B, l, H, c) and out.dtype == dtype
    ref = reference(q, k, v, scale, q_scales, kv_scales, kv_valid)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=atol, rtol=atol)


def test_block_causal():
    ids = scale_ids(SCALE_LENS)
    check(len(ids), len(ids), scale=0.3, q_scales=ids, kv_scales=ids)


def test_block_causal_bf16():
    ids = scale_ids(SCALE_LENS)
    # inputs rounded to bf16 identically for both; the kernel also rounds scale * q and the output to bf16
    check(len(ids), len(ids), scale=C**-0.5, q_scales=ids, kv_scales=ids, dtype=jnp.bfloat16, atol=3e-2)


def test_plain_fewer_queries_than_keys():
    """The cached sampler: this scale's 16 queries against the 57 cached keys, no mask."""
    check(16, 57, scale=C**-0.5)


def test_padded_cross_attention():
    kv_valid = jnp.asarray(np.arange(7)[None, :] < np.array([5, 7])[:, None])  # 5 and 7 real text tokens
    check(57, 7, scale=C**-0.5, kv_valid=kv_valid)


def test_multi_block_sparse_mask():
    """228 tokens in blocks of 128: the first query block (scales 0-4) never sees the second key block (scale 5
    only), which the kernel's block table skips; the last blocks are padded. Head width 16."""
    lens = (1, 4, 16, 36, 71, 100)
    ids = scale_ids(lens)
    l = len(ids)
    q_ids, kv_ids = attention_tpu.padded_ids(l, l, 256, 256, ids, ids)
    kernel = attention_tpu.make_kernel(q_ids, kv_ids, H, 128, 128, interpret=True)
    # per (query block, key block): 0 skipped, 1 partial (loads a mask tile), 2 fully visible (no mask)
    for info in (kernel.fwd_mask_info, kernel.dq_mask_info, kernel.dkv_mask_info):
        np.testing.assert_array_equal(np.asarray(info.block_mask), [[[1, 0], [2, 1]]])  # one table for all heads
        assert info.partial_mask_blocks.shape == (2, 128, 128)  # the two diagonal tiles, shared by the heads
    check(l, l, scale=0.25, q_scales=ids, kv_scales=ids, c=16)


def test_under_jit():
    ids = scale_ids(SCALE_LENS)
    q, k, v = qkv(len(ids), len(ids))
    fn = jax.jit(
        lambda q, k, v: attention_tpu.splash_attention(q, k, v, scale=0.3, q_scales=ids, kv_scales=ids, interpret=True)
    )
    np.testing.assert_allclose(fn(q, k, v), reference(q, k, v, 0.3, ids, ids), atol=1e-5, rtol=1e-5)


def grads(fn, q, k, v, cot):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cot), argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("case", ["block_causal", "multi_block", "padded_cross"])
def test_gradients(case):
    """d/dq, d/dk, d/dv through the kernel's custom VJP (dQ and dKV kernels, skipped blocks included)."""
    if case in ("block_causal", "multi_block"):
        ids = scale_ids(SCALE_LENS if case == "block_causal" else (1, 4, 16, 36, 71, 100))
        l = m = len(ids)
        kw = {"q_scales": ids, "kv_scales": ids}
    else:
        l, m = 57, 7
        kw = {"kv_valid": jnp.asarray(np.arange(m)[None, :] < np.array([5, 7])[:, None])}
    q, k, v = qkv(l, m, seed=1)
    cot = jnp.asarray(np.random.default_rng(2).standard_normal((B, l, H, C)), jnp.float32)
    got = grads(lambda q, k, v: attention_tpu.splash_attention(q, k, v, scale=0.3, interpret=True, **kw), q, k, v, cot)
    want = grads(
        lambda q, k, v: reference(q, k, v, 0.3, kw.get("q_scales"), kw.get("kv_scales"), kw.get("kv_valid")),
        q,
        k,
        v,
        cot,
    )
    for name, g, w in zip("qkv", got, want):
        assert np.all(np.isfinite(np.asarray(g))), name
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")
    if case == "padded_cross":  # padded keys get no gradient
        np.testing.assert_array_equal(np.asarray(got[1])[0, 5:], 0.0)
        np.testing.assert_array_equal(np.asarray(got[2])[0, 5:], 0.0)


def test_argument_checks():
    q, k, v = qkv(8, 8)
    with pytest.raises(ValueError, match="both"):
        attention_tpu.splash_attention(q, k, v, scale=1.0, q_scales=np.zeros(8, np.int32), interpret=True)
    with pytest.raises(ValueError, match="multiple of 128"):
        attention_tpu.splash_attention(q, k, v, scale=1.0, block=96, interpret=True)
