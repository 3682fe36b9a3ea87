"""`infinity-jax sample`: text -> images with the one-program sampler (infinity_jax/sample.py).

usage:
  infinity-jax sample --config infinity_2b --checkpoint infinity_2b.npz --vae vae_d32reg.npz \\
      --vae-config d32reg --text-encoder flan-t5-xl,path=weights/flan-t5-xl \\
      --prompt "a cat on a sofa" [--prompt ...] [--prompts-file prompts.txt] [--negative-prompt "..."] \\
      --h-div-w 1.0 --pn 1M --cfg 3 --tau 1 --seed 0 --out samples/
  infinity-jax sample --checkpoint runs/t2i [--step 1500] --prompt "a photo of a red circle" --out samples/

Writes out/<index>_<prompt slug>.png (RGB), out/grid.png (more than one image) and
out/samples.json (prompt, seed, file and the settings of every image); prints the compile time
and each batch's latency, and (unless --no-progress) every scale as it finishes. The folder
appears whole: it is written as a hidden temporary sibling of --out and renamed at the end; a
non-empty --out is refused unless --overwrite, which replaces it (nothing of the old folder stays).

Weights (see `load_weights`): an orbax checkpoint folder written by the training loop (its
config is used when --config is not given; EMA params are preferred when saved; --step picks a
step, default the latest), or a params file (.npz / .msgpack) written by our converters
(`infinity-jax convert-infinity` / `convert-vae`), or an official .pth / .safetensors state dict,
converted on the fly. --cfg, --tau, --top-k and --top-p default to the run config's `sample`
section (the settings the run was tuned with), else to the official defaults (3, 1, 900, 0.97).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from typing import Any

import numpy as np

from infinity_jax.errors import UsageError

PARAMS_FILES = (".npz", ".msgpack")
OFFICIAL_FILES = (".pth", ".pt", ".bin", ".safetensors")
# sample.DEFAULT_CFG / _TAU / _TOP_K / _TOP_P (the official defaults), here so that --help imports no jax
SAMPLING_DEFAULTS = {"cfg": "3", "tau": "1", "top_k": 900, "top_p": 0.97}
RUN_FOLDERS = "a training run folder (checkpoints/<step>/state), its checkpoints/ folder or one <step>/ folder of it"


# ---------------------------------------------------------------- weights
def load_weights(path: str, what: str, config=None, prefer_ema: bool = True,
                 step: int | None = None) -> tuple[dict, Any]:
    """(params, config saved beside them or None) from a checkpoint folder or a params file.

    what: 'transformer' or 'vae' (picks the official converter for .pth files); config: the model
    config (an InfinityConfig / ConfigDict), needed for official state dicts only. A folder is an
    orbax checkpoint of the training loop (see `find_checkpoints`): `<dir>[/checkpoints]/<step>/state/
    {params,ema_params}` and `<step>/config/`; step `step` (default: the latest, or the step of a step
    folder) is read, params only (no optimizer state). A transformer run must have a `model` config.
    """
    if not path or not os.path.exists(path):
        raise UsageError(f"{what} checkpoint {path!r} does not exist: expected an orbax checkpoint folder, "
                         f"a params file ({'/'.join(PARAMS_FILES)}) or an official state dict "
                         f"({'/'.join(OFFICIAL_FILES)})")
    if os.path.isdir(path):
        params, config, _ = _load_orbax(path, prefer_ema, step, what)
        return params, config
    if step is not None:
        raise UsageError(f"--step {step}: {what} checkpoint {path!r} is a file, which holds one set of params; "
                         f"expected {RUN_FOLDERS}")
    ext = os.path.splitext(path)[1].lower()
    if ext in PARAMS_FILES:
        from infinity_jax.convert import common
        return common.load_params(path), None
    if ext in OFFICIAL_FILES:
        from infinity_jax.convert import torch_io
        if config is None:
            raise UsageError(f"{path!r} is an official state dict: pass --config/--vae-config to convert it")
        conv = _converter(what)
        return conv.torch_to_params(torch_io.load_state_dict(path), config), None
    run = os.path.dirname(os.path.abspath(path))
    hint = f"; the run folder beside it is {run!r}" if os.path.isdir(os.path.join(run, "checkpoints")) else ""
    raise UsageError(f"{what} checkpoint {path!r}: unknown file type {ext!r}; expected a folder, "
                     f"{'/'.join(PARAMS_FILES)} or {'/'.join(OFFICIAL_FILES)}{hint}")


def _converter(what: str):
    if what == "transformer":
        from infinity_jax.convert import infinity as conv
    elif what == "vae":
        from infinity_jax.convert import vae as conv
    else:
        raise ValueError(f"what={what!r}: expected 'transformer' or 'vae'")
    return conv


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
            raise UsageError(f"--step {step}, but {what} checkpoint {path!r} is the folder of step {own}: "
                             f"expected the run folder with --step, or the step folder alone")
        root = os.path.dirname(path)
        return root, own, _run_dir(root)
    names = sorted(os.listdir(path))
    if any(_is_step_folder(os.path.join(path, n)) for n in names):
        return path, step, _run_dir(path)
    found = ", ".join(names[:6]) + (f", ... ({len(names)} entries)" if len(names) > 6 else "") if names else "nothing"
    raise UsageError(f"{what} checkpoint {path!r} is a folder without checkpoints (it holds {found}): "
                     f"expected {RUN_FOLDERS}")


def _run_dir(root: str) -> str:
    """The run folder of an orbax checkpoints folder (its parent when it is `<run>/checkpoints`)."""
    return os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root


def _load_orbax(path: str, prefer_ema: bool, step: int | None = None, what: str = "transformer"):
    """(params, config, step) of a run folder, through infinity_jax.checkpoint (params only; the latest
    step unless `step`). The config is read and checked first: a run of something else reads no params."""
    import ml_collections
    from infinity_jax.checkpoint import Checkpointer
    root, step, run_dir = find_checkpoints(path, step, what)
    ck = Checkpointer(root, read_only=True)
    try:
        steps = ck.all_steps()
        if step is not None and step not in steps:
            raise UsageError(f"--step {step}: {root} holds the complete steps {sorted(steps) or 'none'}: "
                             f"expected one of them")
        if what == "transformer":
            _check_transformer_run(path, ck.restore_config(step))
        params, config, step, key = ck.restore_params(step, prefer_ema=prefer_ema)
    except (FileNotFoundError, ValueError) as e:  # UsageError included
        raise UsageError(str(e)) from e
    finally:
        ck.close()
    print(f"[sample] loaded {key} of step {step} from {root}", file=sys.stderr)
    return params, run_relative_paths(ml_collections.ConfigDict(config), run_dir), step


def _check_transformer_run(path: str, config) -> None:
    """A clear error when a run's config is not a transformer's (a tokenizer run, say)."""
    if "model" in config:
        return
    tokenizer = "vae" in config and "loss" in config  # configs/tokenizer_shapes.py: vae + loss, no model
    kind = "a tokenizer run (`infinity-jax train-tokenizer`)" if tokenizer else "a run"
    raise UsageError(f"transformer checkpoint {path!r} is {kind} whose config has no `model` section "
                     f"(sections: {', '.join(sorted(config)) or 'none'}): expected a transformer run "
                     f"(`infinity-jax train`) or an `infinity-jax import-torch` folder"
                     + ("; a tokenizer's vae_params.npz goes to --vae" if tokenizer else ""))


def _params_kind(names) -> str | None:
    """'BSQ-VAE' when the top-level param names are a VAE's (encoder, decoder), not a transformer's."""
    names = set(names)
    return "BSQ-VAE" if {"encoder", "decoder"} <= names and "word_embed" not in names else None


def _check_params_file(path: str) -> None:
    """A clear error for a VAE params file given as the transformer (an .npz's names are read, not its arrays)."""
    if os.path.splitext(path)[1].lower() != ".npz":
        return
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as f:
            names = {k.split("/")[0] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"--checkpoint {path!r} is not a readable .npz params file ({e})") from e
    kind = _params_kind(names)
    if kind:
        raise UsageError(f"--checkpoint {path!r} holds {kind} params ({', '.join(sorted(names))}), not a "
                         f"transformer's: pass it as --vae, and the transformer (a run folder or params file) "
                         f"as --checkpoint")


def run_relative_paths(config, run_dir: str):
    """vae.params / vae.config given relative to the run folder (what import-torch writes) -> absolute
    paths; any other value (a path relative to the working directory, a config spec) is kept."""
    vae = config.get("vae")
    for key in ("params", "config"):
        value = str(vae.get(key, "")) if vae is not None else ""
        if value and not os.path.isabs(value) and os.path.exists(os.path.join(run_dir, value)):
            vae[key] = os.path.join(os.path.abspath(run_dir), value)
    return config


# ---------------------------------------------------------------- prompts and images
def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """--prompt values then the file's non-blank lines; an empty prompt is an error."""
    out = list(prompts or [])
    for i, p in enumerate(out):
        if not p.strip():
            raise UsageError(f"--prompt number {i + 1} is empty: expected some text")
    if prompts_file:
        if not os.path.isfile(prompts_file):
            raise UsageError(f"--prompts-file {prompts_file!r} does not exist")
        with open(prompts_file, encoding="utf-8") as f:
            out += [line.strip() for line in f if line.strip()]
    if not out:
        raise UsageError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE (one per line)")
    return out


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "prompt"


def grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H, cols*W, 3) image, row-major, black where empty."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    return out


def save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(np.asarray(image, np.uint8)).save(path)


# ---------------------------------------------------------------- command
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; every flag's default appended to its help unless the help names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infinity-jax sample", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--config", default=None, help="transformer config: configs/infinity.py name (options after "
                   "commas, e.g. infinity_2b,dtype=bfloat16) or file.py[:arg]; default: the checkpoint's")
    p.add_argument("--checkpoint", required=True, help="transformer weights: a training run folder (or its "
                   "checkpoints/ or checkpoints/<step>/ folder), .npz/.msgpack params or an official .pth")
    p.add_argument("--step", type=int, default=None, help="the step of a run folder to sample (its params and the "
                   "config saved with them); default: the latest")
    p.add_argument("--vae", default=None, help="BSQ-VAE weights: .npz/.msgpack params or an official .pth; "
                   "default: the one named by a training checkpoint's config")
    p.add_argument("--vae-config", default="d32", help="configs/bsq_vae.py name or file.py[:arg] (default d32)")
    p.add_argument("--text-encoder", default=None,
                   help="configs/t5.py argument, e.g. 'flan-t5-xl,path=weights/flan-t5-xl', or a Hugging Face "
                        "folder; without a path the encoder is random (smoke tests only); default: a training "
                        "checkpoint's text encoder, else flan-t5-xl")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="one prompt per line")
    p.add_argument("--negative-prompt", default="", help="text for the uncond half of CFG (default: null text)")
    p.add_argument("--h-div-w", type=float, default=None, help="aspect ratio h/w; the nearest official template "
                   "(default: a training checkpoint's data.h_div_w, else 1.0)")
    p.add_argument("--pn", default=None, help="pixel budget: 0.06M, 0.25M, 0.60M or 1M (default: a training "
                   "checkpoint's schedule, else 1M)")
    p.add_argument("--schedule", default=None, help="a custom schedule 'HxW,HxW,...' (latent sides) instead "
                   "of --h-div-w/--pn, for small models and smoke runs")
    d = SAMPLING_DEFAULTS
    p.add_argument("--cfg", default=None, help="guidance: a number, one per scale 'a,b,...', or 'lin:A:B' "
                   f"(default: the run config's sample.cfg, else {d['cfg']})")
    p.add_argument("--tau", default=None, help="temperature, same forms as --cfg (default: the run config's "
                   f"sample.tau, else {d['tau']})")
    p.add_argument("--top-k", type=int, default=None, help="per bit: 1 keeps the larger logit only; 0 or >= 2 off "
                   f"(default: the run config's sample.top_k, else {d['top_k']})")
    p.add_argument("--top-p", type=float, default=None, help="per bit nucleus; 0 off (default: the run config's "
                   f"sample.top_p, else {d['top_p']})")
    p.add_argument("--greedy", action="store_true", help="argmax per bit (deterministic)")
    p.add_argument("--seed", type=int, default=0, help="image i gets seed + i")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per program call")
    p.add_argument("--dtype", default=None, help="compute dtype override for transformer and VAE (bfloat16 on GPU/TPU)")
    p.add_argument("--rules", default="dp", help="sharding preset over all devices: dp, fsdp, fsdp_tp")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh size (with --rules fsdp_tp)")
    p.add_argument("--no-ema", action="store_true", help="use params, not ema_params, of an orbax checkpoint")
    p.add_argument("--no-progress", action="store_true", help="do not print each scale as it finishes")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out whole (its old files "
                   "are deleted once the new images are written)")
    return p


def check_out(out: str, overwrite: bool, inputs: list[tuple[str, str | None]] = ()) -> str:
    """The absolute --out folder, refused as import-torch refuses it: a file, or a non-empty folder without
    `overwrite`. Replacing a folder that holds the working directory or one of `inputs` ((flag, path) pairs:
    the checkpoint, prompts file, ...) is refused too: it would delete them."""
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a file: expected a folder (new, or empty)")
    if not os.path.isdir(out):
        return out
    if os.listdir(out) and not overwrite:
        raise UsageError(f"--out {out!r} exists and is not empty: pass --overwrite to replace it")
    real = os.path.realpath(out)
    for flag, path in [("the working directory", os.getcwd()), *inputs]:
        if path and os.path.exists(path) and os.path.commonpath([real, os.path.realpath(path)]) == real:
            raise UsageError(f"--out {out!r} holds {flag} {path!r}, which replacing the folder would delete: "
                             f"expected a separate output folder")
    return out


def sampling_settings(args, ckpt_config) -> tuple[dict, dict]:
    """({'cfg', 'tau', 'top_k', 'top_p'}, where each came from): the flag when given, else the run config's
    optional `sample` section (the settings the run was tuned with), else SAMPLING_DEFAULTS."""
    section = ckpt_config.get("sample") if ckpt_config is not None else None
    values, source = {}, {}
    for name, default in SAMPLING_DEFAULTS.items():
        given = getattr(args, name)
        saved = section.get(name) if section is not None and hasattr(section, "get") else None
        if given is not None:
            values[name], source[name] = given, "flag"
        elif saved is not None:
            values[name], source[name] = saved, "run config"
        else:
            values[name], source[name] = default, "default"
    for name, kind in (("top_k", int), ("top_p", float)):
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            want = "an integer" if kind is int else "a number"
            raise UsageError(f"the run config's sample.{name}={v!r}: expected {want}")
        values[name] = kind(v)
    return values, source


def _sampling_params(num_scales: int, settings: dict, source: dict, greedy: bool):
    from infinity_jax import sample
    try:
        return sample.sampling_params(num_scales, settings["cfg"], settings["tau"], settings["top_k"],
                                      settings["top_p"], greedy)
    except ValueError as e:
        saved = [k for k, v in source.items() if v == "run config"]
        where = f" (from the run config's sample section: {', '.join(saved)})" if saved else ""
        raise UsageError(f"{e}{where}") from e


def resolve_schedule(h_div_w: float, pn: str, custom: str | None = None):
    """(schedule, h/w template used or None): the official template nearest h_div_w at budget pn,
    or a custom 'HxW,...' list (small models and smoke runs)."""
    from infinity_jax import schedules
    try:
        if custom:
            return schedules.parse_schedule(custom), None
        return schedules.official_schedule(h_div_w, pn), schedules.nearest_h_div_w(h_div_w)
    except ValueError as e:
        raise UsageError(str(e)) from e


def _schedule_args(args, ckpt_config) -> tuple[str, float, str | None]:
    """(pixel budget, h/w, custom schedule or None): the flags first, then a checkpoint's `schedule`
    (a budget, whose template --h-div-w still picks, or a custom 'HxW,...'), then 1M at h/w 1."""
    from infinity_jax import schedules
    saved = str(ckpt_config.get("schedule", "") or "") if ckpt_config is not None else ""
    data = ckpt_config.get("data") if ckpt_config is not None else None
    h_div_w = args.h_div_w if args.h_div_w is not None else float(data.get("h_div_w", 1.0) if data else 1.0)
    custom = args.schedule
    if custom is None and args.pn is None and saved and saved not in schedules.PIXEL_BUDGETS:
        custom = saved
    pn = args.pn or (saved if saved in schedules.PIXEL_BUDGETS else "1M")
    return pn, h_div_w, custom


def _model_config(args, ckpt_config):
    from infinity_jax.convert import infinity as conv
    from infinity_jax.model.transformer import InfinityConfig
    if args.config:
        try:
            section = conv.load_config(args.config).model
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--config {args.config!r}: {e}") from e
    elif ckpt_config is not None and "model" in ckpt_config:
        section = ckpt_config.model
    else:
        kind = "an official state dict" if args.checkpoint.lower().endswith(OFFICIAL_FILES) else "a params file"
        raise UsageError(f"--checkpoint {args.checkpoint!r} is {kind}, which names no model config: pass "
                         f"--config (the configs/infinity.py name it was made with, e.g. infinity_2b), or give "
                         f"{RUN_FOLDERS}")
    d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    if args.dtype:
        d["dtype"] = args.dtype
    d["remat"] = "none"
    return InfinityConfig.from_dict(d)


def _vae(args, ckpt_config):
    """(VAE config, params): --vae/--vae-config, else what a training checkpoint's config names."""
    if args.vae is None:
        if ckpt_config is None or "vae" not in ckpt_config:
            raise UsageError("no VAE: pass --vae PARAMS (and --vae-config) for a params-file checkpoint")
        from infinity_jax.train.cli import build_vae
        _, cfg, params = build_vae(ckpt_config)
    else:
        from infinity_jax.convert import vae as conv
        try:
            cfg = conv.load_config(args.vae_config)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--vae-config {args.vae_config!r}: {e}") from e
        params, _ = load_weights(args.vae, "vae", cfg)
    if args.dtype:
        cfg.dtype = args.dtype
    return cfg, params


def _text_encoder(spec: str | None, width: int, ckpt_config=None):
    from infinity_jax import config_util
    from infinity_jax.text.encoder import TextEncoder, build_text_encoder
    if spec is None and ckpt_config is not None and "text" in ckpt_config:  # the encoder the model trained with
        from infinity_jax.train.cli import build_text
        config, params, tokenizer = build_text(ckpt_config)
        return TextEncoder(config, params, tokenizer)
    spec = spec or "flan-t5-xl"
    if os.path.isdir(spec):
        spec = f"flan-t5-xl,path={spec}"
    try:
        cfg = config_util.load_config(f"t5:{spec}")
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--text-encoder {spec!r}: {e}") from e
    if cfg.path and not os.path.isdir(cfg.path):
        raise UsageError(f"--text-encoder path {cfg.path!r} does not exist: expected a Hugging Face T5 folder")
    if not cfg.path:
        print(f"[sample] warning: random-initialised text encoder ({cfg.preset}, width {width}); images will not "
              "follow the prompts", file=sys.stderr)
        cfg.model.d_model = width
    enc = build_text_encoder(cfg)
    if enc.width != width:
        raise UsageError(f"text encoder width {enc.width} does not match the model's text_channels={width}")
    return enc


def run(args) -> dict:
    """Samples args.prompt / args.prompts_file into the folder args.out (see the module docstring) and
    returns the summary written as samples.json. The folder is written beside args.out and swapped in
    whole at the end, replacing any old one: `main` first refuses a non-empty --out without --overwrite."""
    import jax
    from infinity_jax import parallel, sample, schedules
    from infinity_jax.convert import common
    prompts = read_prompts(args.prompt, args.prompts_file)
    params, ckpt_config, step = None, None, None
    if os.path.isdir(args.checkpoint):  # a folder carries its config
        params, ckpt_config, step = _load_orbax(args.checkpoint, not args.no_ema, args.step)
    elif not os.path.exists(args.checkpoint):
        load_weights(args.checkpoint, "transformer")  # raises: names what was expected
    elif args.step is not None or not args.checkpoint.lower().endswith(PARAMS_FILES + OFFICIAL_FILES):
        load_weights(args.checkpoint, "transformer", step=args.step)  # raises: a file has no steps, or a bad type
    else:
        _check_params_file(args.checkpoint)
    pn, h_div_w, custom = _schedule_args(args, ckpt_config)
    schedule, template = resolve_schedule(h_div_w, pn, custom)
    settings, source = sampling_settings(args, ckpt_config)
    sp = _sampling_params(len(schedule), settings, source, args.greedy)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected >= 1")

    model_cfg = _model_config(args, ckpt_config)
    if params is None:
        params, _ = load_weights(args.checkpoint, "transformer", model_cfg)
    _check_shapes(params, model_cfg, args.checkpoint)
    vae_cfg, vae_params = _vae(args, ckpt_config)
    H, W = schedules.image_size(schedule, stride=int(vae_cfg.patch_size))

    mesh = None
    if jax.device_count() > 1:
        mesh = parallel.make_mesh(tensor=args.tensor)
    encoder = _text_encoder(args.text_encoder, model_cfg.text_channels, ckpt_config)
    sampler = sample.Sampler(model_cfg, schedule, vae=vae_cfg, mesh=mesh, rules=args.rules,
                             cfg_batch=sample.uses_guidance(sp), progress=not args.no_progress)
    params, vae_params = sampler.place_params(params, vae_params)

    # every prompt's features padded to one length: one program for all batches
    feats, mask = (np.asarray(a) for a in encoder.encode_text(prompts))
    neg = None
    if args.negative_prompt:
        if not sampler.cfg_batch:
            raise UsageError("--negative-prompt needs guidance (cfg != 1)")
        nf, nm = (np.asarray(a) for a in encoder.encode_text([args.negative_prompt]))
        neg = (nf, nm)
    bsz = -(-min(args.batch_size, len(prompts)) // sampler.batch_multiple) * sampler.batch_multiple
    where = f"h/w template {template}, {pn}" if template is not None else "custom schedule"
    print(f"[sample] {len(prompts)} prompt(s), {W}x{H} ({where}, {len(schedule)} scales, "
          f"{schedules.num_tokens(schedule)} tokens), batch {bsz}, {jax.device_count()} device(s)", file=sys.stderr)
    print("[sample] " + ", ".join(f"{k} {settings[k]} ({source[k]})" for k in SAMPLING_DEFAULTS), file=sys.stderr)
    records, images_all = [], []
    with common.atomic_folder(args.out) as tmp:  # the old folder stays whole until the new one is
        for start in range(0, len(prompts), bsz):
            idx = list(range(start, min(start + bsz, len(prompts))))
            take = idx + [idx[-1]] * (bsz - len(idx))  # pad the last batch by repeating its last prompt
            seeds = np.asarray([args.seed + i for i in take], np.int64)
            kw = {} if neg is None else dict(neg_text=neg[0], neg_mask=neg[1])
            t0 = time.perf_counter()
            out = sampler(params, vae_params, feats[take], mask[take], seeds, sp, **kw)
            images = np.asarray(jax.device_get(out.images))
            dt = time.perf_counter() - t0
            compiled = sum(sampler.compile_seconds.values())
            print(f"[sample] batch {start // bsz + 1}: {dt:.2f}s ({len(idx)} image(s); compile so far "
                  f"{compiled:.1f}s, {sampler.num_compiles} program(s))", file=sys.stderr)
            for j, i in enumerate(idx):
                name = f"{i:04d}_{slug(prompts[i])}.png"
                save_png(images[j], os.path.join(tmp, name))
                images_all.append(images[j])
                records.append({"index": i, "prompt": prompts[i], "seed": int(seeds[j]), "file": name})
        if len(images_all) > 1 and not args.no_grid:
            save_png(grid(np.stack(images_all)), os.path.join(tmp, "grid.png"))
        summary = {"checkpoint": os.path.abspath(args.checkpoint), "step": step,
                   "schedule": [list(s) for s in schedule], "h_div_w_template": template,
                   "pn": None if template is None else pn,
                   "image_hw": [H, W], "cfg": [float(v) for v in sp.cond_w],
                   "tau": [float(1 / v) for v in sp.inv_tau], "top_k": settings["top_k"],
                   "top_p": settings["top_p"], "greedy": args.greedy, "settings_from": source,
                   "negative_prompt": args.negative_prompt, "compile_s": sum(sampler.compile_seconds.values()),
                   "samples": records}
        with open(os.path.join(tmp, "samples.json"), "w") as f:
            json.dump(summary, f, indent=1)
    print(f"[sample] wrote {len(records)} image(s) to {args.out}", file=sys.stderr)
    return summary


def _check_shapes(params, model_cfg, path):
    """A clear error when the weights do not fit the config (names the first mismatches)."""
    from flax import linen as nn
    from infinity_jax.convert import common
    from infinity_jax.model.transformer import abstract_params
    want = {k: tuple(v.shape) for k, v in common.flatten(nn.unbox(abstract_params(model_cfg))).items()}
    got = {k: tuple(np.shape(v)) for k, v in common.flatten(params).items()}
    bad = [f"{k}: {got.get(k, 'missing')} (expected {want.get(k, 'none')})"
           for k in sorted(set(want) | set(got)) if got.get(k) != want.get(k)]
    if bad:
        kind = _params_kind(params)
        if kind:  # e.g. a tokenizer's vae_params.npz as --checkpoint, with --config
            raise UsageError(f"--checkpoint {path!r} holds {kind} params ({', '.join(sorted(params))}), not a "
                             f"transformer's: pass it as --vae, and the transformer as --checkpoint")
        raise UsageError(f"{path!r} does not fit the model config ({len(bad)} mismatches): " + "; ".join(bad[:5]))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    inputs = [("--checkpoint", args.checkpoint), ("--vae", args.vae), ("--prompts-file", args.prompts_file),
              ("--text-encoder", args.text_encoder)]
    check_out(args.out, args.overwrite, inputs)  # before any weights load
    run(args)  # a UsageError (bad input) is printed by cli.main, exit status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
