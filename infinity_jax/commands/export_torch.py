"""`infinity-jax export-torch --checkpoint RUN_DIR --out FILE.pth [--vae-out VAE.pth] [--dtype bfloat16]`.

A training run (orbax checkpoint of `infinity-jax train`; its config is read from beside the weights)
-> the official PyTorch state dicts: the transformer (EMA params if the run keeps them) with the
official key names, shapes and zero_k_bias buffers, and optionally the run's BSQ-VAE. The official
classes load them with strict=True. A summary is printed.

Everything that can fail is checked before anything is written: the output names (.pth, .safetensors
or .npz; an existing file needs --overwrite), --dtype, the run's config (a run with a non-official
`model.extension` has no official form), the run's VAE weights (a run on a random VAE saved none),
and both conversions. Then both files are written to temporary files beside them and renamed at the
end: both appear, or neither (infinity_jax/convert/export.py).
"""

from __future__ import annotations

import argparse

from infinity_jax.convert import export


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infinity-jax export-torch", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a training run folder (or its checkpoints/)")
    ap.add_argument("--out", required=True, help="transformer state dict: .pth, .safetensors or .npz")
    ap.add_argument("--vae-out", default=None, help="also write the run's BSQ-VAE state dict here")
    ap.add_argument("--safetensors", action="store_true", help="write .safetensors (replaces the extension)")
    ap.add_argument("--dtype", default=None, help="cast every tensor, e.g. bfloat16 (default: float32 as trained)")
    ap.add_argument("--no-ema", action="store_true", help="export params, not the EMA params")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out / --vae-out")
    a = ap.parse_args(argv)
    if a.safetensors:
        a.out = a.out.rsplit(".", 1)[0] + ".safetensors"
        a.vae_out = a.vae_out and a.vae_out.rsplit(".", 1)[0] + ".safetensors"
    for name, s in export.export_run(a.checkpoint, a.out, a.vae_out, a.dtype, not a.no_ema, a.overwrite).items():
        print(f"export-torch: {name}: {s['file']} ({s['keys']} keys, {s['values']:,} values, {'/'.join(s['dtypes'])})")
    return 0
