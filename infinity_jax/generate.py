"""Text -> images into a folder, with the one-program sampler (infinity_jax/sample.py): the library entry
point of `infinity-jax sample` (infinity_jax/commands/sample.py) and of the demo.

    from infinity_jax.generate import SampleOptions, sample_to_folder
    summary = sample_to_folder(SampleOptions(checkpoint="runs/t2i", out="samples", prompts=["a red circle"]))

writes out/<index>_<prompt slug>.png (RGB), out/grid.png (more than one image) and out/samples.json (prompt,
seed, file and the settings of every image: the summary returned); prints the compile time and each batch's
latency to stderr, and (with `progress`) every scale as it finishes. The folder appears whole: it is written
as a hidden temporary sibling of `out` and renamed at the end; a non-empty `out` is refused unless
`overwrite`, which replaces it (nothing of the old folder stays).

Weights (see `runs.load_weights`): an orbax checkpoint folder written by the training loop (its config is
used when `config` is not given; EMA params are preferred when saved unless not `ema`; `step` picks a step,
default the latest), or a params file (.npz / .msgpack) written by our converters, or an official .pth /
.safetensors state dict, converted on the fly. cfg, tau, top_k and top_p default to the run config's
`sample` section (the settings the run was tuned with), else to the official defaults (SAMPLING_DEFAULTS).
Bad input raises UsageError naming the value (by its command-line flag) and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

import jax
import numpy as np

from infinity_jax import fileio, parallel, runs, sample, schedules
from infinity_jax.convert import infinity as convert_infinity
from infinity_jax.convert import vae as convert_vae
from infinity_jax.errors import UsageError
from infinity_jax.model.transformer import InfinityConfig
from infinity_jax.text.encoder import TextEncoder, build_text_encoder

# the official sampling settings, used where neither the options nor the run config's `sample` section set one
SAMPLING_DEFAULTS = {
    "cfg": sample.DEFAULT_CFG,
    "tau": sample.DEFAULT_TAU,
    "top_k": sample.DEFAULT_TOP_K,
    "top_p": sample.DEFAULT_TOP_P,
}


@dataclasses.dataclass
class SampleOptions:
    """Every setting of `infinity-jax sample` (its flags, by the same names; see its --help).

    checkpoint: a training run folder (or its checkpoints/ or checkpoints/<step>/ folder), a params file or an
    official state dict; out: the output folder. prompts, then prompts_file's non-blank lines, are sampled.
    None means: what the checkpoint's config says, else the official default. cfg and tau: a number, one per
    scale 'a,b,...' or 'lin:A:B'. schedule: a custom 'HxW,...' (latent sides) instead of h_div_w / pn.
    """

    checkpoint: str
    out: str
    prompts: list[str] = dataclasses.field(default_factory=list)
    prompts_file: str | None = None
    config: str | None = None  # transformer config spec; default: the checkpoint's
    step: int | None = None  # of a run folder; default: the latest
    vae: str | None = None  # BSQ-VAE weights; default: the one a training checkpoint's config names
    vae_config: str | None = None  # default: the released tokenizer of the model (d32; d56 for the patchify 8B)
    text_encoder: str | None = None  # configs/t5.py argument or a Hugging Face folder
    negative_prompt: str = ""
    h_div_w: float | None = None
    pn: str | None = None  # pixel budget, one of schedules.PIXEL_BUDGETS
    schedule: str | None = None
    cfg: str | float | None = None
    tau: str | float | None = None
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    seed: int = 0  # image i gets seed + i
    batch_size: int = 4
    dtype: str | None = None  # compute dtype override for transformer and VAE
    rules: str = "dp"  # sharding preset over all devices: dp, fsdp, fsdp_tp
    tensor: int = 1  # tensor-parallel mesh size (with rules fsdp_tp)
    ema: bool = True  # ema_params, when an orbax checkpoint saved them
    progress: bool = True  # print each scale as it finishes
    grid: bool = True  # write grid.png
    overwrite: bool = False  # replace a non-empty `out` whole


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
        out[r * h : (r + 1) * h, q * w : (q + 1) * w] = im
    return out


def save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(image, np.uint8)).save(path)


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
            raise UsageError(
                f"--out {out!r} holds {flag} {path!r}, which replacing the folder would delete: "
                f"expected a separate output folder"
            )
    return out


# ---------------------------------------------------------------- settings
def sampling_settings(options: SampleOptions, ckpt_config) -> tuple[dict, dict]:
    """({'cfg', 'tau', 'top_k', 'top_p'}, where each came from): the option when given, else the run config's
    optional `sample` section (the settings the run was tuned with), else SAMPLING_DEFAULTS."""
    section = ckpt_config.get("sample") if ckpt_config is not None else None
    values, source = {}, {}
    for name, default in SAMPLING_DEFAULTS.items():
        given = getattr(options, name)
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
    try:
        return sample.sampling_params(
            num_scales, settings["cfg"], settings["tau"], settings["top_k"], settings["top_p"], greedy
        )
    except ValueError as e:
        saved = [k for k, v in source.items() if v == "run config"]
        where = f" (from the run config's sample section: {', '.join(saved)})" if saved else ""
        raise UsageError(f"{e}{where}") from e


def resolve_schedule(options: SampleOptions, ckpt_config) -> tuple[schedules.Schedule, float | None, str]:
    """(schedule, h/w template used or None for a custom one, pixel budget) through schedules.resolve: the
    options first (schedule, else pn at h_div_w), then a checkpoint's `schedule` (a budget, whose template
    h_div_w still picks, or a custom 'HxW,...') and data.h_div_w, then 1M at h/w 1."""
    saved = str(ckpt_config.get("schedule", "") or "") if ckpt_config is not None else ""
    data = ckpt_config.get("data") if ckpt_config is not None else None
    h_div_w = options.h_div_w if options.h_div_w is not None else float(data.get("h_div_w", 1.0) if data else 1.0)
    if options.pn is not None and options.pn not in schedules.PIXEL_BUDGETS:
        raise UsageError(f"pn={options.pn!r}: expected one of {sorted(schedules.PIXEL_BUDGETS)}")
    pn = options.pn or (saved if saved in schedules.PIXEL_BUDGETS else "1M")
    spec = options.schedule
    if spec is None:
        spec = saved if options.pn is None and saved and saved not in schedules.PIXEL_BUDGETS else pn
    try:
        schedule, template = schedules.resolve(spec, h_div_w)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return schedule, template, pn


def _model_config(options: SampleOptions, ckpt_config) -> InfinityConfig:
    if options.config:
        try:
            section = convert_infinity.load_config(options.config).model
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--config {options.config!r}: {e}") from e
    elif ckpt_config is not None and "model" in ckpt_config:
        section = ckpt_config.model
    else:
        kind = "an official state dict" if options.checkpoint.lower().endswith(runs.OFFICIAL_FILES) else "a params file"
        raise UsageError(
            f"--checkpoint {options.checkpoint!r} is {kind}, which names no model config: pass "
            f"--config (the configs/infinity.py name it was made with, e.g. infinity_2b), or give "
            f"{runs.RUN_FOLDERS}"
        )
    d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    if options.dtype:
        d["dtype"] = options.dtype
    d["remat"] = "none"
    return InfinityConfig.from_dict(d)


def _vae(options: SampleOptions, ckpt_config, model_cfg: InfinityConfig):
    """(VAE config, params): options.vae / vae_config (default: the released tokenizer the model reads,
    configs/bsq_vae.py released_for), else what a training checkpoint's config names; checked against the
    model (d bits, or d / 4 at patch 8 under apply_spatial_patchify)."""
    if options.vae is None:
        if ckpt_config is None or "vae" not in ckpt_config:
            raise UsageError("no VAE: pass --vae PARAMS (and --vae-config) for a params-file checkpoint")
        _, cfg, params = runs.build_vae(ckpt_config)
    else:
        spec = options.vae_config or convert_vae.released_for(model_cfg.codebook_dim, model_cfg.apply_spatial_patchify)
        if spec is None:
            raise UsageError(
                f"--vae {options.vae!r}: no released tokenizer has {model_cfg.vae_codebook_dim} bits"
                f"{' at patch 8' if model_cfg.apply_spatial_patchify else ''}: pass --vae-config"
            )
        try:
            cfg = convert_vae.load_config(spec)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--vae-config {spec!r}: {e}") from e
        try:
            model_cfg.check_tokenizer(cfg.codebook_dim, cfg.get("patch_size"), where=f"--vae-config {spec!r}")
        except ValueError as e:
            raise UsageError(str(e)) from e
        params, _ = runs.load_weights(options.vae, "vae", cfg)
    if options.dtype:
        cfg.dtype = options.dtype
    return cfg, params


def _text_encoder(spec: str | None, width: int, ckpt_config=None):
    if spec is None and ckpt_config is not None and "text" in ckpt_config:  # the encoder the model trained with
        config, params, tokenizer = runs.build_text(ckpt_config)
        return TextEncoder(config, params, tokenizer)
    cfg = runs.text_encoder_config(spec or "flan-t5-xl")
    if not cfg.path:
        print(
            f"[sample] warning: random-initialised text encoder ({cfg.preset}, width {width}); images will not "
            "follow the prompts",
            file=sys.stderr,
        )
        cfg.model.d_model = width
    enc = build_text_encoder(cfg)
    if enc.width != width:
        raise UsageError(f"text encoder width {enc.width} does not match the model's text_channels={width}")
    return enc


def _load_transformer(options: SampleOptions):
    """(params or None when they must wait for the model config, the run's config or None, step or None),
    checking first what options.checkpoint is (a wrong one is named before anything heavy loads)."""
    path = options.checkpoint
    if os.path.isdir(path):  # a folder carries its config
        return runs.load_run(path, options.ema, options.step)
    if not os.path.exists(path):
        runs.load_weights(path, "transformer")  # raises: names what was expected
    elif options.step is not None or not path.lower().endswith(runs.PARAMS_FILES + runs.OFFICIAL_FILES):
        runs.load_weights(path, "transformer", step=options.step)  # raises: a file has no steps, or a bad type
    else:
        runs.check_params_file(path)
    return None, None, None


# ---------------------------------------------------------------- sampling
def sample_to_folder(options: SampleOptions) -> dict:
    """Samples options.prompts / options.prompts_file into the folder options.out (see the module docstring)
    and returns the summary written as samples.json. A non-empty out is refused (before any weights load)
    unless options.overwrite; the folder is written beside it and swapped in whole at the end."""
    check_out(
        options.out,
        options.overwrite,
        [
            ("--checkpoint", options.checkpoint),
            ("--vae", options.vae),
            ("--prompts-file", options.prompts_file),
            ("--text-encoder", options.text_encoder),
        ],
    )
    prompts = read_prompts(options.prompts, options.prompts_file)
    params, ckpt_config, step = _load_transformer(options)
    schedule, template, pn = resolve_schedule(options, ckpt_config)
    settings, source = sampling_settings(options, ckpt_config)
    sp = _sampling_params(len(schedule), settings, source, options.greedy)
    if options.batch_size < 1:
        raise UsageError(f"--batch-size {options.batch_size}: expected >= 1")

    model_cfg = _model_config(options, ckpt_config)
    if params is None:
        params, _ = runs.load_weights(options.checkpoint, "transformer", model_cfg)
    runs.check_params_shapes(params, model_cfg, options.checkpoint)
    vae_cfg, vae_params = _vae(options, ckpt_config, model_cfg)
    patchify = 2 if model_cfg.apply_spatial_patchify else 1  # a token covers 2x2 VAE positions
    H, W = schedules.image_size(schedule, stride=int(vae_cfg.patch_size) * patchify)

    mesh = None
    if jax.device_count() > 1:
        mesh = parallel.make_mesh(tensor=options.tensor)
    encoder = _text_encoder(options.text_encoder, model_cfg.text_channels, ckpt_config)
    sampler = sample.Sampler(
        model_cfg,
        schedule,
        vae=vae_cfg,
        mesh=mesh,
        rules=options.rules,
        cfg_batch=sample.uses_guidance(sp),
        progress=options.progress,
    )
    params, vae_params = sampler.place_params(params, vae_params)

    # every prompt's features padded to one length: one program for all batches
    feats, mask = (np.asarray(a) for a in encoder.encode_text(prompts))
    neg = None
    if options.negative_prompt:
        if not sampler.cfg_batch:
            raise UsageError("--negative-prompt needs guidance (cfg != 1)")
        nf, nm = (np.asarray(a) for a in encoder.encode_text([options.negative_prompt]))
        neg = (nf, nm)
    bsz = -(-min(options.batch_size, len(prompts)) // sampler.batch_multiple) * sampler.batch_multiple
    where = f"h/w template {template}, {pn}" if template is not None else "custom schedule"
    print(
        f"[sample] {len(prompts)} prompt(s), {W}x{H} ({where}, {len(schedule)} scales, "
        f"{schedules.num_tokens(schedule)} tokens), batch {bsz}, {jax.device_count()} device(s)",
        file=sys.stderr,
    )
    print("[sample] " + ", ".join(f"{k} {settings[k]} ({source[k]})" for k in SAMPLING_DEFAULTS), file=sys.stderr)
    records, images_all = [], []
    with fileio.atomic_folder(options.out) as tmp:  # the old folder stays whole until the new one is
        for start in range(0, len(prompts), bsz):
            idx = list(range(start, min(start + bsz, len(prompts))))
            take = idx + [idx[-1]] * (bsz - len(idx))  # pad the last batch by repeating its last prompt
            seeds = np.asarray([options.seed + i for i in take], np.int64)
            kw = {} if neg is None else dict(neg_text=neg[0], neg_mask=neg[1])
            t0 = time.perf_counter()
            out = sampler(params, vae_params, feats[take], mask[take], seeds, sp, **kw)
            images = np.asarray(jax.device_get(out.images))
            dt = time.perf_counter() - t0
            compiled = sum(sampler.compile_seconds.values())
            print(
                f"[sample] batch {start // bsz + 1}: {dt:.2f}s ({len(idx)} image(s); compile so far "
                f"{compiled:.1f}s, {sampler.num_compiles} program(s))",
                file=sys.stderr,
            )
            for j, i in enumerate(idx):
                name = f"{i:04d}_{slug(prompts[i])}.png"
                save_png(images[j], os.path.join(tmp, name))
                images_all.append(images[j])
                records.append({"index": i, "prompt": prompts[i], "seed": int(seeds[j]), "file": name})
        if len(images_all) > 1 and options.grid:
            save_png(grid(np.stack(images_all)), os.path.join(tmp, "grid.png"))
        summary = {
            "checkpoint": os.path.abspath(options.checkpoint),
            "step": step,
            "schedule": [list(s) for s in schedule],
            "h_div_w_template": template,
            "pn": None if template is None else pn,
            "image_hw": [H, W],
            "cfg": [float(v) for v in sp.cond_w],
            "tau": [float(1 / v) for v in sp.inv_tau],
            "top_k": settings["top_k"],
            "top_p": settings["top_p"],
            "greedy": options.greedy,
            "settings_from": source,
            "negative_prompt": options.negative_prompt,
            "compile_s": sum(sampler.compile_seconds.values()),
            "samples": records,
        }
        with open(os.path.join(tmp, "samples.json"), "w") as f:
            json.dump(summary, f, indent=1)
    print(f"[sample] wrote {len(records)} image(s) to {options.out}", file=sys.stderr)
    return summary
