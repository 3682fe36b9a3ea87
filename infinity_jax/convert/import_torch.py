"""Official released state dicts -> a run folder that sample and export-torch read as a training run.

The official transformer (and optionally BSQ-VAE) state dicts (.pth / .safetensors; bf16 and fp16 load,
upcast exactly to fp32), with a model config, become a folder that `infinity-jax sample --checkpoint DIR`
and `infinity-jax export-torch --checkpoint DIR` read with no flags for model, VAE or schedule:

  DIR/checkpoints/<step>/  an orbax checkpoint of infinity_jax/checkpoint.py: the params (no optimizer
                           state) and the config: model, schedule, data.h_div_w, vae, text (when
                           a text encoder is given) and `source` (the files it came from)
  DIR/vae_params.npz       the BSQ-VAE params in our layout   (config vae.params, relative to DIR)
  DIR/vae_config.json      the BSQ-VAE config                 (config vae.config, relative to DIR)

Only the official architecture can be filled from an official state dict: a config with one of our
`model.extension`s is refused by name. Loading is strict. Bad input raises UsageError (a ValueError) or
FileNotFoundError, naming the command-line flag it came from, before anything is written; the folder
appears atomically (a hidden temporary sibling of DIR, renamed at the end). The command is
`infinity-jax import-torch` (infinity_jax/commands/import_torch.py).
"""

from __future__ import annotations

import os
import re
import types

import jax
import ml_collections
import numpy as np

from infinity_jax import config_util, fileio, run_config, runs, schedules
from infinity_jax.checkpoint import Checkpointer
from infinity_jax.convert import infinity as conv_gpt
from infinity_jax.convert import torch_io
from infinity_jax.convert import vae as conv_vae
from infinity_jax.errors import UsageError, one_line
from infinity_jax.model.transformer import InfinityConfig

CHECKPOINTS, VAE_PARAMS, VAE_CONFIG = "checkpoints", "vae_params.npz", "vae_config.json"
MODEL_FIELDS = ("depth", "embed_dim", "num_heads", "block_chunks", "codebook_dim", "text_channels")


# ---------------------------------------------------------------- configs
def load_model_config(spec: str, overrides=()):
    """--config: a configs/infinity.py name ('2b', 'infinity_2b,dtype=bfloat16') or a config spec
    (configs/infinity.py:2b, configs/zoo.py:2b,mesh=h100x8-fsdp, zoo:2b), then `overrides`
    ('model.scan_layers=True'); it needs a `model` section of the official architecture. The config is
    completed (run_config.load) as training saves it, so the folder's config holds every field."""
    try:
        cfg = run_config.load(spec, overrides, module="infinity")
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(f"--config {spec!r}: {one_line(e)}") from e
    if "model" not in cfg:
        raise UsageError(
            f"--config {spec!r} has no `model` section: expected a configs/infinity.py or configs/zoo.py config"
        )
    # nothing in an official state dict could fill an extension: refuse by name, not as missing keys
    conv_gpt.official_model_config(
        cfg,
        f"--config {spec!r}",
        "expected the official architecture: add --config.model.extension='' (a run trained so exports)",
        problem="model: ",
    )
    return cfg


def vae_config_spec(given: str | None, vae_path: str, cfg) -> str:
    """--vae-config, else the released name in the file name (infinity_vae_d32reg.pth -> d32reg,
    infinity_vae_d56_f8_14_patchify.pth -> d56), else the config's vae.config, else the released tokenizer
    the model reads (configs/bsq_vae.py released_for: d{model.codebook_dim}, or d56 for codebook_dim 56 under
    model.apply_spatial_patchify); bare names are configs/bsq_vae.py's."""
    if given:
        return given if (":" in given or given.endswith((".py", ".json"))) else f"bsq_vae:{given}"
    m = re.fullmatch(r"infinity_vae_(d\d+(?:_?reg)?)(?:_f\d+_\d+_patchify)?\.\w+", os.path.basename(vae_path))
    if m:  # also d32_reg
        return f"bsq_vae:{m.group(1).replace('_', '')}"
    if "vae" in cfg and cfg.vae.get("config"):
        return str(cfg.vae.config)
    d, patchify = int(cfg.model.codebook_dim), int(cfg.model.get("apply_spatial_patchify", 0))
    return f"bsq_vae:{conv_vae.released_for(d, patchify) or f'd{d // 4 if patchify else d}'}"


def text_section(spec: str, model) -> dict:
    """--text-encoder (a Hugging Face T5 folder, or a configs/t5.py argument such as
    'flan-t5-xl,path=DIR' or 'tiny-byt5') -> the `text` section that training configs carry."""
    t5 = runs.text_encoder_config(spec)
    t5.path = os.path.abspath(t5.path) if t5.path else ""
    t5.model.d_model = int(model.text_channels)
    t5.max_length = min(int(t5.max_length), int(model.text_maxlen))
    return t5.to_dict()


# ---------------------------------------------------------------- state dicts
def state_dict_sizes(sd) -> dict[str, int]:
    """The model sizes an official transformer state dict implies (for mismatch messages)."""
    out, blocks, chunks = {}, set(), set()
    if "word_embed.weight" in sd:
        out["embed_dim"], out["codebook_dim"] = (int(n) for n in np.shape(sd["word_embed.weight"]))
    if "text_norm.weight" in sd:
        out["text_channels"] = int(np.shape(sd["text_norm.weight"])[0])
    for k, v in sd.items():
        m = re.match(r"(?:blocks\.(\d+)|block_chunks\.(\d+)\.module\.(\d+))\.", k)
        if m:
            blocks.add(m.groups())
            chunks.add(m.group(2))
        if k.endswith("sa.scale_mul_1H11") and "num_heads" not in out:
            out["num_heads"] = int(np.shape(v)[1])
    if blocks:
        out["depth"], out["block_chunks"] = len(blocks), max(1, len(chunks - {None}))
    return out


def _mismatch_hint(sd, cfg) -> str:
    implied = state_dict_sizes(sd)
    diffs = [
        f"{k} {implied[k]} (state dict) vs {cfg.model[k]} (config)"
        for k in MODEL_FIELDS
        if k in implied and int(cfg.model[k]) != implied[k]
    ]
    return f"the state dict implies {', '.join(diffs)}" if diffs else ""


def _read(path: str, what: str, load):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--{what} {path!r} does not exist: expected an official .pth or .safetensors state dict"
        )
    try:
        return load(path)
    except (ValueError, KeyError) as e:  # not a state dict, or no such --key in it
        raise UsageError(f"--{what}: {one_line(e)}") from e


def _describe(sd, params) -> dict:
    flat = fileio.flatten(params)
    return {
        "keys": len(sd),
        "params": int(sum(np.size(v) for v in flat.values())),
        "dtypes": sorted({str(np.asarray(v).dtype) for v in sd.values()}),
        "param_dtypes": sorted({str(np.asarray(v).dtype) for v in flat.values()}),
    }


# ---------------------------------------------------------------- the folder
def _refuse_existing(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a file: expected a folder (new, or empty)")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise UsageError(f"--out {out!r} exists and is not empty: pass --overwrite to replace it")


def _write(folder: str, params, config, step: int, vae_params=None, vae_cfg=None) -> None:
    # the fields of a training state (checkpoint.py) without optimizer state: what sample/export read, and
    # nothing to resume training from
    state = types.SimpleNamespace(
        step=np.int32(step),
        params=params,
        opt_state={},
        ema_params=None,
        rng=np.asarray(jax.random.key_data(jax.random.key(0))),
    )
    with Checkpointer(os.path.join(folder, CHECKPOINTS), keep=1, async_save=False) as ck:
        ck.save(state, None, config, wait=True)
    if vae_params is not None:
        fileio.save_params(vae_params, os.path.join(folder, VAE_PARAMS))
        fileio.atomic_write(os.path.join(folder, VAE_CONFIG), lambda f: f.write(config_util.to_json(vae_cfg).encode()))


def import_weights(
    transformer: str,
    out: str,
    *,
    config: str,
    vae: str | None = None,
    vae_config: str | None = None,
    text_encoder: str | None = None,
    schedule: str | None = None,
    step: int = 0,
    key: str | None = None,
    overwrite: bool = False,
    overrides=(),
) -> dict:
    """Writes the folder (see the module docstring); returns {'out', 'step', 'config', 'transformer', 'vae'}.
    Bad input raises UsageError (a ValueError) or FileNotFoundError before anything is written.
    schedule: a pixel budget ('1M') or 'HxW,HxW,...' (schedules.resolve); default: the config's, else 1M."""
    if jax.process_count() > 1:
        raise UsageError(
            f"import-torch runs in one process; this is process {jax.process_index()} of {jax.process_count()}"
        )
    out = os.path.abspath(out)
    _refuse_existing(out, overwrite)
    if vae_config and not vae:
        raise UsageError(f"--vae-config {vae_config!r} without --vae: give the VAE state dict too")
    overrides = tuple(o.removeprefix("--").removeprefix("config.") for o in overrides)
    cfg = load_model_config(config, overrides)
    saved = cfg.to_dict()
    saved["name"] = f"import/{cfg.get('name', config)}"
    saved["schedule"] = schedule or str(cfg.get("schedule", "") or "") or "1M"
    try:  # checked here, so a bad one fails before any weights load
        schedules.resolve(saved["schedule"])
    except ValueError as e:
        where = f"--schedule {schedule!r}" if schedule else f"--config {config!r}"
        raise UsageError(f"{where}: {e}") from e
    saved.setdefault("data", {}).setdefault("h_div_w", 1.0)
    saved.pop("vae", None)  # a training config names VAE weights elsewhere; only an imported VAE is kept
    if text_encoder:
        saved["text"] = text_section(text_encoder, cfg.model)
    summary = {"out": out, "step": int(step), "config": " ".join([config, *(f"--config.{o}" for o in overrides)])}

    sd = _read(transformer, "transformer", lambda p: torch_io.load_state_dict(p, key=key))
    try:
        params = conv_gpt.torch_to_params(sd, cfg)
    except ValueError as e:
        hint = _mismatch_hint(sd, cfg)  # first: the key lists can run to thousands of keys (a few are named)
        raise UsageError(
            f"--transformer {transformer!r} does not fit --config {config!r}"
            + (f" ({hint})" if hint else "")
            + f": {one_line(e)}"
        ) from None
    summary["transformer"] = dict(_describe(sd, params), file=os.path.abspath(transformer))
    del sd

    vae_params = vae_cfg = None
    if vae:
        vspec = vae_config_spec(vae_config, vae, cfg)
        # the config's own VAE (e.g. configs/shapes.py's bsq_vae:shapes) comes with its overrides
        from_cfg = not vae_config and "vae" in cfg and vspec == str(cfg.vae.get("config", ""))
        try:
            vae_cfg = runs.load_vae_config(vspec, tuple(cfg.vae.get("overrides", ())) if from_cfg else ())
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise UsageError(f"--vae-config {vspec!r}: {one_line(e)}") from e
        try:  # d bits (or d / 4 at patch 8 under apply_spatial_patchify): one error naming both
            InfinityConfig.from_dict(cfg.model).check_tokenizer(
                vae_cfg.codebook_dim, vae_cfg.get("patch_size"), where=f"--vae-config {vspec!r}"
            )
        except ValueError as e:
            raise UsageError(f"{one_line(e)} (the model of --config {config!r})") from None
        vsd = _read(vae, "vae", conv_vae.load_official_state_dict)
        try:
            vae_params = conv_vae.torch_to_params(vsd, vae_cfg)
        except ValueError as e:
            raise UsageError(f"--vae {vae!r} does not fit --vae-config {vspec!r}: {one_line(e)}") from None
        summary["vae"] = dict(_describe(vsd, vae_params), file=os.path.abspath(vae), config=vspec)
        saved["vae"] = {"config": VAE_CONFIG, "overrides": (), "params": VAE_PARAMS}
    saved["source"] = {
        "transformer": os.path.abspath(transformer),
        "vae": os.path.abspath(vae) if vae else "",
        "config": config,
        "overrides": overrides,
        "vae_config": summary.get("vae", {}).get("config", ""),
    }

    with fileio.atomic_folder(out) as tmp:
        _write(tmp, params, ml_collections.ConfigDict(saved), step, vae_params, vae_cfg)
    summary["schedule"], summary["text"] = saved["schedule"], saved.get("text")
    return summary
