"""`infinity-jax export-torch --checkpoint RUN_DIR --out FILE.pth [--vae-out VAE.pth] [--dtype bfloat16]`.

A training run (orbax checkpoint of `infinity-jax train`; its config is read from beside the weights)
-> the official PyTorch state dicts: the transformer (EMA params if the run keeps them) with the
official key names, shapes and zero_k_bias buffers, and optionally the run's BSQ-VAE. Files are
written atomically (.pth, .safetensors or .npz by extension) and a summary is printed. The official
classes load them with strict=True.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def export_run(checkpoint: str, out: str, vae_out: str | None = None, dtype: str | None = None,
               prefer_ema: bool = True) -> dict:
    """Writes the state dict(s); returns {'transformer': (keys, params, dtype), 'vae': ...}."""
    from infinity_jax.convert import infinity as conv_gpt, torch_io
    from infinity_jax.sample_cli import load_weights
    params, config = load_weights(checkpoint, "transformer", prefer_ema=prefer_ema)
    if config is None or "model" not in config:
        raise ValueError(f"{checkpoint!r}: expected a training run folder whose checkpoint carries its config")
    summary = {}
    sd = conv_gpt.params_to_torch(params, config, dtype=dtype)
    torch_io.save_state_dict(sd, out)
    summary["transformer"] = _summary(sd, out)
    if vae_out:
        from infinity_jax.convert import vae as conv_vae
        from infinity_jax.train.cli import build_vae
        _, vae_cfg, vae_params = build_vae(config)
        if not str(config.vae.get("params", "")):
            raise ValueError(f"{checkpoint!r} trained on a random VAE (vae.params is ''): nothing to export")
        vsd = conv_vae.params_to_torch(vae_params, vae_cfg, dtype=dtype)
        torch_io.save_state_dict(vsd, vae_out)
        summary["vae"] = _summary(vsd, vae_out)
    return summary


def _summary(sd, path) -> dict:
    dtypes = sorted({str(np.asarray(v).dtype) for v in sd.values()})
    return {"file": path, "keys": len(sd), "values": int(sum(np.size(v) for v in sd.values())), "dtypes": dtypes}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infinity-jax export-torch", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a training run folder (or its checkpoints/)")
    ap.add_argument("--out", required=True, help="transformer state dict: .pth, .safetensors or .npz")
    ap.add_argument("--vae-out", default=None, help="also write the run's BSQ-VAE state dict here")
    ap.add_argument("--safetensors", action="store_true", help="write .safetensors (replaces the extension)")
    ap.add_argument("--dtype", default=None, help="cast every tensor, e.g. bfloat16 (default: float32 as trained)")
    ap.add_argument("--no-ema", action="store_true", help="export params, not the EMA params")
    a = ap.parse_args(argv)
    if a.safetensors:
        a.out = a.out.rsplit(".", 1)[0] + ".safetensors"
        a.vae_out = a.vae_out and a.vae_out.rsplit(".", 1)[0] + ".safetensors"
    for name, s in export_run(a.checkpoint, a.out, a.vae_out, a.dtype, not a.no_ema).items():
        print(f"export-torch: {name}: {s['file']} ({s['keys']} keys, {s['values']:,} values, {'/'.join(s['dtypes'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
