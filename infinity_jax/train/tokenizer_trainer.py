"""Training the BSQ-VAE tokenizer from one config: the library behind `infinity-jax train-tokenizer`.

`run(cfg, workdir)` builds, from one config (e.g. configs/tokenizer_shapes.py): the image pipeline, the
BSQ-VAE (cfg.vae, a configs/bsq_vae.py-style dict), the loss of infinity_jax.train.tokenizer_step
(cfg.loss), and runs infinity_jax.train.loop.run_training (sharding, AdamW, checkpoints in
WORKDIR/checkpoints, resume, metrics in WORKDIR/metrics.jsonl). Calling it again resumes (the same checks
as the transformer's trainer: the config first, then a checkpoint's lr schedule and shapes; see
train/loop.py).
cfg.init.vae_params (optional): start from these VAE params (our .npz/.msgpack, or an official .pth).
cfg.loss.lpips_weights (with loss.perceptual_weight > 0): the LPIPS network's local weight files,
'VGG16.pth,LIN.pth' or our .npz (infinity_jax/convert/lpips.py), read once at start.

When the run completes, process 0 writes (atomically):
  WORKDIR/vae_params.npz    the trained VAE params (EMA params when optim.ema_decay > 0), our layout
                            ('/'-joined keys, infinity_jax.fileio.save_params); the transformer's
                            `vae.params`, and `infinity-jax convert vae --to-torch` exports it
  WORKDIR/vae_config.json   the VAE config (the transformer's `vae.config`)
  WORKDIR/final.json        {"step", "start_step", "stopped", "train_loss" (as in `train`), "recon": {mse,
                            psnr, l1} of held-out images through the inference path (tokenize ->
                            decode_bits), and their lpips when loss.perceptual_weight > 0, "shapes_eval":
                            with a `score_images` function (e.g. infinity_jax.eval.shapes.evaluate, which
                            the command passes), its scores of the reconstructions and of the originals
                            (shapes data only), "config"}
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from infinity_jax import config_util, fileio, plots, schedules
from infinity_jax.convert import vae as vae_convert
from infinity_jax.convert.torch_io import load_state_dict
from infinity_jax.data import pipeline
from infinity_jax.data import shapes as shapes_data
from infinity_jax.runs import FINAL_FILE, schedule_from_config
from infinity_jax.tokenizer import lpips
from infinity_jax.tokenizer import vae as vae_lib
from infinity_jax.train import distributed, loop
from infinity_jax.train import tokenizer_step as ts

log = logging.getLogger("infinity_jax.train_tokenizer")
# scores of uint8 images (N, H, W, 3) against their captions, e.g. infinity_jax.eval.shapes.evaluate
ScoreImages = Callable[[np.ndarray, Sequence[str]], dict]
PARAMS_FILE, CONFIG_FILE = "vae_params.npz", "vae_config.json"


def build(cfg):
    """(vae module, schedule, loss options) from a config; checks the schedule against the image size."""
    vae = vae_lib.from_config(cfg.vae)
    schedule = schedule_from_config(cfg)  # a pixel budget or 'HxW,...' (schedules.resolve)
    size = int(cfg.data.image_size)
    if size % vae.patch_size:
        raise ValueError(f"data.image_size={size} is not a multiple of the VAE stride vae.patch_size={vae.patch_size}")
    schedules.validate(schedule, latent_hw=(size // vae.patch_size,) * 2)
    vae._check_quantizable()
    return vae, schedule, ts.TokenizerLossOptions.from_config(cfg.loss)


def _load_tree(path: str, vae_cfg=None):
    """A param tree from our .npz/.msgpack, or (VAE only) an official .pth state dict."""
    if path.endswith((".pth", ".pt", ".bin")):
        if vae_cfg is None:
            raise ValueError(f"{path!r}: only VAE weights can come from a torch file")
        return vae_convert.torch_to_params(load_state_dict(path), vae_cfg)
    return fileio.load_params(path)


def _with_values(boxed, values, what: str):
    """The boxed tree `boxed` with every leaf's value taken from `values` (same paths and shapes)."""
    want, have = fileio.flatten(boxed), fileio.flatten(values)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    bad = [
        f"{k}: {np.shape(have[k])} (expected {want[k].shape})"
        for k in want
        if k in have and tuple(np.shape(have[k])) != tuple(want[k].shape)
    ]
    if missing or extra or bad:
        raise ValueError(
            f"{what}: params do not match the model: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"mis-shaped {bad[:5]}"
        )
    is_box = lambda _, x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    flat_boxed = {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(boxed), is_leaf=is_box).items()}
    out = {
        k: (
            b.replace_boxed(jnp.asarray(have[k], jnp.float32))
            if isinstance(b, nn.meta.AxisMetadata)
            else jnp.asarray(have[k], jnp.float32)
        )
        for k, b in flat_boxed.items()
    }
    return fileio.unflatten(out)


def make_init(cfg, vae, options):
    """init_params(rng) for the loop: fresh params, or VAE/discriminator values from local files."""
    size = int(cfg.data.image_size)
    vae_init = str(cfg.get("init", {}).get("vae_params", "") or "")
    vae_values = _load_tree(vae_init, cfg.vae) if vae_init else None
    disc_values = _load_tree(options.disc_weights) if options.gan_weight > 0 and options.disc_weights else None

    def init_params(rng):
        params = ts.init_params(vae, rng, options, (size, size))
        if vae_values is not None:
            params["vae"] = _with_values(params["vae"], vae_values, f"init.vae_params={vae_init!r}")
        if disc_values is not None:
            params["disc"] = _with_values(params["disc"], disc_values, f"loss.disc_weights={options.disc_weights!r}")
        return params

    return init_params


def build_data(cfg, *, seed_offset: int = 0, keys=("image",), eval_mode: bool = False):
    """This host's image batches (counted by ts.StepCounter); eval_mode: held-out order, no flips."""
    d = dict(cfg.data.to_dict())
    d["batch_size"] = cfg.train.global_batch // jax.process_count()
    d["seed"] = int(d.get("seed", cfg.seed)) + seed_offset
    if eval_mode:
        d.update(random_flip=False, short_cap_prob=0.0)
    it = iter(pipeline.make_dataset(pipeline.DataConfig.from_dict(d)))
    return it if eval_mode else ts.StepCounter(it, keys)


def evaluate_reconstructions(
    cfg,
    vae,
    vae_params,
    schedule,
    lpips_params=None,
    grid_path: str | None = None,
    score_images: ScoreImages | None = None,
) -> dict:
    """MSE/PSNR/L1 (on [-1, 1] pixels) of cfg.eval.num_images held-out images through tokenize ->
    decode_bits, their mean LPIPS when lpips_params are given, and (shapes data, with score_images, e.g.
    infinity_jax.eval.shapes.evaluate) the scores of the uint8 reconstructions and of the originals.
    grid_path: also save the first 16 originals beside their reconstructions there (PNG)."""
    recon_fn = jax.jit(lambda p, x: ts.reconstruct(vae, p, x, schedule))
    it = build_data(cfg, seed_offset=1, eval_mode=True)
    n = int(cfg.eval.num_images)
    originals, recons, captions, specs = [], [], [], []
    for _ in range(math.ceil(n / int(cfg.train.global_batch))):
        b = next(it)
        originals.append(np.asarray(b["image"]))
        recons.append(np.asarray(recon_fn(vae_params, jnp.asarray(b["image"]))))
        captions.extend(str(c) for c in b["caption"])
        specs.extend(str(c) for c in b.get("spec", [""] * len(b["caption"])))
    x = np.asarray(pipeline.to_float(np.concatenate(originals)[:n]))
    r = np.concatenate(recons)[:n]
    mse = float(np.mean((r - x) ** 2))
    x_u8, r_u8 = shapes_data.to_uint8(x), shapes_data.to_uint8(r)
    if grid_path:
        k = min(16, n)
        pairs = np.stack([x_u8[:k], r_u8[:k]], axis=1).reshape(2 * k, *x_u8.shape[1:])
        labels = [t for c in captions[:k] for t in (c, "reconstruction")]
        plots.captioned_grid(pairs, labels).save(grid_path)
    out = {
        "recon": {
            "images": int(len(x)),
            "mse": mse,
            "psnr": float(10 * np.log10(4.0 / max(mse, 1e-10))),
            "l1": float(np.mean(np.abs(r - x))),
        }
    }
    if lpips_params is not None:
        dist = jax.jit(lambda p, a, b: lpips.LPIPS(vae.dtype).apply({"params": p}, a, b))
        bs = int(cfg.train.global_batch)  # batches as in training: VGG16 activations are large
        d = [np.asarray(dist(lpips_params, r[i : i + bs], x[i : i + bs])) for i in range(0, len(x), bs)]
        out["recon"]["lpips"] = float(np.mean(np.concatenate(d)))
    if score_images is not None and all(specs[:n]):  # the shapes dataset (its examples carry a spec)
        try:
            out["shapes_eval"] = {
                "reconstructions": score_images(r_u8, captions[:n]),
                "originals": score_images(x_u8, captions[:n]),
            }
        except ValueError as e:  # captions that are not the shapes grammar: no score
            log.warning("shapes evaluator skipped: %s", e)
    return out


def save_vae(workdir: str, vae_params, vae_cfg) -> tuple[str, str]:
    """Writes DIR/vae_params.npz and DIR/vae_config.json (process 0); returns their paths."""
    p, c = os.path.join(workdir, PARAMS_FILE), os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        fileio.save_params(jax.device_get(vae_params), p)
        fileio.atomic_write(c, lambda f: f.write(config_util.to_json(vae_cfg).encode()))
    return p, c


def run(cfg, workdir: str, until_step: int | None = None, mesh=None, score_images: ScoreImages | None = None) -> dict:
    """Train (or resume), save the VAE, evaluate reconstructions, write final.json; returns its content.

    until_step: stop (with a checkpoint) at this step; a later call resumes. mesh: instead of the
    one built from cfg.parallel (see run_training). score_images: scores the held-out reconstructions
    and originals of shapes data against their captions (final.json's "shapes_eval"; see
    evaluate_reconstructions)."""
    distributed.initialize_distributed()
    vae, schedule, options = build(cfg)
    init_params = make_init(cfg, vae, options)
    loop.preflight(cfg, workdir, init_params, mesh)  # bad settings or a checkpoint it cannot resume: one line, now
    loss_fn = ts.make_loss_fn(vae, schedule, options)
    frozen = ts.load_frozen(options)  # LPIPS weights, read once (not checkpointed)
    result = loop.run_training(
        cfg,
        workdir,
        init_params=init_params,
        loss_fn=loss_fn,
        data=build_data(cfg),
        tokens_per_example=schedules.num_tokens(schedule),
        until_step=until_step,
        mesh=mesh,
        frozen=frozen,
    )
    final = result.summary(cfg)
    if result.stopped not in loop.FINISHED:
        return final
    params = result.state.ema_params if result.state.ema_params is not None else result.state.params
    final["vae_params"], final["vae_config"] = save_vae(workdir, params["vae"], cfg.vae)
    grid = os.path.join(workdir, "reconstructions.png") if jax.process_index() == 0 else None
    final.update(
        evaluate_reconstructions(
            cfg,
            vae,
            params["vae"],
            schedule,
            lpips_params=(frozen or {}).get("lpips"),
            grid_path=grid,
            score_images=score_images,
        )
    )
    if jax.process_index() == 0:
        fileio.write_json(os.path.join(workdir, FINAL_FILE), final)
    return final
