"""LPIPS (Zhang et al. 2018, arXiv 1801.03924), the 'vgg' variant VQGAN-style tokenizers train with.

    lpips = LPIPS(dtype=jnp.bfloat16)
    d = lpips.apply({'params': params}, x, y)       # x, y: (B, H, W, 3) in [-1, 1] -> d: (B,) fp32

The network (as the `lpips` package, version 0.1, and taming-transformers compute it):
  1. scale: (x - SHIFT) / SCALE per channel (ImageNet statistics mapped to inputs in [-1, 1]);
  2. torchvision's VGG16 `features` (13 3x3 convs + ReLU, 2x2 max-pools that floor odd sizes);
     the ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 wide);
  3. each one unit-normalised over channels, f / (sqrt(sum f^2) + 1e-10), for x and y;
  4. the squared difference through a learned 1x1 conv to one channel ('lin', no bias, weights
     non-negative), averaged over space;
  5. summed over the 5 layers.
The VGG convs compute in `dtype`; the normalisation, the lin layers and the sum are fp32.

Param tree: 'features_{i}/kernel|bias' is torchvision's `features.{i}.weight|bias` (i = the conv's
index in `features`, HWIO), 'lin_{k}/kernel' (1, 1, C_k, 1) is LPIPS's `lin{k}.model.1.weight`.
infinity_jax/convert/lpips.py loads both from local files. The params are never trained.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# (torchvision `features` index of each conv, width) per block; a 2x2 max-pool starts blocks 2-5,
# and each block's last ReLU is an LPIPS layer
VGG16_BLOCKS = (
    ((0, 64), (2, 64)),
    ((5, 128), (7, 128)),
    ((10, 256), (12, 256), (14, 256)),
    ((17, 512), (19, 512), (21, 512)),
    ((24, 512), (26, 512), (28, 512)),
)
CHANNELS = tuple(block[-1][1] for block in VGG16_BLOCKS)  # (64, 128, 256, 512, 512)
# the LPIPS ScalingLayer: ImageNet mean/std of [0, 1] pixels, rewritten for pixels in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


def unit_normalize(f: jax.Array) -> jax.Array:
    """f / (sqrt(sum over channels f^2) + 1e-10), in fp32. f: (..., C).

    The sum is floored at 1e-30 inside the sqrt: same value (those f are below 1e-15), but no 0/0
    in the gradient at positions whose channels are all zero (or underflow to zero)."""
    f = f.astype(jnp.float32)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(f), axis=-1, keepdims=True), 1e-30))
    return f / (norm + NORM_EPS)


class LPIPS(nn.Module):
    """(x, y) images (B, H, W, 3) in [-1, 1] -> distance (B,) fp32; H, W >= 16 (four 2x2 pools)."""

    dtype: Any = jnp.float32

    def setup(self):
        self.convs = [
            [
                nn.Conv(
                    width,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    name=f"features_{index}",
                )
                for index, width in block
            ]
            for block in VGG16_BLOCKS
        ]
        self.lins = [
            nn.Conv(1, (1, 1), use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32, name=f"lin_{k}")
            for k in range(len(VGG16_BLOCKS))
        ]

    def features(self, x):
        """x: (B, H, W, 3) in [-1, 1] -> the 5 unit-normalised taps [(B, H/2^k, W/2^k, C_k) fp32]."""
        h = ((x.astype(jnp.float32) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)).astype(self.dtype)
        taps = []
        for k, block in enumerate(self.convs):
            if k:
                h = nn.max_pool(h, (2, 2), strides=(2, 2))  # VALID: floors odd sizes, as torch's MaxPool2d
            for conv in block:
                h = nn.relu(conv(h))
            taps.append(unit_normalize(h))
        return taps

    def __call__(self, x, y):
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS inputs {x.shape} and {y.shape}: expected two (B, H, W, 3) images of one shape")
        if min(x.shape[1:3]) < 16:
            raise ValueError(f"LPIPS inputs {x.shape}: H and W must be >= 16 (VGG16 pools 4 times)")
        # x and y in separate passes, not one batch: no backward pass through the target's features
        total = 0.0
        for lin, fx, fy in zip(self.lins, self.features(x), self.features(y)):
            total = total + jnp.mean(lin(jnp.square(fx - fy)), axis=(1, 2, 3))
        return total


def abstract_params(dtype: Any = jnp.float32) -> dict:
    """The param tree's shapes (jax.ShapeDtypeStruct leaves), without computing an init."""
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    return jax.eval_shape(lambda a: LPIPS(dtype).init(jax.random.key(0), a, a), x)["params"]
