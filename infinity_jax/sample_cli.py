"""`infinity-jax sample`: text -> images with the one-program sampler (infinity_jax/sample.py).

usage:
  infinity-jax sample --config infinity_2b --checkpoint infinity_2b.npz --vae vae_d32reg.npz \\
      --vae-config d32reg --text-encoder flan-t5-xl,path=weights/flan-t5-xl \\
      --prompt "a cat on a sofa" [--prompt ...] [--prompts-file prompts.txt] [--negative-prompt "..."] \\
      --h-div-w 1.0 --pn 1M --cfg 3 --tau 1 --seed 0 --out samples/

Writes out/<index>_<prompt slug>.png (RGB), out/grid.png (more than one image) and
out/samples.json (prompt, seed, file and the settings of every image); prints the compile time
and each batch's latency, and (unless --no-progress) every scale as it finishes.

Weights (see `load_weights`): an orbax checkpoint folder written by the training loop (its
config is used when --config is not given; EMA params are preferred when saved), or a params
file (.npz / .msgpack) written by our converters (`infinity-jax convert-infinity` /
`convert-vae`), or an official .pth / .safetensors state dict, converted on the fly.
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


# ---------------------------------------------------------------- weights
def load_weights(path: str, what: str, config=None, prefer_ema: bool = True) -> tuple[dict, Any]:
    """(params, config saved beside them or None) from a checkpoint folder or a params file.

    what: 'transformer' or 'vae' (picks the official converter for .pth files); config: the model
    config (an InfinityConfig / ConfigDict), needed for official state dicts only. A folder is an
    orbax checkpoint of the training loop: `<dir>[/checkpoints]/<step>/state/{params,ema_params}`
    and `<step>/config/`; the latest step is read, params only (no optimizer state).
    """
    if not path or not os.path.exists(path):
        raise UsageError(f"{what} checkpoint {path!r} does not exist: expected an orbax checkpoint folder, "
                         f"a params file ({'/'.join(PARAMS_FILES)}) or an official state dict "
                         f"({'/'.join(OFFICIAL_FILES)})")
    if os.path.isdir(path):
        return _load_orbax(path, prefer_ema)
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
    raise UsageError(f"{what} checkpoint {path!r}: unknown file type {ext!r}; expected a folder, "
                     f"{'/'.join(PARAMS_FILES)} or {'/'.join(OFFICIAL_FILES)}")


def _converter(what: str):
    if what == "transformer":
        from infinity_jax.convert import infinity as conv
    elif what == "vae":
        from infinity_jax.convert import vae as conv
    else:
        raise ValueError(f"what={what!r}: expected 'transformer' or 'vae'")
    return conv


def _load_orbax(path: str, prefer_ema: bool):
    """(params, config) of a run folder, through infinity_jax.checkpoint (params only, latest step)."""
    import ml_collections
    from infinity_jax.checkpoint import Checkpointer
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    ck = Checkpointer(root, read_only=True)
    try:
        params, config, step, key = ck.restore_params(prefer_ema=prefer_ema)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    finally:
        ck.close()
    print(f"[sample] loaded {key} of step {step} from {root}", file=sys.stderr)
    run_dir = os.path.dirname(os.path.abspath(root)) if os.path.basename(os.path.abspath(root)) == "checkpoints" else root
    return params, run_relative_paths(ml_collections.ConfigDict(config), run_dir)


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
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infinity-jax sample", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="transformer config: configs/infinity.py name (options after "
                   "commas, e.g. infinity_2b,dtype=bfloat16) or file.py[:arg]; default: the checkpoint's")
    p.add_argument("--checkpoint", required=True, help="transformer weights: orbax folder, .npz/.msgpack or .pth")
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
    p.add_argument("--cfg", default="3", help="guidance: a number, one per scale 'a,b,...', or 'lin:A:B'")
    p.add_argument("--tau", default="1", help="temperature, same forms as --cfg")
    p.add_argument("--top-k", type=int, default=900, help="per bit: 1 keeps the larger logit only; 0 or >= 2 off")
    p.add_argument("--top-p", type=float, default=0.97, help="per bit nucleus; 0 off")
    p.add_argument("--greedy", action="store_true", help="argmax per bit (deterministic)")
    p.add_argument("--seed", type=int, default=0, help="image i gets seed + i")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per program call")
    p.add_argument("--dtype", default=None, help="compute dtype override for transformer and VAE (bfloat16 on GPU/TPU)")
    p.add_argument("--rules", default="dp", help="sharding preset over all devices: dp, fsdp, fsdp_tp")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh size (with --rules fsdp_tp)")
    p.add_argument("--no-ema", action="store_true", help="use params, not ema_params, of an orbax checkpoint")
    p.add_argument("--no-progress", action="store_true", help="do not print each scale as it finishes")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    p.add_argument("--out", required=True, help="output folder")
    return p


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
        raise UsageError("no model config: pass --config (e.g. infinity_2b) for a params file")
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
    import jax
    from infinity_jax import parallel, sample, schedules
    prompts = read_prompts(args.prompt, args.prompts_file)
    params, ckpt_config = None, None
    if not os.path.isfile(args.checkpoint):  # a folder carries its config; a missing path fails here
        params, ckpt_config = load_weights(args.checkpoint, "transformer", prefer_ema=not args.no_ema)
    pn, h_div_w, custom = _schedule_args(args, ckpt_config)
    schedule, template = resolve_schedule(h_div_w, pn, custom)
    try:
        sp = sample.sampling_params(len(schedule), args.cfg, args.tau, args.top_k, args.top_p, args.greedy)
    except ValueError as e:
        raise UsageError(str(e)) from e
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
    os.makedirs(args.out, exist_ok=True)
    records, images_all = [], []
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
            save_png(images[j], os.path.join(args.out, name))
            images_all.append(images[j])
            records.append({"index": i, "prompt": prompts[i], "seed": int(seeds[j]), "file": name})
    if len(images_all) > 1 and not args.no_grid:
        save_png(grid(np.stack(images_all)), os.path.join(args.out, "grid.png"))
    summary = {"schedule": [list(s) for s in schedule], "h_div_w_template": template,
               "pn": None if template is None else pn,
               "image_hw": [H, W], "cfg": [float(v) for v in sp.cond_w], "tau": [float(1 / v) for v in sp.inv_tau],
               "top_k": args.top_k, "top_p": args.top_p, "greedy": args.greedy,
               "negative_prompt": args.negative_prompt, "compile_s": sum(sampler.compile_seconds.values()),
               "samples": records}
    with open(os.path.join(args.out, "samples.json"), "w") as f:
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
        raise UsageError(f"{path!r} does not fit the model config ({len(bad)} mismatches): " + "; ".join(bad[:5]))


def main(argv: list[str] | None = None) -> int:
    run(_parser().parse_args(argv))  # a UsageError (bad input) is printed by cli.main, exit status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
