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

The command checks its files before converting: bad input (a missing or unreadable --in, keys that do
not fit the config, an --out that exists: --overwrite replaces it) is one line, exit status 2, and
writes nothing; --out appears atomically.

usage:
  infinity-jax convert-infinity --in infinity_2b_reg.pth --config infinity_2b --out infinity_2b.npz
  infinity-jax convert-infinity --to-torch --in infinity_2b.npz --config infinity_2b --out back.pth [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Any, Mapping

import numpy as np

from infinity_jax.convert import common
from infinity_jax.convert.torch_io import check_state_dict, load_state_dict, save_state_dict
from infinity_jax.errors import UsageError


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
    from infinity_jax.model.transformer import InfinityConfig
    if isinstance(config, InfinityConfig):
        return config
    if isinstance(config, str):
        config = load_config(config)
    return InfinityConfig.from_dict(config.model if hasattr(config, "model") else config)


def load_config(spec: str):
    """'infinity_2b' (a name in configs/infinity.py) or 'path/to/file.py[:arg]' -> ConfigDict."""
    from infinity_jax import config_util
    if not (spec.endswith(".py") or ":" in spec):
        spec = f"infinity:{spec}"  # a bare name: configs/infinity.py of this checkout, from any working directory
    return config_util.load_config(spec)  # a missing file is a FileNotFoundError naming it


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
                out[f"blocks_{i}/" + k[len("blocks/"):]] = v[i]
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
    import dataclasses
    from infinity_jax.model.transformer import abstract_params
    if cfg.abs_pos_embed:
        raise ValueError("model.abs_pos_embed=True: the official Infinity has no absolute-place weights, so this "
                         "model has no official state dict; expected abs_pos_embed=False to convert")
    flat = common.flatten(abstract_params(dataclasses.replace(cfg, scan_layers=False)))
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
    sd = {k: common.as_numpy(v) for k, v in state_dict.items()}
    check_state_dict(sd, expected_state_dict_shapes(cfg), "Infinity transformer")
    nonzero = [k for k in zero_k_bias_keys(cfg) if np.any(np.asarray(sd[k], np.float32) != 0)]
    if nonzero:
        raise ValueError(f"zero_k_bias buffers must be all zero (the official model ignores nothing else there); "
                         f"non-zero in {nonzero[:5]}{' ...' if len(nonzero) > 5 else ''}")
    flat = {}
    for key, path, layout, shape in _table(cfg):
        a = common.cast_exact(sd[key], dtype, key) if dtype is not None else np.asarray(sd[key])
        flat[path] = LAYOUTS[layout][0](a, shape)
    if cfg.scan_layers:
        flat = _stack(flat, cfg.depth)
    return common.unflatten(flat)


def params_to_torch(params: Mapping[str, Any], config, dtype=None) -> dict[str, np.ndarray]:
    """Our params (boxed or not; scanned or not, as the config) -> the official state dict (numpy).

    Same keys and shapes as the official model's state_dict(), zero_k_bias buffers included;
    `dtype` (e.g. 'bfloat16') casts every array, None keeps the params' dtype.
    """
    cfg = _model_config(config)
    flat = {k: common.as_numpy(v) for k, v in common.flatten(params).items()}
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
    cannot be built (`problem` prefixes the reason), or our place embedding `model.abs_pos_embed`, which
    no official state dict has weights for (`fix` says what to do)."""
    try:
        cfg = _model_config(config)
    except (ValueError, TypeError) as e:  # an unknown name or option, or sizes that do not fit together
        raise UsageError(f"{where}: {problem}{common.one_line(e)}") from e
    if cfg.abs_pos_embed:
        raise UsageError(f"{where} {verb} model.abs_pos_embed=True, our place embedding: the official Infinity "
                         f"classes have no weights for it, so there is no official state dict; {fix}")
    return cfg


def _cli_config(spec: str):
    """--config -> InfinityConfig of the official architecture; bad specs and options are a UsageError."""
    return official_model_config(spec, f"--config {spec!r}", "expected a config with abs_pos_embed=False")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="infinity-jax convert-infinity", description=__doc__.split("\n\n")[0])
    p.add_argument("--in", dest="inp", required=True, help="official .pth/.safetensors/.npz (or our params with --to-torch)")
    p.add_argument("--out", required=True, help="our params .npz/.msgpack (or an official .pth/.safetensors/.npz with --to-torch)")
    p.add_argument("--config", default="infinity_2b", help="configs/infinity.py name (infinity_2b, ...) or file.py[:arg]")
    p.add_argument("--to-torch", action="store_true", help="convert our params back to the official state dict")
    p.add_argument("--key", default=None, help="sub-dict of a training checkpoint to read (e.g. 'trainer')")
    p.add_argument("--dtype", default=None, help="with --to-torch: dtype of the written weights (default: as the params)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    # everything that can be checked is checked before the (possibly long) conversion; nothing is written on error
    common.check_conversion_args(args, official_out=args.to_torch)
    cfg = _cli_config(args.config)
    try:
        if args.to_torch:
            sd = params_to_torch(common.load_params(args.inp), cfg, dtype=args.dtype)
        else:
            params = torch_to_params(load_state_dict(args.inp, key=args.key), cfg)
    except (ValueError, KeyError) as e:  # not a state dict / params file, or keys and shapes that do not fit
        raise UsageError(f"--in {args.inp!r} (config {args.config!r}): {common.one_line(e)}") from e
    if args.to_torch:
        save_state_dict(sd, args.out)
    else:
        common.save_params(params, args.out)
    print(f"convert-infinity: {args.inp} -> {args.out} (config {args.config})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from infinity_jax import cli
    sys.exit(cli.main(["convert-infinity", *sys.argv[1:]]))
