"""`infinity-jax convert vae|lpips|infinity`: official PyTorch weights <-> our params files, both ways.

The conversions themselves (key tables, layouts, strict checks) are infinity_jax/convert/; these commands
check their files before converting: bad input (a missing or unreadable --in, keys that do not fit the
config, an --out that exists: --overwrite replaces it) is one line, exit status 2, and writes nothing;
--out appears atomically.

usage:
  infinity-jax convert vae --in infinity_vae_d32reg.pth --config d32reg --out vae_d32reg.npz
  infinity-jax convert vae --to-torch --in vae_d32reg.npz --config d32reg --out back.pth [--dtype bfloat16]
  infinity-jax convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.npz
  infinity-jax convert infinity --in infinity_2b_reg.pth --config infinity_2b --out infinity_2b.npz
  infinity-jax convert infinity --to-torch --in infinity_2b.npz --config infinity_2b --out back.pth [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from infinity_jax import fileio
from infinity_jax.convert import common, torch_io
from infinity_jax.convert import infinity as convert_infinity
from infinity_jax.convert import lpips as convert_lpips
from infinity_jax.convert import vae as convert_vae
from infinity_jax.errors import UsageError, one_line


def check_conversion_args(args, official_out: bool) -> None:
    """The files of a convert command (args.inp, args.out, args.dtype, args.overwrite), checked before any
    work: --in exists with a known extension, --out has one and does not exist (unless --overwrite).
    official_out: --to-torch (our params in, an official state dict out) rather than the other way."""
    if os.path.isdir(args.inp):
        raise UsageError(f"--in {args.inp!r} is a folder: expected a file")
    if not os.path.isfile(args.inp):
        raise FileNotFoundError(
            f"--in {args.inp!r} does not exist: expected "
            + (
                "our params (.npz / .msgpack)"
                if official_out
                else "an official state dict (.pth / .safetensors / .npz)"
            )
        )
    ext = os.path.splitext(args.inp)[1].lower()
    if official_out and ext not in (".npz", ".msgpack"):
        raise UsageError(f"--in {args.inp!r}: expected our params (.npz / .msgpack) with --to-torch")
    if not official_out and ext not in torch_io.READ_EXTENSIONS:
        raise UsageError(
            f"--in {args.inp!r}: unknown extension {ext!r}; expected an official state dict "
            f"(.pth / .pt / .bin / .safetensors / .npz), or pass --to-torch for our params"
        )
    if official_out:
        torch_io.check_output_path(args.out, "--out")
    else:
        fileio.params_file(args.out)
    fileio.refuse_existing(args.out, "--out", args.overwrite)
    if args.dtype is not None and not official_out:
        raise UsageError(f"--dtype {args.dtype!r} applies to --to-torch only (imported params are float32)")
    common.float_dtype(args.dtype)


def _both_ways_parser(
    name: str, description: str, config_default: str, config_help: str, key_help: str
) -> argparse.ArgumentParser:
    """The flags convert vae and convert infinity share: --in/--out, --config, --to-torch, --key, --dtype."""
    p = argparse.ArgumentParser(prog=f"infinity-jax convert {name}", description=description)
    p.add_argument(
        "--in", dest="inp", required=True, help="official .pth/.safetensors/.npz (or our params with --to-torch)"
    )
    p.add_argument(
        "--out", required=True, help="our params .npz/.msgpack (or an official .pth/.safetensors/.npz with --to-torch)"
    )
    p.add_argument("--config", default=config_default, help=config_help)
    p.add_argument("--to-torch", action="store_true", help="convert our params back to the official state dict")
    p.add_argument("--key", default=None, help=key_help)
    p.add_argument(
        "--dtype", default=None, help="with --to-torch: dtype of the written weights (default: as the params)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def vae(argv: list[str]) -> int:
    """`infinity-jax convert vae`: the official BSQ-VAE state dict <-> our params (convert/vae.py)."""
    args = _both_ways_parser(
        "vae",
        convert_vae.__doc__.split("\n\n")[0],
        "d32",
        "configs/bsq_vae.py name (d16 d24 d32 d32reg d64 tiny) or file.py[:arg]",
        "sub-dict of a training checkpoint to read (default: 'vae' if present)",
    ).parse_args(argv)
    # everything that can be checked is checked before the conversion; nothing is written on error
    check_conversion_args(args, official_out=args.to_torch)
    try:
        config = convert_vae.load_config(args.config)
        convert_vae.key_table(config)  # builds the model: a config whose sizes do not fit together fails here
    except (ValueError, TypeError) as e:
        raise UsageError(f"--config {args.config!r}: {one_line(e)}") from e
    try:
        if args.to_torch:
            sd = convert_vae.params_to_torch(fileio.load_params(args.inp), config, dtype=args.dtype)
        else:
            params = convert_vae.torch_to_params(convert_vae.load_official_state_dict(args.inp, args.key), config)
    except (ValueError, KeyError) as e:  # not a state dict / params file, or keys and shapes that do not fit
        raise UsageError(f"--in {args.inp!r} (config {args.config!r}): {one_line(e)}") from e
    if args.to_torch:
        torch_io.save_state_dict(sd, args.out)
        n = sum(int(np.size(v)) for k, v in sd.items() if k not in convert_vae.MASK_KEYS)
    else:
        fileio.save_params(params, args.out)
        n = sum(int(np.size(v)) for v in fileio.flatten(params).values())
    print(f"convert vae: {args.inp} -> {args.out} (config {config.name}, {n:,} parameters)", file=sys.stderr)
    return 0


def lpips(argv: list[str]) -> int:
    """`infinity-jax convert lpips`: torchvision's VGG16 + the LPIPS lin heads -> our LPIPS params."""
    p = argparse.ArgumentParser(prog="infinity-jax convert lpips", description=convert_lpips.__doc__.split("\n\n")[0])
    p.add_argument("--vgg", required=True, help="torchvision's VGG16 state dict (vgg16-397923af.pth)")
    p.add_argument("--lin", required=True, help="the LPIPS lin heads (the lpips package's weights/v0.1/vgg.pth)")
    p.add_argument("--out", required=True, help="our params .npz/.msgpack (for loss.lpips_weights)")
    args = p.parse_args(argv)
    params = convert_lpips.load_torch(args.vgg, args.lin)
    fileio.save_params(params, args.out)
    n = sum(int(np.size(v)) for v in fileio.flatten(params).values())
    print(f"convert lpips: {args.vgg} + {args.lin} -> {args.out} ({n:,} parameters)", file=sys.stderr)
    return 0


def infinity(argv: list[str]) -> int:
    """`infinity-jax convert infinity`: the official Infinity transformer state dict <-> our params."""
    args = _both_ways_parser(
        "infinity",
        convert_infinity.__doc__.split("\n\n")[0],
        "infinity_2b",
        "configs/infinity.py name (infinity_2b, ...) or file.py[:arg]",
        "sub-dict of a training checkpoint to read (e.g. 'trainer')",
    ).parse_args(argv)
    # everything that can be checked is checked before the (possibly long) conversion; nothing is written on error
    check_conversion_args(args, official_out=args.to_torch)
    # the official architecture only; a bad spec or option, or one of our extensions, is a UsageError
    cfg = convert_infinity.official_model_config(
        args.config, f"--config {args.config!r}", "expected a config with model.extension=''"
    )
    try:
        if args.to_torch:
            sd = convert_infinity.params_to_torch(fileio.load_params(args.inp), cfg, dtype=args.dtype)
        else:
            params = convert_infinity.torch_to_params(torch_io.load_state_dict(args.inp, key=args.key), cfg)
    except (ValueError, KeyError) as e:  # not a state dict / params file, or keys and shapes that do not fit
        raise UsageError(f"--in {args.inp!r} (config {args.config!r}): {one_line(e)}") from e
    if args.to_torch:
        torch_io.save_state_dict(sd, args.out)
    else:
        fileio.save_params(params, args.out)
    print(f"convert infinity: {args.inp} -> {args.out} (config {args.config})", file=sys.stderr)
    return 0
