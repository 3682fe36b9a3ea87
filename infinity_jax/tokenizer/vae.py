"""The BSQ-VAE of Infinity (encoder, decoder, multi-scale bit tokenizer) in flax.linen.

Architecture (the official one, channels-last): a conv stem, `len(ch_mult)` levels of
`num_res_blocks` residual blocks each (GroupNorm -> swish -> 3x3 conv, twice), a stride-2
downsample after each of the first log2(patch_size) levels, two middle residual blocks, then
GroupNorm -> swish -> 3x3 conv to `z_channels`. The decoder mirrors it with one more residual
block per level and nearest-neighbour x2 upsampling + 3x3 conv. No attention (the released
tokenizers use none).

The param tree mirrors the official module tree (`encoder/down_1/block_0/conv1/conv/kernel` is
`encoder.down.1.block.0.conv1.conv.weight`), so infinity_jax/convert/vae.py is a rename plus
kernel transposes. Params are fp32; `dtype` sets the compute dtype; GroupNorm statistics are
always fp32; `encode` and `decode` return fp32.

Shapes: image (B, H, W, 3) in [-1, 1], H and W multiples of `patch_size`;
latent (B, H/patch_size, W/patch_size, z_channels).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from infinity_jax.tokenizer import bsq

# torch's default conv init (kaiming-uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")


def num_groups(channels: int) -> int:
    """GroupNorm groups for a width, as the official Normalize picks them: 32, else 24."""
    for g in (32, 24):
        if channels % g == 0:
            return g
    raise ValueError(f"GroupNorm over {channels} channels: the official VAE needs a multiple of 32 or 24")


class Conv(nn.Module):
    """A 2D conv (the official `Conv` wrapper: params under `<name>/conv/`). x: (B, H, W, C_in).

    padding: 'same' (k//2 on every side) or 'down' (one row/column at the bottom/right only,
    the official stride-2 downsample's asymmetric zero pad).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: str = "same"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        pad = ((0, 1), (0, 1)) if self.padding == "down" else ((k // 2, k // 2),) * 2
        return nn.Conv(
            self.features,
            (k, k),
            strides=self.stride,
            padding=pad,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(_KERNEL_INIT, _CONV_AXES),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
            name="conv",
        )(x)


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm(groups, C, eps=1e-6) with fp32 statistics (params under `<name>/norm/`).

    x: (B, H, W, C) -> same shape, in x's dtype.
    """

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        g = num_groups(c)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,), jnp.float32)
        xf = x.astype(jnp.float32).reshape(*x.shape[:-1], g, c // g)
        axes = tuple(range(1, xf.ndim - 2)) + (xf.ndim - 1,)  # spatial and within-group channels
        mean = xf.mean(axes, keepdims=True)
        var = jnp.square(xf - mean).mean(axes, keepdims=True)  # biased, two-pass (as torch)
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (y * scale + bias).astype(x.dtype)


class Normalize(nn.Module):
    """The official `Normalize` wrapper: a GroupNorm named `norm`."""

    @nn.compact
    def __call__(self, x):
        return GroupNorm(name="norm")(x)


class ResnetBlock(nn.Module):
    """x + conv2(swish(norm2(conv1(swish(norm1(x)))))), with a 1x1 `nin_shortcut` when widths differ.

    x: (B, H, W, C_in) -> (B, H, W, features).
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = Conv(self.features, dtype=self.dtype, name="conv1")(nn.swish(Normalize(name="norm1")(x)))
        h = Conv(self.features, dtype=self.dtype, name="conv2")(nn.swish(Normalize(name="norm2")(h)))
        if x.shape[-1] != self.features:
            x = Conv(self.features, kernel_size=1, dtype=self.dtype, name="nin_shortcut")(x)
        return x + h


class Downsample(nn.Module):
    """Zero pad bottom/right by one, 3x3 conv of stride 2. x: (B, H, W, C) -> (B, H/2, W/2, C)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return Conv(x.shape[-1], stride=2, padding="down", dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv. x: (B, H, W, C) -> (B, 2H, 2W, C)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return Conv(x.shape[-1], dtype=self.dtype, name="conv")(x)


class _Level(nn.Module):
    """One resolution level: residual blocks `block_i`, then an optional resampler."""

    features: int
    num_blocks: int
    resample: str | None  # None, 'down' or 'up'
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_blocks):
            x = ResnetBlock(self.features, dtype=self.dtype, name=f"block_{i}")(x)
        if self.resample == "down":
            x = Downsample(dtype=self.dtype, name="downsample")(x)
        elif self.resample == "up":
            x = Upsample(dtype=self.dtype, name="upsample")(x)
        return x


class _Mid(nn.Module):
    """The two middle residual blocks (`block_1`, `block_2`, official names)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = ResnetBlock(c, dtype=self.dtype, name="block_1")(x)
        return ResnetBlock(c, dtype=self.dtype, name="block_2")(x)


def _num_resamples(ch_mult: Sequence[int], patch_size: int) -> int:
    n = int(round(math.log2(patch_size)))
    if 2**n != patch_size or len(ch_mult) <= n:
        raise ValueError(
            f"patch_size={patch_size} with ch_mult={tuple(ch_mult)}: expected a power of two "
            f"with len(ch_mult) > log2(patch_size) (e.g. 16 with 5 levels, 8 with 4)"
        )
    return n


class Encoder(nn.Module):
    """image (B, H, W, in_channels) -> (B, H/patch_size, W/patch_size, z_channels), compute dtype."""

    base_ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    patch_size: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n_down = _num_resamples(self.ch_mult, self.patch_size)
        h = Conv(self.base_ch, dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        for i, m in enumerate(self.ch_mult):
            h = _Level(
                self.base_ch * m,
                self.num_res_blocks,
                "down" if i < n_down else None,
                dtype=self.dtype,
                name=f"down_{i}",
            )(h)
        h = _Mid(dtype=self.dtype, name="mid")(h)
        h = nn.swish(Normalize(name="norm_out")(h))
        return Conv(self.z_channels, dtype=self.dtype, name="conv_out")(h)


class Decoder(nn.Module):
    """latent (B, h, w, z_channels) -> (B, h*patch_size, w*patch_size, out_channels), unclamped."""

    base_ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    out_channels: int = 3
    patch_size: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        n_up = _num_resamples(self.ch_mult, self.patch_size)
        h = Conv(self.base_ch * self.ch_mult[-1], dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
        h = _Mid(dtype=self.dtype, name="mid")(h)
        for i in reversed(range(len(self.ch_mult))):  # coarse to fine; `up_i` keeps the official index
            h = _Level(
                self.base_ch * self.ch_mult[i],
                self.num_res_blocks + 1,
                "up" if 1 <= i <= n_up else None,
                dtype=self.dtype,
                name=f"up_{i}",
            )(h)
        h = nn.swish(Normalize(name="norm_out")(h))
        return Conv(self.out_channels, dtype=self.dtype, name="conv_out")(h)


class BSQVAE(nn.Module):
    """Encoder + decoder; the quantizer (no params) lives in infinity_jax/tokenizer/bsq.py.

    Methods (call through `apply(..., method=...)`; `__call__` is the encode -> decode pass used
    by `init`):
      encode(image (B,H,W,3)) -> raw latent (B,h,w,d) fp32, before quantization
      decode(latent (B,h,w,d)) -> image (B,H,W,3) fp32, clamped to [-1, 1]
      tokenize(image, schedule) -> bits per scale [(B,h_k,w_k,d) uint8], coarse to fine
      decode_bits(bits, schedule) -> image (B,H,W,3)
    """

    base_ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 32
    codebook_dim: int = 32
    patch_size: int = 16
    in_channels: int = 3
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = Encoder(
            self.base_ch, tuple(self.ch_mult), self.num_res_blocks, self.z_channels, self.patch_size, dtype=self.dtype
        )
        self.decoder = Decoder(
            self.base_ch, tuple(self.ch_mult), self.num_res_blocks, self.in_channels, self.patch_size, dtype=self.dtype
        )

    def encode(self, image):
        """image: (B, H, W, C) in [-1, 1] -> latent (B, H/p, W/p, z_channels) fp32."""
        if image.ndim != 4 or image.shape[-1] != self.in_channels:
            raise ValueError(f"encode: image of shape {image.shape}; expected (B, H, W, {self.in_channels}) NHWC")
        if image.shape[1] % self.patch_size or image.shape[2] % self.patch_size:
            raise ValueError(
                f"encode: image size {image.shape[1]}x{image.shape[2]} is not a multiple of the "
                f"patch size {self.patch_size}"
            )
        return self.encoder(image).astype(jnp.float32)

    def decode(self, latent):
        """latent: (B, h, w, z_channels) -> image (B, h*p, w*p, C) fp32 in [-1, 1]."""
        if latent.ndim != 4 or latent.shape[-1] != self.z_channels:
            raise ValueError(f"decode: latent of shape {latent.shape}; expected (B, h, w, {self.z_channels})")
        return jnp.clip(self.decoder(latent).astype(jnp.float32), -1.0, 1.0)

    def tokenize(self, image, schedule):
        """image (B,H,W,C) -> bits per scale, coarse to fine: [(B, h_k, w_k, d)], 1 = positive."""
        self._check_quantizable()
        return list(bsq.multiscale_quantize(self.encode(image), schedule).bits)

    def decode_bits(self, bits, schedule):
        """bits per scale [(B, h_k, w_k, d)] -> image (B, H, W, C) in [-1, 1]."""
        self._check_quantizable()
        return self.decode(bsq.bits_to_latent(bits, schedule))

    def _check_quantizable(self):
        if self.z_channels != self.codebook_dim:
            raise ValueError(
                f"z_channels={self.z_channels} != codebook_dim={self.codebook_dim}: the BSQ "
                "quantizer here has no projections (none of the released tokenizers does)"
            )

    def __call__(self, image):
        return self.decode(self.encode(image))


def from_config(config, dtype: Any = None) -> BSQVAE:
    """A BSQVAE from a configs/bsq_vae.py ConfigDict (or any object with the same fields)."""
    return BSQVAE(
        base_ch=int(config.base_ch),
        ch_mult=tuple(int(m) for m in config.ch_mult),
        num_res_blocks=int(config.num_res_blocks),
        z_channels=int(config.z_channels),
        codebook_dim=int(config.codebook_dim),
        patch_size=int(config.patch_size),
        in_channels=int(config.get("in_channels", 3)),
        dtype=jnp.dtype(dtype if dtype is not None else config.get("dtype", "float32")),
    )


def abstract_params(model: BSQVAE, image_hw: tuple[int, int] | None = None):
    """The boxed (logically annotated) param tree as ShapeDtypeStructs, without allocating anything."""
    hw = image_hw or (model.patch_size, model.patch_size)
    x = jax.ShapeDtypeStruct((1, *hw, model.in_channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


def init_params(model: BSQVAE, rng: jax.Array):
    """Fresh (boxed) params; `nn.unbox` them for apply without sharding."""
    x = jnp.zeros((1, model.patch_size, model.patch_size, model.in_channels), jnp.float32)
    return model.init(rng, x)["params"]
