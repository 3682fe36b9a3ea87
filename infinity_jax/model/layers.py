"""Building blocks of the Infinity transformer (linen): norms, AdaLN, 2D RoPE, attention, FFN.

Numerics follow the official model: norms, AdaLN modulation, RoPE and softmax in float32; matmuls
in the compute dtype `dtype` (params stay float32). Every parameter carries logical axis names
(infinity_jax/parallel.py). Leaf names mirror the official module tree so that weight conversion
is a table (infinity_jax/convert/infinity.py): Dense kernels are the transposed torch weights;
`mat_qkv`/`mat_kv` kernels are split by role: (in, 3 or 2, C) for q|k|v or k|v.

Shapes: B batch, L (or l) tokens, C model width, H heads, c = C / H head width, Lt text tokens.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from infinity_jax import schedules
from infinity_jax.model import attention as attention_lib

Dtype = Any
LOG_MAX_SCALE_MUL = math.log(100.0)  # the official clamp of the learned attention-logit scale
ROPE_BASE = 10000.0
ROPE_GRID = 2048 // 16  # the official RoPE table covers 128 x 128 latent positions


def partitioned(init, axes: Sequence[str | None]):
    """An initializer whose params carry logical axis names (parallel.RULES maps them to the mesh)."""
    return nn.with_logical_partitioning(init, tuple(axes))


def truncated_normal(std: float):
    """The official models' weight init: a normal truncated at two standard deviations."""
    return nn.initializers.truncated_normal(std)


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    std: float = 0.02,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense with logically partitioned kernel (in, out) and bias (out,), fp32 params."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(truncated_normal(std), axes),
        bias_init=partitioned(nn.initializers.zeros, axes[1:]),
        name=name,
    )


# ---------------------------------------------------------------- norms and AdaLN
def _normalize_forward(x: jax.Array, eps: float, rms: bool) -> tuple[jax.Array, jax.Array]:
    """(normalized x, 1 / its standard deviation): float32 in, float32 out, over the last axis."""
    if not rms:
        x = x - x.mean(-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps)
    return x * inv_std, inv_std


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _normalize(x: jax.Array, eps: float, rms: bool) -> jax.Array:
    return _normalize_forward(x, eps, rms)[0]


def _normalize_fwd(x, eps, rms):
    y, inv_std = _normalize_forward(x, eps, rms)
    return y, (y, inv_std)


def _normalize_bwd(eps, rms, res, g):
    # A fused norm kernel's backward: from the output and 1/std alone, so autodiff keeps one
    # activation-sized tensor per norm instead of three (x - mean, its square's factor, the output).
    y, inv_std = res
    gy = (g * y).mean(-1, keepdims=True)
    dx = g - y * gy if rms else g - g.mean(-1, keepdims=True) - y * gy
    return (dx * inv_std,)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine over the last axis, in float32."""
    return _normalize(x.astype(jnp.float32), eps, False)


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    """RMSNorm without affine over the last axis, in float32."""
    return _normalize(x.astype(jnp.float32), eps, True)


def norm(x: jax.Array, eps: float, rms: bool) -> jax.Array:
    return rms_norm(x, eps) if rms else layer_norm(x, eps)


def ada_norm(x: jax.Array, scale: jax.Array, shift: jax.Array, eps: float, rms: bool = False) -> jax.Array:
    """AdaLN: norm(x) * (1 + scale) + shift, float32. x: (B, L, C); scale/shift: (B, 1, C)."""
    return norm(x, eps, rms) * (1.0 + scale.astype(jnp.float32)) + shift.astype(jnp.float32)


class Norm(nn.Module):
    """LayerNorm (weight, bias) or RMSNorm (weight) with affine, float32. Official `ca_norm`/`text_norm`."""

    eps: float = 1e-6
    rms: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        y = norm(x, self.eps, self.rms) * self.param("weight", partitioned(nn.initializers.ones, ("norm",)), (c,))
        if not self.rms:
            y = y + self.param("bias", partitioned(nn.initializers.zeros, ("norm",)), (c,))
        return y


# ---------------------------------------------------------------- 2D RoPE
def _rope_freqs(head_dim: int, grid: int = ROPE_GRID, base: float = ROPE_BASE) -> np.ndarray:
    """Angles on the full grid, float32 as the official table: (grid, grid, head_dim // 2).

    The first head_dim // 4 angles follow the row, the rest the column.
    """
    half = head_dim // 2
    inv = np.float32(1.0) / (np.float32(base) ** (np.arange(0, half, 2).astype(np.float32) / np.float32(half)))
    t = np.arange(grid, dtype=np.float32)
    f = np.outer(t, inv).astype(np.float32)  # (grid, head_dim // 4)
    return np.concatenate(
        [np.broadcast_to(f[:, None], (grid, grid, f.shape[1])), np.broadcast_to(f[None, :], (grid, grid, f.shape[1]))],
        -1,
    )


def _rope_grid_extent(schedule: schedules.Schedule) -> tuple[int, int]:
    """The (h, w) of the official 1M template the schedule belongs to (positions live on that grid).

    A schedule that is no official template's prefix uses the template nearest its aspect ratio.
    """
    hw = tuple((h, w) for _, h, w in schedule)
    for ratio, tmpl in schedules.TEMPLATES.items():
        if tmpl[: len(hw)] == hw:
            return tmpl[-1]
    _, h, w = schedule[-1]
    return schedules.TEMPLATES[schedules.nearest_h_div_w(h / w)][-1]


def rope2d_table(schedule: schedules.Schedule, head_dim: int, mode: int = 2) -> np.ndarray:
    """cos/sin of the 2D RoPE angles for every token of a schedule: (2, L, head_dim // 2) float32.

    mode (official `rope2d_normalized_by_hw`): 0 = integer positions (row, col) of each scale;
    1 = the template's 1M-sized table resampled bilinearly (align_corners) to each scale;
    2 = each scale's positions spread over the template's 1M grid, i * (h_1M / h_k) rounded half
    to even (the released models).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4; got {head_dim}")
    freqs = _rope_freqs(head_dim)
    cs = np.stack([np.cos(freqs), np.sin(freqs)]).astype(np.float32)  # (2, G, G, c/2)
    uh, uw = _rope_grid_extent(schedule)
    out = []
    for _, ph, pw in schedule:
        if mode == 0:
            t = cs[:, :ph, :pw]
        elif mode == 2:
            # float32 products, as the official table computes them, then round half to even
            ri = np.round(np.arange(ph, dtype=np.float32) * np.float32(uh / ph)).astype(np.int64)
            ci = np.round(np.arange(pw, dtype=np.float32) * np.float32(uw / pw)).astype(np.int64)
            t = cs[:, ri][:, :, ci]
        elif mode == 1:
            g = cs.shape[1]
            sh, sw = (g, int(g / uh * uw)) if uh >= uw else (int(g / uw * uh), g)
            t = _resize_align_corners(cs[:, :sh, :sw], ph, pw)
        else:
            raise ValueError(f"rope2d_normalized_by_hw={mode!r}: expected 0, 1 or 2")
        out.append(t.reshape(2, ph * pw, -1))
    return np.concatenate(out, 1).astype(np.float32)


def _resize_align_corners(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of axes 1, 2 with align_corners=True (float32 arithmetic). x: (2, H, W, c)."""

    def coords(n_out, n_in):
        s = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        p = np.arange(n_out, dtype=np.float32) * np.float32(s)
        i0 = np.minimum(np.floor(p).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (p - i0).astype(np.float32)

    r0, r1, fr = coords(h, x.shape[1])
    c0, c1, fc = coords(w, x.shape[2])
    top = x[:, r0][:, :, c0] * (1 - fc)[None, None, :, None] + x[:, r0][:, :, c1] * fc[None, None, :, None]
    bot = x[:, r1][:, :, c0] * (1 - fc)[None, None, :, None] + x[:, r1][:, :, c1] * fc[None, None, :, None]
    return (top * (1 - fr)[None, :, None, None] + bot * fr[None, :, None, None]).astype(np.float32)


def apply_rope(x: jax.Array, table: jax.Array) -> jax.Array:
    """Rotates consecutive pairs (x[2i], x[2i+1]) by the table's angles, float32.

    x: (B, l, H, c); table: (2, l, c // 2) cos/sin.
    """
    x = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[0][None, :, None], table[1][None, :, None]
    a, b = x[..., 0], x[..., 1]
    y = jnp.stack([cos * a - sin * b, sin * a + cos * b], -1)
    return y.reshape(*y.shape[:-2], -1)


# ---------------------------------------------------------------- attention
def _l2_normalize(x: jax.Array, *, norm_apart: bool = False) -> jax.Array:
    """x / max(|x|, 1e-12) over the last axis, float32. norm_apart: the norm is its own small kernel, so
    the division fuses forward into its consumers (RoPE, the cast, the cache write) instead of into the
    norm's reduction kernel, which on GPU writes the normalised tensor out in float32 (docs/performance.md).
    The same operations either way."""
    x = x.astype(jnp.float32)
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    if norm_apart:
        norm = jax.lax.optimization_barrier(norm)
    return x / jnp.maximum(norm, 1e-12)


class LayerCache(NamedTuple):
    """One layer's view of the whole model's KV cache: k, v (depth, B, L_total, H, c), the stack of
    every layer, and `layer` (int or traced scalar), this layer's row. Passing the stack (not a
    slice) lets the layer write its new keys in place: one dynamic_update_slice of this scale's
    rows, never a copy of the cache."""

    k: jax.Array
    v: jax.Array
    layer: Any


ACTIVATION_AXES = ("batch", "length", "embed")
QKV_AXES = ("batch", "length", "heads", "kv")


class SelfAttention(nn.Module):
    """Self-attention with fused q|k|v (k has no bias), optional cosine attention and 2D RoPE.

    Cosine attention (official `cos_attn`): q and k are l2-normalised and q is multiplied by a
    learned per-head scale exp(min(scale_mul_1H11, log 100)); the softmax scale is then 1.

    __call__(x (B, l, C), rope (2, l, c/2), cache=None)
      training: attends over its own l tokens, block-causal over scales when `scale_lengths`
        (the static token count of each scale) is set; tokens past the scales' total are padding
        (their keys hidden from every query, their outputs unused).
      cache: a LayerCache, with `cache_offset` set: writes this call's keys and values at
        [cache_offset, cache_offset + l) of its layer and attends over everything before that end.
    Returns (y (B, l, C), updated LayerCache or None).
    """

    num_heads: int
    cos_attn: bool = True
    tau: float = 1.0
    dtype: Dtype = jnp.float32
    cache_offset: int | None = None
    scale_lengths: tuple[int, ...] | None = None
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x, rope, cache=None):
        b, l, c_model = x.shape
        h = self.num_heads
        hd = c_model // h
        kernel = self.param(
            "mat_qkv", partitioned(truncated_normal(0.02), ("embed", None, "heads")), (c_model, 3, c_model)
        )
        q_bias = self.param("q_bias", partitioned(nn.initializers.zeros, ("heads",)), (c_model,))
        v_bias = self.param("v_bias", partitioned(nn.initializers.zeros, ("heads",)), (c_model,))
        # out in the compute dtype (the matmul still accumulates in float32), so that the backward pass's two
        # matmuls take a bf16 cotangent: a float32 one would make both float32 GEMMs (docs/performance.md).
        # The bias, norm and RoPE run in float32.
        qkv = jnp.einsum("blc,ctd->bltd", x.astype(self.dtype), kernel.astype(self.dtype))
        qkv = checkpoint_name(qkv, "qkv").astype(jnp.float32)
        q = (qkv[:, :, 0] + q_bias).reshape(b, l, h, hd)
        k = qkv[:, :, 1].reshape(b, l, h, hd)
        v = (qkv[:, :, 2] + v_bias).reshape(b, l, h, hd)
        if self.cos_attn:
            log_mul = self.param(
                "scale_mul_1H11",
                partitioned(nn.initializers.constant(math.log(4.0)), (None, None, None, None)),
                (1, h, 1, 1),
            )
            mul = jnp.exp(jnp.minimum(log_mul.reshape(1, 1, h, 1), LOG_MAX_SCALE_MUL))
            apart = cache is not None  # sampling only: the training step gains nothing by it (docs/performance.md)
            q, k, scale = _l2_normalize(q, norm_apart=apart) * mul, _l2_normalize(k, norm_apart=apart), 1.0
        else:
            scale = 1.0 / math.sqrt(hd) / self.tau
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (nn.with_logical_constraint(t.astype(self.dtype), QKV_AXES) for t in (q, k, v))
        q_ids = kv_ids = None
        if self.scale_lengths is not None and cache is None:
            q_ids = kv_ids = np.repeat(np.arange(len(self.scale_lengths), dtype=np.int32), self.scale_lengths)
            pad = l - len(q_ids)
            if pad < 0:
                raise ValueError(f"SelfAttention: {l} tokens, fewer than the scales' {len(q_ids)}")
            if pad:  # padding after the last scale: its queries see the keys, no query sees its keys
                q_ids = np.r_[q_ids, np.full(pad, q_ids[-1], np.int32)]
                kv_ids = np.r_[kv_ids, np.full(pad, attention_lib.HIDDEN_ID, np.int32)]
        if cache is not None:
            if self.cache_offset is None:
                raise ValueError("SelfAttention: a cache was given but cache_offset is None")
            zero = jnp.zeros((), jnp.int32)
            start = (jnp.asarray(cache.layer, jnp.int32), zero, jnp.int32(self.cache_offset), zero, zero)
            ck = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype)[None], start)
            cv = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype)[None], start)
            # written in place before the prefix is read: with unrolled layers XLA would otherwise fuse the
            # chain of writes into those reads and keep more of the cache live (docs/performance.md)
            ck, cv = jax.lax.optimization_barrier((ck, cv))
            end = self.cache_offset + l
            size = (1, b, end, h, hd)
            k = jax.lax.dynamic_slice(ck, (start[0], zero, zero, zero, zero), size)[0].astype(self.dtype)
            v = jax.lax.dynamic_slice(cv, (start[0], zero, zero, zero, zero), size)[0].astype(self.dtype)
            cache = LayerCache(ck, cv, cache.layer)
        # the cached calls (sampling) are never differentiated: no even-length padding (attention.py)
        out = attention_lib.attention(
            q,
            k,
            v,
            scale=scale,
            q_scales=q_ids,
            kv_scales=kv_ids,
            implementation=self.implementation,
            even_lengths=cache is None,
        )
        out = checkpoint_name(out.reshape(b, l, c_model), "attn_out")
        return dense(c_model, ("heads", "embed"), dtype=self.dtype, name="proj")(out), cache


def text_keys_values(kv, mat_kv, v_bias, num_heads: int, dtype):
    """Cross-attention keys and values of padded text: kv (B, Lt, kv_dim), mat_kv (kv_dim, 2, C),
    v_bias (C,) -> k, v (B, Lt, H, C / H) in `dtype` (projected in it, bias added in float32)."""
    b, lt, _ = kv.shape
    c = mat_kv.shape[-1]
    kvp = jnp.einsum("btc,csd->btsd", kv.astype(dtype), mat_kv.astype(dtype)).astype(jnp.float32)
    k = kvp[:, :, 0].reshape(b, lt, num_heads, c // num_heads).astype(dtype)
    v = (kvp[:, :, 1] + v_bias).reshape(b, lt, num_heads, c // num_heads).astype(dtype)
    return k, v


class CrossAttention(nn.Module):
    """Attention from queries to padded text tokens (k has no bias, never cosine attention).

    pool=False (block cross-attention): q = mat_q(x), x: (B, l, C) -> (B, l, C).
    pool=True (official TextAttentivePool's `ca`): one learned query per head, `mat_q` (1, H, c),
      x is ignored -> (B, 1, C).
    kv: (B, Lt, kv_dim); kv_mask: (B, Lt) bool, True = a real token.
    """

    embed_dim: int
    num_heads: int
    pool: bool = False
    dtype: Dtype = jnp.float32
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x, kv, kv_mask, text_kv=None, differentiated=True):
        """text_kv: (k, v) that `text_keys_values` already made from this layer's params (the sampler
        makes them once for all scales); kv is then unused. differentiated=False (sampling): the
        cuDNN path need not pad odd lengths."""
        c, h = self.embed_dim, self.num_heads
        hd = c // h
        if text_kv is None:
            kernel = self.param(
                "mat_kv",
                partitioned(truncated_normal(0.02), ("text_embed" if self.pool else "embed", None, "heads")),
                (kv.shape[-1], 2, c),
            )
            v_bias = self.param("v_bias", partitioned(nn.initializers.zeros, ("heads",)), (c,))
            text_kv = text_keys_values(kv, kernel, v_bias, h, self.dtype)
        k, v = text_kv
        b = k.shape[0]
        if self.pool:
            mat_q = self.param(
                "mat_q", partitioned(truncated_normal(math.sqrt(1 / c / 3)), (None, None, None)), (1, h, hd)
            )
            q = jnp.broadcast_to(mat_q[None], (b, 1, h, hd)).astype(self.dtype)
        else:
            q = dense(c, ("embed", "heads"), dtype=self.dtype, name="mat_q")(x).reshape(b, -1, h, hd).astype(self.dtype)
        out = attention_lib.attention(
            q,
            k,
            v,
            scale=1.0 / math.sqrt(hd),
            kv_valid=kv_mask,
            implementation=self.implementation,
            even_lengths=differentiated,
        )
        return dense(c, ("heads", "embed"), dtype=self.dtype, name="proj")(out.reshape(b, -1, c))


@jax.checkpoint
def _gelu_keeping_its_input(y):
    """GELU (tanh) whose gradient recomputes tanh from the saved input instead of saving it too."""
    return nn.gelu(y, approximate=True)


class FFN(nn.Module):
    """fc1 -> GELU (tanh) -> fc2. x: (B, L, C) -> (B, L, C)."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x.astype(self.dtype))
        y = checkpoint_name(nn.with_logical_constraint(y, ("batch", "length", "mlp")), "mlp_hidden")
        y = _gelu_keeping_its_input(y)
        return dense(c, ("mlp", "embed"), dtype=self.dtype, name="fc2")(y)
