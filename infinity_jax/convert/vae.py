"""Official BSQ-VAE state dict <-> our params (infinity_jax/tokenizer/vae.py), exactly, both ways.

The table is built from our abstract param tree: 'encoder/down_1/block_0/conv1/conv/kernel' is
'encoder.down.1.block.0.conv1.conv.weight' (conv kernels OIHW <-> HWIO), GroupNorm 'scale' is
"weight". The official state dict also holds one buffer, `quantizer.lfq.mask` (int64 powers of
two, d of them; 2**63 wraps to -2**63 for d = 64, as torch computes it), twice (also as
`quantize.lfq.mask`: the official class aliases its quantizer): checked on import, written on
export. Loading is strict: one error lists every missing, unexpected and
mis-shaped key. bf16/fp16 state dicts load (upcast exactly to fp32 params).

Also accepted on import: the older key style that the official loader renames (`conv_in.weight`
for `conv_in.conv.weight`, `norm1.weight` for `norm1.norm.weight`).

The command is `infinity-jax convert vae` (infinity_jax/commands/convert.py).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from infinity_jax import config_util, fileio
from infinity_jax.convert import common
from infinity_jax.convert.torch_io import as_numpy, check_state_dict, load_state_dict
from infinity_jax.tokenizer import vae as vae_lib

# The buffer appears twice: the official AutoEncoder aliases its quantizer as `quantize` too.
MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")
_RULES = (
    (r"(?<![^/])(down|up)_(\d+)/block_(\d+)(?=/)", r"\1.\2.block.\3"),  # level lists: down.1.block.0
    (r"(?<![^/])(down|up)_(\d+)(?=/)", r"\1.\2"),  # down.0.downsample
)


def _config(config):
    if isinstance(config, str):
        return load_config(config)
    return config


def load_config(spec: str):
    """'d32' (a configs/bsq_vae.py argument) or any config spec (name:arg, file.py[:arg]) -> ConfigDict."""
    return config_util.load_config(spec, module="bsq_vae")


def released_for(codebook_dim: int, apply_spatial_patchify: int = 0) -> str | None:
    """The configs/bsq_vae.py name of the released tokenizer a transformer with these model fields reads
    (d32 for 32 bits; d56 for 56 under apply_spatial_patchify), or None (configs/bsq_vae.py released_for)."""
    return config_util.load_module("bsq_vae").released_for(int(codebook_dim), int(apply_spatial_patchify))


def quantizer_mask(d: int) -> np.ndarray:
    """The official `lfq.mask` buffer: 2**(d-1), ..., 2, 1 as int64 (wrapping like torch at d = 64)."""
    return (np.uint64(1) << np.arange(d - 1, -1, -1, dtype=np.uint64)).view(np.int64)


def key_table(config) -> dict[str, tuple[str, str, tuple[int, ...], tuple[int, ...]]]:
    """official key -> (our param path, layout name, official shape, our shape), for every parameter."""
    m = vae_lib.from_config(_config(config), dtype="float32")
    arch = (m.base_ch, m.ch_mult, m.num_res_blocks, m.z_channels, m.codebook_dim, m.patch_size, m.in_channels)
    return dict(_key_table(arch))


@functools.lru_cache(maxsize=16)
def _key_table(arch: tuple) -> tuple:
    fields = ("base_ch", "ch_mult", "num_res_blocks", "z_channels", "codebook_dim", "patch_size", "in_channels")
    abstract = fileio.flatten(vae_lib.abstract_params(vae_lib.BSQVAE(**dict(zip(fields, arch)))))
    table = {}
    for path, leaf in abstract.items():
        layout = "conv" if path.endswith("/kernel") else "same"
        torch_shape = tuple(int(n) for n in common.LAYOUTS[layout][2](leaf.shape))
        table[common.torch_key(path, _RULES)] = (path, layout, torch_shape, tuple(leaf.shape))
    return tuple(table.items())


def expected_state_dict_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every key of the official state dict with its shape (parameters and the mask buffer)."""
    config = _config(config)
    shapes = {k: row[2] for k, row in key_table(config).items()}
    shapes.update({k: (int(config.codebook_dim),) for k in MASK_KEYS})
    return shapes


def _accept_old_names(sd: dict[str, np.ndarray], expected: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Renames `x.weight` -> `x.conv.weight` / `x.norm.weight` where only that form is expected."""
    out = {}
    for k, v in sd.items():
        if k not in expected:
            head, _, leaf = k.rpartition(".")
            cands = [f"{head}.{w}.{leaf}" for w in ("conv", "norm") if f"{head}.{w}.{leaf}" in expected]
            if len(cands) == 1 and cands[0] not in sd:
                k = cands[0]
        out[k] = v
    return out


def torch_to_params(state_dict: Mapping[str, Any], config, dtype=np.float32) -> dict[str, Any]:
    """Official VAE state dict (numpy arrays or torch tensors) -> our params tree (numpy, fp32).

    config: a configs/bsq_vae.py ConfigDict or its name. Raises ValueError listing every bad key.
    """
    config = _config(config)
    what = f"BSQ-VAE state dict (config {config.get('name', '?')!r})"
    table = key_table(config)
    expected = expected_state_dict_shapes(config)
    sd = _accept_old_names({k: as_numpy(v) for k, v in state_dict.items()}, expected)
    check_state_dict(sd, expected, what)
    want = quantizer_mask(int(config.codebook_dim))
    for k in MASK_KEYS:
        if not np.array_equal(sd[k].astype(np.int64), want):
            raise ValueError(
                f"{what}: {k} = {sd[k][:4]}...; expected the powers of two {want[:4]}... "
                f"(is d = {config.codebook_dim} right?)"
            )
    flat = {}
    for key, (path, layout, _, _) in table.items():
        flat[path] = common.cast_exact(common.LAYOUTS[layout][0](sd[key]), dtype, f"{what}: {key}")
    return fileio.unflatten(flat)


def params_to_torch(params: Mapping[str, Any], config, dtype=None) -> dict[str, np.ndarray]:
    """Our params tree -> the official state dict (numpy; official names, shapes; the mask buffer).

    dtype: None keeps the params' dtype (fp32: bit-identical round trip); e.g. 'bfloat16' rounds.
    """
    config = _config(config)
    table = key_table(config)
    flat = {k: as_numpy(v) for k, v in fileio.flatten(params).items()}
    check_state_dict(
        flat,
        {path: ours for path, _, _, ours in table.values()},
        f"BSQ-VAE params (config {config.get('name', '?')!r})",
    )
    target = None if dtype is None else _np_dtype(dtype)
    sd = {}
    for key, (path, layout, _, _) in table.items():
        a = common.LAYOUTS[layout][1](flat[path])
        sd[key] = a if target is None else a.astype(target)
    sd.update({k: quantizer_mask(int(config.codebook_dim)) for k in MASK_KEYS})
    return sd


def _np_dtype(name) -> np.dtype:
    return common.float_dtype(name, "dtype")


def load_official_state_dict(path: str, key: str | None = None) -> dict[str, np.ndarray]:
    """A VAE state dict from a file; official .pth checkpoints keep it under 'vae' (the loader's default)."""
    if key is not None or not path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return load_state_dict(path, key=key)
    try:
        return load_state_dict(path, key="vae")
    except (KeyError, TypeError):  # no 'vae' entry (or a flat dict of tensors): read it as it is
        return load_state_dict(path)
