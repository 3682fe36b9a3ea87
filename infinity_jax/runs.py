"""The run layer: opening, building and checking the parts of a run, for every command and library user.

A run is a config (ml_collections, see configs/) plus files: a training run folder (orbax checkpoints
under `<run>/checkpoints/<step>/`, written by the training loop or `import-torch`), a params file
(.npz / .msgpack, see fileio) or an official PyTorch state dict. From a config this module builds the
schedule (one resolver: schedules.resolve), the frozen BSQ-VAE and the text encoder; from a path it
loads weights (EMA preferred) with the config saved beside them, and checks them against the model.
"""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from infinity_jax import config_util, fileio, schedules
from infinity_jax.checkpoint import Checkpointer
from infinity_jax.convert import infinity as convert_infinity
from infinity_jax.convert import torch_io
from infinity_jax.convert import vae as convert_vae
from infinity_jax.errors import UsageError
from infinity_jax.model.transformer import InfinityConfig, abstract_params
from infinity_jax.text.encoder import build_text_encoder
from infinity_jax.tokenizer import vae as vae_lib

log = logging.getLogger("infinity_jax.runs")

FINAL_FILE = "final.json"  # a finished run's summary (train and train-tokenizer); absent while unfinished
# exit status of a training command stopped by SIGTERM once its checkpoint is saved: sysexits' EX_TEMPFAIL
# ("try again later"), not 0, so a retry loop or a scheduler can tell it from a finished run
EXIT_PREEMPTED = 75


def schedule_from_config(cfg) -> schedules.Schedule:
    """config.schedule: an official pixel budget ('0.06M', with data.h_div_w or 1.0) or 'HxW,HxW,...'."""
    data = cfg.get("data")
    h_div_w = float(data.get("h_div_w", 1.0)) if data is not None else 1.0
    return schedules.resolve(str(cfg.schedule), h_div_w)[0]


def build_vae(cfg):
    """(module, config, params) of the frozen BSQ-VAE: config from cfg.vae.config (+ overrides), params from
    cfg.vae.params (anything load_weights reads: our .npz/.msgpack, an official state dict), or random when
    cfg.vae.params is ''."""
    spec = str(cfg.vae.config)
    vcfg = load_vae_config(spec, cfg.vae.get("overrides", ()))
    model = InfinityConfig.from_dict(cfg.model)
    model.check_tokenizer(vcfg.codebook_dim, vcfg.get("patch_size"), where=f"VAE (from {spec!r})")
    module = vae_lib.from_config(vcfg)
    path = str(cfg.vae.get("params", ""))
    if not path:
        log.warning("vae.params is empty: using a randomly initialised (untrained) BSQ-VAE")
        params = jax.jit(lambda k: vae_lib.init_params(module, k))(jax.random.key(cfg.seed + 7))
    else:
        params, _ = load_weights(path, "vae", vcfg)
    return module, vcfg, params


def load_vae_config(spec: str, overrides=()):
    """A VAE config from a config spec ('bsq_vae:d32', file.py[:arg]) or a saved config .json file."""
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"VAE config file {spec!r} does not exist")
        with open(spec) as f:
            return config_util.apply_overrides(config_util.from_json(f.read()), overrides)
    return config_util.load_config(spec, overrides)


def text_config(section) -> dict:
    """A run's `text` section in the one text-encoder schema (configs/t5.py: preset, path, model overrides,
    tokenizer, max_length, seed, ...). Runs saved before that schema named the folder `folder` and the
    width `d_model`: read as `path` and `model.d_model`."""
    x = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    if "folder" in x:
        x["path"] = x.pop("folder")
    if "d_model" in x:
        x["model"] = dict(x.get("model") or {}, d_model=int(x.pop("d_model")))
    return x


def text_encoder_config(spec: str) -> ml_collections.ConfigDict:
    """A --text-encoder value -> its configs/t5.py config: a Hugging Face T5 folder (read as
    'flan-t5-xl,path=DIR') or a configs/t5.py argument ('flan-t5-xl,path=DIR', 'tiny-byt5', ...)."""
    spec = f"flan-t5-xl,path={spec}" if os.path.isdir(spec) else spec
    try:
        cfg = config_util.load_config(f"t5:{spec}")
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--text-encoder {spec!r}: {e}") from e
    if cfg.path and not os.path.isdir(cfg.path):
        raise UsageError(f"--text-encoder path {cfg.path!r} does not exist: expected a Hugging Face T5 folder")
    return cfg


def build_text(cfg):
    """(T5Config, params, tokenizer) of the frozen text encoder of cfg.text (see text_config)."""
    enc = build_text_encoder(text_config(cfg.text))
    if enc.config.d_model != cfg.model.text_channels:
        raise ValueError(
            f"text encoder width {enc.config.d_model} does not match model.text_channels={cfg.model.text_channels}"
        )
    return enc.config, enc.params, enc.tokenizer


PARAMS_FILES = fileio.PARAMS_EXTENSIONS  # our params files
OFFICIAL_FILES = (".pth", ".pt", ".bin", ".safetensors")  # official state dicts, converted on load
RUN_FOLDERS = "a training run folder (checkpoints/<step>/state), its checkpoints/ folder or one <step>/ folder of it"


# ---------------------------------------------------------------- weights
def load_weights(
    path: str, what: str, config=None, prefer_ema: bool = True, step: int | None = None
) -> tuple[dict, Any]:
    """(params, config saved beside them or None) from a checkpoint folder or a params file.

    what: 'transformer' or 'vae' (picks the official converter for .pth files); config: the model
    config (an InfinityConfig / ConfigDict), needed for official state dicts only. A folder is an
    orbax checkpoint of the training loop (see `find_checkpoints`): `<dir>[/checkpoints]/<step>/state/
    {params,ema_params}` and `<step>/config/`; step `step` (default: the latest, or the step of a step
    folder) is read, params only (no optimizer state). A transformer run must have a `model` config.
    """
    if not path or not os.path.exists(path):
        raise UsageError(
            f"{what} checkpoint {path!r} does not exist: expected an orbax checkpoint folder, "
            f"a params file ({'/'.join(PARAMS_FILES)}) or an official state dict "
            f"({'/'.join(OFFICIAL_FILES)})"
        )
    if os.path.isdir(path):
        params, config, _ = load_run(path, prefer_ema, step, what)
        return params, config
    if step is not None:
        raise UsageError(
            f"--step {step}: {what} checkpoint {path!r} is a file, which holds one set of params; "
            f"expected {RUN_FOLDERS}"
        )
    ext = os.path.splitext(path)[1].lower()
    if ext in PARAMS_FILES:
        return fileio.load_params(path), None
    if ext in OFFICIAL_FILES:
        if config is None:
            raise UsageError(f"{path!r} is an official state dict: pass --config/--vae-config to convert it")
        conv = _converter(what)
        return conv.torch_to_params(torch_io.load_state_dict(path), config), None
    run = os.path.dirname(os.path.abspath(path))
    hint = f"; the run folder beside it is {run!r}" if os.path.isdir(os.path.join(run, "checkpoints")) else ""
    raise UsageError(
        f"{what} checkpoint {path!r}: unknown file type {ext!r}; expected a folder, "
        f"{'/'.join(PARAMS_FILES)} or {'/'.join(OFFICIAL_FILES)}{hint}"
    )


def _converter(what: str):
    converters = {"transformer": convert_infinity, "vae": convert_vae}
    if what not in converters:
        raise ValueError(f"what={what!r}: expected one of {sorted(converters)}")
    return converters[what]


def _is_step_folder(path: str) -> bool:
    """An orbax step folder: named by its step number, with the state in it (temporary ones are named
    '<step>.orbax-checkpoint-tmp-...')."""
    return os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, "state"))


def find_checkpoints(path: str, step: int | None = None, what: str = "transformer") -> tuple[str, int | None, str]:
    """(orbax checkpoints folder, step or None for the latest, run folder) of a checkpoint folder given as
    a run (`<run>/checkpoints/<step>/`), its checkpoints folder (`<dir>/<step>/`) or one step folder
    (`<step>/state`, `<step>/config`: that step; `step`, when given, must be the same)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), step, path
    if _is_step_folder(path):
        own = int(os.path.basename(path))
        if step is not None and step != own:
            raise UsageError(
                f"--step {step}, but {what} checkpoint {path!r} is the folder of step {own}: "
                f"expected the run folder with --step, or the step folder alone"
            )
        root = os.path.dirname(path)
        return root, own, _run_dir(root)
    names = sorted(os.listdir(path))
    if any(_is_step_folder(os.path.join(path, n)) for n in names):
        return path, step, _run_dir(path)
    found = ", ".join(names[:6]) + (f", ... ({len(names)} entries)" if len(names) > 6 else "") if names else "nothing"
    raise UsageError(
        f"{what} checkpoint {path!r} is a folder without checkpoints (it holds {found}): expected {RUN_FOLDERS}"
    )


def _run_dir(root: str) -> str:
    """The run folder of an orbax checkpoints folder (its parent when it is `<run>/checkpoints`)."""
    return os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root


def load_run(path: str, prefer_ema: bool, step: int | None = None, what: str = "transformer"):
    """(params, config, step) of a run folder, through infinity_jax.checkpoint (params only; the latest
    step unless `step`). The config is read and checked first: a run of something else reads no params."""
    root, step, run_dir = find_checkpoints(path, step, what)
    ck = Checkpointer(root, read_only=True)
    try:
        steps = ck.all_steps()
        if step is not None and step not in steps:
            raise UsageError(
                f"--step {step}: {root} holds the complete steps {sorted(steps) or 'none'}: expected one of them"
            )
        if what == "transformer":
            _check_transformer_run(path, ck.restore_config(step))
        params, config, step, key = ck.restore_params(step, prefer_ema=prefer_ema)
    except (FileNotFoundError, ValueError) as e:  # UsageError included
        raise UsageError(str(e)) from e
    finally:
        ck.close()
    print(f"[runs] loaded {key} of step {step} from {root}", file=sys.stderr)
    return params, run_relative_paths(ml_collections.ConfigDict(config), run_dir), step


def _check_transformer_run(path: str, config) -> None:
    """A clear error when a run's config is not a transformer's (a tokenizer run, say)."""
    if "model" in config:
        return
    tokenizer = "vae" in config and "loss" in config  # configs/tokenizer_shapes.py: vae + loss, no model
    kind = "a tokenizer run (`infinity-jax train-tokenizer`)" if tokenizer else "a run"
    raise UsageError(
        f"transformer checkpoint {path!r} is {kind} whose config has no `model` section "
        f"(sections: {', '.join(sorted(config)) or 'none'}): expected a transformer run "
        f"(`infinity-jax train`) or an `infinity-jax import-torch` folder"
        + ("; a tokenizer's vae_params.npz goes to --vae" if tokenizer else "")
    )


def _params_kind(names) -> str | None:
    """'BSQ-VAE' when the top-level param names are a VAE's (encoder, decoder), not a transformer's."""
    names = set(names)
    return "BSQ-VAE" if {"encoder", "decoder"} <= names and "word_embed" not in names else None


def check_params_file(path: str) -> None:
    """A clear error for a VAE params file given as the transformer (an .npz's names are read, not its arrays)."""
    if os.path.splitext(path)[1].lower() != ".npz":
        return
    try:
        with np.load(path, allow_pickle=False) as f:
            names = {k.split("/")[0] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"--checkpoint {path!r} is not a readable .npz params file ({e})") from e
    kind = _params_kind(names)
    if kind:
        raise UsageError(
            f"--checkpoint {path!r} holds {kind} params ({', '.join(sorted(names))}), not a "
            f"transformer's: pass it as --vae, and the transformer (a run folder or params file) "
            f"as --checkpoint"
        )


def run_relative_paths(config, run_dir: str):
    """vae.params / vae.config given relative to the run folder (what import-torch writes) -> absolute
    paths; any other value (a path relative to the working directory, a config spec) is kept."""
    vae = config.get("vae")
    for key in ("params", "config"):
        value = str(vae.get(key, "")) if vae is not None else ""
        if value and not os.path.isabs(value) and os.path.exists(os.path.join(run_dir, value)):
            vae[key] = os.path.join(os.path.abspath(run_dir), value)
    return config


def check_params_shapes(params, model_cfg, path):
    """A clear error when the weights do not fit the config (names the first mismatches)."""
    want = {k: tuple(v.shape) for k, v in fileio.flatten(nn.unbox(abstract_params(model_cfg))).items()}
    got = {k: tuple(np.shape(v)) for k, v in fileio.flatten(params).items()}
    bad = [
        f"{k}: {got.get(k, 'missing')} (expected {want.get(k, 'none')})"
        for k in sorted(set(want) | set(got))
        if got.get(k) != want.get(k)
    ]
    if bad:
        kind = _params_kind(params)
        if kind:  # e.g. a tokenizer's vae_params.npz as --checkpoint, with --config
            raise UsageError(
                f"--checkpoint {path!r} holds {kind} params ({', '.join(sorted(params))}), not a "
                f"transformer's: pass it as --vae, and the transformer as --checkpoint"
            )
        raise UsageError(f"{path!r} does not fit the model config ({len(bad)} mismatches): " + "; ".join(bad[:5]))
