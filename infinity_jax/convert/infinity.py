"""Official Infinity transformer state dict <-> our params (infinity_jax/model/transformer.py), exactly.

The table is built from our abstract param tree by renaming paths:
  blocks_{i}/...            block_chunks.{i // n}.module.{i % n}....   (n = depth / block_chunks;
                            `blocks.{i}....` when block_chunks = 1)
  text_proj_for_ca_{0,2}    text_proj_for_ca.{0,2}       (the official nn.Sequential indices)
  shared_ada_lin, .../ada_lin   shared_ada_lin.1, ....ada_lin.1   (behind an nn.SiLU)
  lvl_embed/embedding       lvl_embed.weight;  Dense kernels (in, out) <-> weight (out, in)
  sa/mat_qkv (C, 3, C)      sa.mat_qkv.weight (3C, C);  ca/mat_kv (Ckv, 2, C)  <->  ca.mat_kv.weight (2C, Ckv)
With scan_layers the stacked `blocks/...` params are split per layer first (and stacked back).
The official state dicts also hold all-zero `zero_k_bias` buffers (C,) in every attention: checked
to be zero on import, written on export. Loading is strict (one error lists every missing,
unexpected and mis-shaped key); bf16/fp16 checkpoints load (upcast exactly to fp32).

The command is `infinity-jax convert infinity` (infinity_jax/commands/convert.py).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping

import numpy as np

from infinity_jax import config_util, fileio
from infinity_jax.convert import common
from infinity_jax.convert.torch_io import as_numpy, check_state_dict
from infinity_jax.errors import UsageError, one_line
from infinity_jax.model.transformer import InfinityConfig, abstract_params


def _split_to_flax(w: np.ndarray, n: int) -> np.ndarray:
    """torch (n*C, Cin) -> ours (Cin, n, C)."""
    w = np.asarray(w)
    return np.ascontiguousarray(w.T.reshape(w.shape[1], n, w.shape[0] // n))


def _split_to_torch(k: np.ndarray) -> np.ndarray:
    """ours (Cin, n, C) -> torch (n*C, Cin)."""
    k = np.asarray(k)
    return np.ascontiguousarray(k.reshape(k.shape[0], -1).T)


# layout -> (to flax(w, our_shape), to torch(k), torch shape from our shape)
LAYOUTS = {
    "dense": (lambda w, s: common.dense_to_flax(w), common.dense_to_torch, lambda s: (s[1], s[0])),
    "split": (lambda w, s: _split_to_flax(w, s[1]), _split_to_torch, lambda s: (s[1] * s[2], s[0])),
    "same": (lambda w, s: np.asarray(w), np.asarray, tuple),
}


def _model_config(config):
    if isinstance(config, InfinityConfig):
        return config
    if isinstance(config, str):
        config = load_config(config)
    return InfinityConfig.from_dict(config.model if hasattr(config, "model") else config)


def load_config(spec: str):
    """'infinity_2b' (a configs/infinity.py argument) or any config spec (name:arg, file.py[:arg]) -> ConfigDict."""
    return config_util.load_config(spec, module="infinity")


def official_block_prefix(i: int, depth: int, block_chunks: int) -> str:
    if block_chunks <= 1:
        return f"blocks.{i}"
    n = depth // block_chunks
    return f"block_chunks.{i // n}.module.{i % n}"


def _official_key(path: str, depth: int, block_chunks: int) -> tuple[str, str]:
    """Our unstacked '/'-path -> (official key, layout)."""
    parts = path.split("/")
    m = re.fullmatch(r"blocks_(\d+)", parts[0])
    prefix = []
    if m:
        prefix, parts = [official_block_prefix(int(m.group(1)), depth, block_chunks)], parts[1:]
    leaf = parts[-1]
    if leaf in ("mat_qkv", "mat_kv"):
        return ".".join(prefix + parts + ["weight"]), "split"
    layout = "dense" if leaf == "kernel" else "same"
    if parts[0].startswith("text_proj_for_ca_"):
        parts = ["text_proj_for_ca", parts[0].rsplit("_", 1)[1]] + parts[1:]
    parts = [p + ".1" if p in ("shared_ada_lin", "ada_lin") else p for p in parts]
    parts[-1] = common.TORCH_LEAF.get(leaf, leaf)
    return ".".join(prefix + parts), layout


def _unstack(flat: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """Scanned 'blocks/...' (depth, ...) -> 'blocks_{i}/...'."""
    out = {}
    for k, v in flat.items():
        if k.startswith("blocks/"):
            v = np.asarray(v)
            if v.shape[0] != depth:
                raise ValueError(f"{k}: stacked params have {v.shape[0]} layers; expected depth {depth}")
            for i in range(depth):
                out[f"blocks_{i}/" + k[len("blocks/") :]] = v[i]
        else:
            out[k] = v
    return out


def _stack(flat: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """'blocks_{i}/...' -> scanned 'blocks/...' (depth, ...)."""
    out, per = {}, {}
    for k, v in flat.items():
        m = re.match(r"blocks_(\d+)/(.*)", k)
        if m:
            per.setdefault(m.group(2), {})[int(m.group(1))] = v
        else:
            out[k] = v
    for name, layers in per.items():
        out["blocks/" + name] = np.stack([layers[i] for i in range(depth)])
    return out


@functools.lru_cache(maxsize=16)
def _table(cfg) -> tuple[tuple[str, str, str, tuple[int, ...]], ...]:
    """((official key, our unstacked path, layout, our shape), ...) for a model config."""
    if cfg.extension:
        raise ValueError(
            f"model.extension={cfg.extension!r}: the official Infinity has no weights for this "
            "non-official addition, so this model has no official state dict; expected "
            "model.extension='' to convert"
        )
    flat = fileio.flatten(abstract_params(dataclasses.replace(cfg, scan_layers=False)))
    rows = []
    for path, leaf in sorted(flat.items()):
        key, layout = _official_key(path, cfg.depth, cfg.block_chunks)
        rows.append((key, path, layout, tuple(leaf.shape)))
    return tuple(rows)


def zero_k_bias_keys(cfg) -> dict[str, tuple[int, ...]]:
    """The official all-zero buffers: one per attention (text pool, and sa/ca of every block)."""
    c = cfg.embed_dim
    keys = {"text_proj_for_sos.ca.zero_k_bias": (c,)}
    for i in range(cfg.depth):
        p = official_block_prefix(i, cfg.depth, cfg.block_chunks)
        keys[f"{p}.sa.zero_k_bias"] = (c,)
        keys[f"{p}.ca.zero_k_bias"] = (c,)
    return keys


def expected_state_dict_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every official key (parameters and zero_k_bias buffers) with its shape."""
    cfg = _model_config(config)
    shapes = {key: LAYOUTS[layout][2](shape) for key, _, layout, shape in _table(cfg)}
    shapes.update(zero_k_bias_keys(cfg))
    return shapes


def torch_to_params(state_dict: Mapping[str, Any], config, dtype=np.float32) -> dict[str, Any]:
    """Official state dict (numpy or torch values) -> our param tree (numpy, `dtype`), strictly checked."""
    cfg = _model_config(config)
    sd = {k: as_numpy(v) for k, v in state_dict.items()}
    check_state_dict(sd, expected_state_dict_shapes(cfg), "Infinity transformer")
    nonzero = [k for k in zero_k_bias_keys(cfg) if np.any(np.asarray(sd[k], np.float32) != 0)]
    if nonzero:
        raise ValueError(
            f"zero_k_bias buffers must be all zero (the official model ignores nothing else there); "
            f"non-zero in {nonzero[:5]}{' ...' if len(nonzero) > 5 else ''}"
        )
    flat = {}
    for key, path, layout, shape in _table(cfg):
        a = common.cast_exact(sd[key], dtype, key) if dtype is not None else np.asarray(sd[key])
        flat[path] = LAYOUTS[layout][0](a, shape)
    if cfg.scan_layers:
        flat = _stack(flat, cfg.depth)
    return fileio.unflatten(flat)


def params_to_torch(params: Mapping[str, Any], config, dtype=None) -> dict[str, np.ndarray]:
    """Our params (boxed or not; scanned or not, as the config) -> the official state dict (numpy).

    Same keys and shapes as the official model's state_dict(), zero_k_bias buffers included;
    `dtype` (e.g. 'bfloat16') casts every array, None keeps the params' dtype.
    """
    cfg = _model_config(config)
    flat = {k: as_numpy(v) for k, v in fileio.flatten(params).items()}
    if cfg.scan_layers:
        flat = _unstack(flat, cfg.depth)
    table = _table(cfg)
    expected = {path: shape for _, path, _, shape in table}
    check_state_dict(flat, expected, "our Infinity params")
    target = None if dtype is None else _np_dtype(dtype)
    sd = {}
    for key, path, layout, _ in table:
        a = LAYOUTS[layout][1](flat[path])
        sd[key] = a if target is None else a.astype(target)
    ref_dtype = next(iter(sd.values())).dtype
    for key, shape in zero_k_bias_keys(cfg).items():
        sd[key] = np.zeros(shape, ref_dtype)
    return sd


def _np_dtype(name) -> np.dtype:
    return common.float_dtype(name, "dtype")


def official_model_config(config, where: str, fix: str, *, problem: str = "", verb: str = "has"):
    """The InfinityConfig of `config` (a spec, a ConfigDict with a `model` section or an InfinityConfig)
    when it is the official architecture; otherwise a one-line UsageError naming `where`: a config that
    cannot be built (`problem` prefixes the reason), or one with a non-official `model.extension`
    (model/extensions.py), which no official state dict has weights for (`fix` says what to do)."""
    try:
        cfg = _model_config(config)
    except (ValueError, TypeError) as e:  # an unknown name or option, or sizes that do not fit together
        raise UsageError(f"{where}: {problem}{one_line(e)}") from e
    if cfg.extension:
        raise UsageError(
            f"{where} {verb} model.extension={cfg.extension!r}, ours (model/extensions.py): the "
            f"official Infinity classes have no weights for it, so there is no official state dict; "
            f"{fix}"
        )
    return cfg
