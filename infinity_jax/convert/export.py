"""`infinity-jax export-torch --checkpoint RUN_DIR --out FILE.pth [--vae-out VAE.pth] [--dtype bfloat16]`.

A training run (orbax checkpoint of `infinity-jax train`; its config is read from beside the weights)
-> the official PyTorch state dicts: the transformer (EMA params if the run keeps them) with the
official key names, shapes and zero_k_bias buffers, and optionally the run's BSQ-VAE. The official
classes load them with strict=True. A summary is printed.

Everything that can fail is checked before anything is written: the output names (.pth, .safetensors
or .npz; an existing file needs --overwrite), --dtype, the run's config (a run with our non-official
`model.abs_pos_embed` has no official form), the run's VAE weights (a run on a random VAE saved none),
and both conversions. Then both files are written to temporary files beside them and renamed at the
end: both appear, or neither.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

import numpy as np

from infinity_jax.errors import UsageError

ABS_POS_FIX = "train with --config.model.abs_pos_embed=False to export"


def export_run(checkpoint: str, out: str, vae_out: str | None = None, dtype: str | None = None,
               prefer_ema: bool = True, overwrite: bool = False) -> dict:
    """Writes the state dict(s), both or neither; returns {'transformer': summary, 'vae': summary}.

    Bad input (a missing or non-run --checkpoint, an output that exists or has no known extension, a
    non-official model, no saved VAE for vae_out) raises UsageError (a ValueError) before any file is written.
    """
    from infinity_jax.convert import common, infinity as conv_gpt, torch_io
    from infinity_jax.sample_cli import load_weights
    _check_outputs(out, vae_out, overwrite)
    common.float_dtype(dtype)
    config = read_run_config(checkpoint)
    check_exportable(config, f"--checkpoint {checkpoint!r}")
    # the VAE first: small, and the likelier to fail (not saved, moved, another architecture)
    vsd = _vae_state_dict(config, _check_vae_weights(config, checkpoint), dtype) if vae_out else None

    params, _ = load_weights(checkpoint, "transformer", prefer_ema=prefer_ema)
    try:
        sd = conv_gpt.params_to_torch(params, config, dtype=dtype)
    except ValueError as e:  # the run's params do not fit its own config
        raise UsageError(f"--checkpoint {checkpoint!r}: {common.one_line(e)}") from e
    del params
    files = {out: sd} if vsd is None else {out: sd, vae_out: vsd}
    torch_io.save_state_dicts(files)
    return {name: _summary(sd, path) for name, (path, sd) in zip(("transformer", "vae"), files.items())}


def read_run_config(checkpoint: str):
    """The config a training run (or an import-torch folder) saved with its latest checkpoint, with
    vae paths resolved against the run folder; read without loading any weights."""
    import ml_collections
    from infinity_jax.checkpoint import Checkpointer
    from infinity_jax.sample_cli import run_relative_paths
    if not checkpoint or not os.path.exists(checkpoint):
        raise UsageError(f"transformer checkpoint {checkpoint!r} does not exist: expected a training run folder "
                         f"(the --workdir of infinity-jax train) or a folder written by import-torch")
    if not os.path.isdir(checkpoint):
        raise UsageError(f"--checkpoint {checkpoint!r} is a file: expected a training run folder whose checkpoint "
                         f"carries its config (convert-infinity --to-torch converts a params file)")
    root = os.path.join(checkpoint, "checkpoints")
    root = root if os.path.isdir(root) else checkpoint
    try:
        with _quiet_absl():  # orbax warns three lines about read_only options: noise before a one-line error
            ck = Checkpointer(root, read_only=True)
            try:
                config = ck.restore_config()
            finally:
                ck.close()
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(f"--checkpoint {checkpoint!r}: {' '.join(str(e).split())}") from e
    if "model" not in config:
        raise UsageError(f"--checkpoint {checkpoint!r}: its config has no `model` section: expected a training "
                         f"run folder whose checkpoint carries its config")
    root = os.path.abspath(root)
    run_dir = os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root  # as sample_cli reads it
    return run_relative_paths(ml_collections.ConfigDict(config), run_dir)


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_exportable(config, where: str) -> None:
    """Refuses a model config that has no official state dict (our `model.abs_pos_embed`), naming the fix."""
    from infinity_jax.convert import infinity as conv_gpt
    conv_gpt.official_model_config(config, where, ABS_POS_FIX, problem="model config: ", verb="was trained with")


def _check_outputs(out: str, vae_out: str | None, overwrite: bool) -> None:
    from infinity_jax.convert import common, torch_io
    for flag, path in (("--out", out), ("--vae-out", vae_out)):
        if path is not None:
            torch_io.check_output_path(path, flag)
            common.refuse_existing(path, flag, overwrite)
    if vae_out is not None and os.path.abspath(vae_out) == os.path.abspath(out):
        raise UsageError(f"--vae-out {vae_out!r} is also --out: expected two different files")


def _check_vae_weights(config, checkpoint: str) -> str:
    """The run's VAE weights file (config vae.params), which must exist: a random VAE is not saved."""
    path = str(config.vae.get("params", "") or "") if "vae" in config else ""
    if not path:
        raise UsageError(f"--vae-out: {checkpoint!r} trained on a random VAE (its config's vae.params is ''), "
                         f"which is not saved: nothing to export; drop --vae-out, or train with vae.params "
                         f"naming VAE weights")
    if "://" not in path and not os.path.isfile(path):
        raise UsageError(f"--vae-out: the run's VAE weights {path!r} (its config's vae.params) do not exist")
    return path


def _vae_state_dict(config, path: str, dtype: str | None) -> dict:
    """The run's VAE (config, then weights) as the official state dict; any failure is a one-line UsageError."""
    from infinity_jax.convert import common, vae as conv_vae
    from infinity_jax.train.cli import build_vae
    try:
        _, vae_cfg, vae_params = build_vae(config)
        return conv_vae.params_to_torch(vae_params, vae_cfg, dtype=dtype)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(f"--vae-out: the run's VAE (vae.config {str(config.vae.get('config', ''))!r}, "
                         f"vae.params {path!r}): {common.one_line(e)}") from e


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
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out / --vae-out")
    a = ap.parse_args(argv)
    if a.safetensors:
        a.out = a.out.rsplit(".", 1)[0] + ".safetensors"
        a.vae_out = a.vae_out and a.vae_out.rsplit(".", 1)[0] + ".safetensors"
    for name, s in export_run(a.checkpoint, a.out, a.vae_out, a.dtype, not a.no_ema, a.overwrite).items():
        print(f"export-torch: {name}: {s['file']} ({s['keys']} keys, {s['values']:,} values, {'/'.join(s['dtypes'])})")
    return 0


if __name__ == "__main__":
    from infinity_jax import cli
    sys.exit(cli.main(["export-torch", *sys.argv[1:]]))
