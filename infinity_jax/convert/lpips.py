"""LPIPS weights (infinity_jax/tokenizer/lpips.py) from local files; nothing is downloaded.

`loss.lpips_weights` (and `load(spec)`) takes either
  'VGG16_FILE,LIN_FILE'  two torch state dicts, in this order:
      VGG16_FILE  torchvision's VGG16 (vgg16-397923af.pth): `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}
                  .weight` (O, I, 3, 3) and `.bias` (O,); its `classifier.*` keys are ignored
      LIN_FILE    the LPIPS linear heads (the `lpips` package's weights/v0.1/vgg.pth):
                  `lin{0..4}.model.1.weight` (1, C, 1, 1), C = 64, 128, 256, 512, 512, non-negative
      (.pth/.pt/.bin, .safetensors or a torch-layout .npz; read with torch_io.load_state_dict)
  'FILE.npz' (or .msgpack)  our params in one file, as `infinity-jax convert lpips` writes them
      ('/'-joined keys: features_0/kernel (3, 3, 3, 64) HWIO, ..., lin_4/kernel (1, 1, 512, 1)).
Loading is strict: one error lists every missing, unexpected and mis-shaped key.

usage (infinity_jax/commands/convert.py):
  infinity-jax convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.npz
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import numpy as np

from infinity_jax import fileio
from infinity_jax.convert import common
from infinity_jax.convert.torch_io import as_numpy, check_state_dict, load_state_dict
from infinity_jax.tokenizer import lpips as lpips_lib

IGNORED_PREFIX = "classifier."  # torchvision's VGG16 head: not part of LPIPS
SPEC_HELP = (
    "expected 'VGG16_FILE,LIN_FILE' (torchvision's VGG16 state dict, then the LPIPS lin "
    "heads) or one .npz/.msgpack written by `infinity-jax convert lpips`"
)


@functools.lru_cache(maxsize=1)
def key_table() -> dict[str, tuple[str, str, tuple[int, ...], tuple[int, ...]]]:
    """torch key -> (our param path, layout name, torch shape, our shape), for every parameter."""
    table = {}
    for path, leaf in fileio.flatten(lpips_lib.abstract_params()).items():
        name, leaf_name = path.split("/")
        kind, index = name.split("_")
        key = f"features.{index}" if kind == "features" else f"lin{index}.model.1"
        layout = "conv" if leaf_name == "kernel" else "same"
        torch_shape = tuple(int(n) for n in common.LAYOUTS[layout][2](leaf.shape))
        table[f"{key}.{common.TORCH_LEAF[leaf_name]}"] = (path, layout, torch_shape, tuple(leaf.shape))
    return table


def parse_spec(spec: str) -> tuple[str, ...]:
    """'A,B' -> (A, B) (torch VGG16 + lin files) or 'P.npz' / 'P.msgpack' -> (P,); ValueError otherwise."""
    paths = tuple(p.strip() for p in str(spec).split(","))
    if len(paths) == 2 and all(paths):
        return paths
    if len(paths) == 1 and paths[0].endswith((".npz", ".msgpack")):
        return paths
    raise ValueError(f"LPIPS weights {spec!r}: {SPEC_HELP}")


def _check_lin(flat: Mapping[str, np.ndarray], what: str) -> None:
    """LPIPS's heads are trained with their weights clamped at 0; a negative one would reward
    differences in that channel, which a model being trained could exploit."""
    bad = {k: float(np.min(v)) for k, v in flat.items() if k.startswith("lin") and np.min(v) < 0}
    if bad:
        raise ValueError(f"{what}: LPIPS lin weights must be >= 0 (the published ones are); minimum per layer {bad}")


def torch_to_params(state_dict: Mapping[str, Any], what: str = "LPIPS state dict") -> dict[str, Any]:
    """VGG16 `features.*` + LPIPS `lin*` keys (one dict; `classifier.*` dropped) -> our params (numpy fp32)."""
    table = key_table()
    sd = {k: as_numpy(v) for k, v in state_dict.items() if not k.startswith(IGNORED_PREFIX)}
    check_state_dict(sd, {k: row[2] for k, row in table.items()}, what)
    _check_lin(sd, what)
    flat = {
        path: common.cast_exact(common.LAYOUTS[layout][0](sd[key]), np.float32, f"{what}: {key}")
        for key, (path, layout, _, _) in table.items()
    }
    return fileio.unflatten(flat)


def load_torch(vgg_path: str, lin_path: str) -> dict[str, Any]:
    """torchvision's VGG16 file + the LPIPS lin file -> our params."""
    vgg, lin = load_state_dict(vgg_path), load_state_dict(lin_path)
    both = sorted(set(vgg) & set(lin))
    if both:
        raise ValueError(f"LPIPS weights: keys {both[:5]} are in both {vgg_path!r} and {lin_path!r}; {SPEC_HELP}")
    return torch_to_params({**vgg, **lin}, f"LPIPS weights (VGG16 {vgg_path!r} + lin {lin_path!r})")


def load_ours(path: str) -> dict[str, Any]:
    """Our params file (`convert lpips` output), checked against the model's shapes."""
    what = f"LPIPS params {path!r}"
    flat = {k: np.asarray(v) for k, v in fileio.flatten(fileio.load_params(path)).items()}
    check_state_dict(flat, {ours: shape for ours, _, _, shape in key_table().values()}, what)
    _check_lin(flat, what)
    return fileio.unflatten({k: common.cast_exact(v, np.float32, f"{what}: {k}") for k, v in flat.items()})


def load(spec: str) -> dict[str, Any]:
    """Our LPIPS params (numpy fp32 tree) from a `loss.lpips_weights` spec (module docstring)."""
    paths = parse_spec(spec)
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(
                f"LPIPS weights {spec!r}: {p!r} does not exist (nothing is downloaded; {SPEC_HELP})"
            )
    return load_torch(*paths) if len(paths) == 2 else load_ours(paths[0])
