"""A training run -> the official PyTorch state dicts, strict-loadable (export_run).

A training run (orbax checkpoint of `infinity-jax train`; its config is read from beside the weights)
-> the official PyTorch state dicts: the transformer (EMA params if the run keeps them) with the
official key names, shapes and zero_k_bias buffers, and optionally the run's BSQ-VAE. The official
classes load them with strict=True.

Everything that can fail is checked before anything is written: the output names (.pth, .safetensors
or .npz; an existing file needs --overwrite), --dtype, the run's config (a run with a non-official
`model.extension` has no official form), the run's VAE weights (a run on a random VAE saved none),
and both conversions. Then both files are written to temporary files beside them and renamed at the
end: both appear, or neither. The command is `infinity-jax export-torch` (infinity_jax/commands/export_torch.py).
"""

from __future__ import annotations

import contextlib
import logging
import os

import ml_collections
import numpy as np

from infinity_jax import fileio
from infinity_jax.checkpoint import Checkpointer
from infinity_jax.convert import common, torch_io
from infinity_jax.convert import infinity as conv_gpt
from infinity_jax.convert import vae as conv_vae
from infinity_jax.errors import UsageError, one_line
from infinity_jax.runs import build_vae, load_weights, run_relative_paths

EXTENSION_FIX = "train with --config.model.extension='' to export"


def export_run(
    checkpoint: str,
    out: str,
    vae_out: str | None = None,
    dtype: str | None = None,
    prefer_ema: bool = True,
    overwrite: bool = False,
) -> dict:
    """Writes the state dict(s), both or neither; returns {'transformer': summary, 'vae': summary}.

    Bad input (a missing or non-run --checkpoint, an output that exists or has no known extension, a
    non-official model, no saved VAE for vae_out) raises UsageError (a ValueError) before any file is written.
    """
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
        raise UsageError(f"--checkpoint {checkpoint!r}: {one_line(e)}") from e
    del params
    files = {out: sd} if vsd is None else {out: sd, vae_out: vsd}
    torch_io.save_state_dicts(files)
    return {name: _summary(sd, path) for name, (path, sd) in zip(("transformer", "vae"), files.items())}


def read_run_config(checkpoint: str):
    """The config a training run (or an import-torch folder) saved with its latest checkpoint, with
    vae paths resolved against the run folder; read without loading any weights."""
    if not checkpoint or not os.path.exists(checkpoint):
        raise UsageError(
            f"transformer checkpoint {checkpoint!r} does not exist: expected a training run folder "
            f"(the --workdir of infinity-jax train) or a folder written by import-torch"
        )
    if not os.path.isdir(checkpoint):
        raise UsageError(
            f"--checkpoint {checkpoint!r} is a file: expected a training run folder whose checkpoint "
            f"carries its config (convert infinity --to-torch converts a params file)"
        )
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
        raise UsageError(
            f"--checkpoint {checkpoint!r}: its config has no `model` section: expected a training "
            f"run folder whose checkpoint carries its config"
        )
    root = os.path.abspath(root)
    run_dir = os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root  # as load_weights reads it
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
    """Refuses a model config that has no official state dict (a `model.extension` of ours), naming the fix."""
    conv_gpt.official_model_config(config, where, EXTENSION_FIX, problem="model config: ", verb="was trained with")


def _check_outputs(out: str, vae_out: str | None, overwrite: bool) -> None:
    for flag, path in (("--out", out), ("--vae-out", vae_out)):
        if path is not None:
            torch_io.check_output_path(path, flag)
            fileio.refuse_existing(path, flag, overwrite)
    if vae_out is not None and os.path.abspath(vae_out) == os.path.abspath(out):
        raise UsageError(f"--vae-out {vae_out!r} is also --out: expected two different files")


def _check_vae_weights(config, checkpoint: str) -> str:
    """The run's VAE weights file (config vae.params), which must exist: a random VAE is not saved."""
    path = str(config.vae.get("params", "") or "") if "vae" in config else ""
    if not path:
        raise UsageError(
            f"--vae-out: {checkpoint!r} trained on a random VAE (its config's vae.params is ''), "
            f"which is not saved: nothing to export; drop --vae-out, or train with vae.params "
            f"naming VAE weights"
        )
    if "://" not in path and not os.path.isfile(path):
        raise UsageError(f"--vae-out: the run's VAE weights {path!r} (its config's vae.params) do not exist")
    return path


def _vae_state_dict(config, path: str, dtype: str | None) -> dict:
    """The run's VAE (config, then weights) as the official state dict; any failure is a one-line UsageError."""
    try:
        _, vae_cfg, vae_params = build_vae(config)
        return conv_vae.params_to_torch(vae_params, vae_cfg, dtype=dtype)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(
            f"--vae-out: the run's VAE (vae.config {str(config.vae.get('config', ''))!r}, "
            f"vae.params {path!r}): {one_line(e)}"
        ) from e


def _summary(sd, path) -> dict:
    dtypes = sorted({str(np.asarray(v).dtype) for v in sd.values()})
    return {"file": path, "keys": len(sd), "values": int(sum(np.size(v) for v in sd.values())), "dtypes": dtypes}
