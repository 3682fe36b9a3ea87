"""BSQ-VAE (tokenizer) configs: the released Infinity tokenizers' architectures, and a tiny one.

usage: get_config('d32') -> ConfigDict; names: d16, d24, d32, d32reg, d64, d56, tiny, tiny_patchify, shapes.

Every released tokenizer (infinity_vae_d{16,24,32,64}.pth, infinity_vae_d32reg.pth) is the same
network -- base_ch 128, ch_mult (1, 2, 4, 4, 4), 2 residual blocks per level, patch 16 -- and
differs only in the latent width d (z_channels = codebook_dim = d bits per token); d32reg is a
second set of d=32 weights (the one the released 2B model's inference script uses).
d56 is the released 8B model's tokenizer (infinity_vae_d56_f8_14_patchify.pth, official vae_type 14 with
apply_spatial_patchify=1): 14 bits per position at patch 8, ch_mult (1, 2, 4, 4); the transformer reads
2x2 blocks of its grid, 56 bits per token (InfinityConfig.apply_spatial_patchify).
'tiny_patchify' is the tiny-patchify fixture's (base_ch 32, ch_mult (1, 1, 1, 1), patch 8, d 8).
'tiny' is the architecture of the test fixtures (base_ch 32, ch_mult all ones, d 32); 'shapes' the
demo's tokenizer for 32x32 shapes images (stride 4, d 8; configs/tokenizer_shapes.py trains it).
"""

from __future__ import annotations

import ml_collections

from infinity_jax.config_util import parse_named_arg

_RELEASED = {  # name -> (d, official checkpoint file)
    "d16": (16, "infinity_vae_d16.pth"),
    "d24": (24, "infinity_vae_d24.pth"),
    "d32": (32, "infinity_vae_d32.pth"),
    "d32reg": (32, "infinity_vae_d32reg.pth"),
    "d64": (64, "infinity_vae_d64.pth"),
}
# released patchify tokenizers (patch 8, ch_mult (1, 2, 4, 4)): name -> (d, official checkpoint file)
_RELEASED_PATCHIFY = {"d56": (14, "infinity_vae_d56_f8_14_patchify.pth")}
NAMES = tuple(_RELEASED) + tuple(_RELEASED_PATCHIFY) + ("tiny", "tiny_patchify", "shapes")


def released_for(codebook_dim: int, apply_spatial_patchify: int = 0) -> str | None:
    """The released tokenizer a transformer with `codebook_dim` bits per token reads (its model config's
    codebook_dim and apply_spatial_patchify): d{d} at patch 16, else under patchify the patch-8 one with
    d / 4 bits (d56 for 56); None when no released tokenizer fits."""
    if apply_spatial_patchify:
        return next((n for n, (d, _) in _RELEASED_PATCHIFY.items() if 4 * d == int(codebook_dim)), None)
    name = f"d{int(codebook_dim)}"
    return name if name in _RELEASED else None


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name, _ = parse_named_arg(arg, "bsq_vae", names=NAMES, default="d32")
    c = ml_collections.ConfigDict()
    c.name = name
    c.base_ch = 128
    c.ch_mult = (1, 2, 4, 4, 4)
    c.num_res_blocks = 2
    c.patch_size = 16  # spatial stride of the latent grid
    c.in_channels = 3
    c.codebook_dim = 32  # d: bits per token
    c.z_channels = 32  # encoder output width; equals codebook_dim (no quantizer projections)
    c.dtype = "float32"  # compute dtype; params are always fp32
    c.checkpoint = ""  # the official weights' file name (for reference)
    if name == "tiny":
        c.base_ch = 32
        c.ch_mult = (1, 1, 1, 1, 1)
    elif name == "tiny_patchify":
        c.base_ch, c.ch_mult, c.patch_size = 32, (1, 1, 1, 1), 8
        c.codebook_dim = c.z_channels = 8
    elif name in _RELEASED_PATCHIFY:
        c.ch_mult, c.patch_size = (1, 2, 4, 4), 8
        c.codebook_dim = c.z_channels = _RELEASED_PATCHIFY[name][0]
        c.checkpoint = _RELEASED_PATCHIFY[name][1]
    elif name == "shapes":
        c.base_ch, c.ch_mult, c.num_res_blocks, c.patch_size = 32, (1, 1, 2), 1, 4
        c.codebook_dim = c.z_channels = 8
    else:
        c.codebook_dim = c.z_channels = _RELEASED[name][0]
        c.checkpoint = _RELEASED[name][1]
    return c
