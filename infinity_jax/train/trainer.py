"""Training the Infinity transformer from one config: the library behind `infinity-jax train`.

`run(cfg, workdir)` builds, from one config (e.g. configs/shapes.py): the data pipeline (images +
tokenized captions, or precomputed latents with data.latent_cache), the frozen BSQ-VAE and T5 text
encoder (arguments of the jitted step, sharded by their logical axes; infinity_jax.runs builds them), the
transformer, and runs infinity_jax.train.loop.run_training. Calling it again with the same workdir
resumes from WORKDIR/checkpoints (loop.preflight refuses, before anything is built, a checkpoint of another
model shape, and one whose lr schedule the config changes, e.g. a larger train.total_steps, unless
train.reschedule=True: see train/loop.py). At the end it computes a validation loss on held-out batches
(teacher forcing, no flips, no text dropout) and writes WORKDIR/final.json atomically:
  {"step", "start_step", "stopped", "train_loss", "val_loss", "val_loss_other_text", "params", "flops_total",
   "tokens_total", "config"}
(start_step: where this call started, > 0 after a resume; train_loss: the mean loss of the last logging
window, as in metrics.jsonl, kept when a rerun has no step left to run; val_loss_other_text: the validation
images with the captions of other examples).
Every cfg.sample.every steps a grid of cfg.sample.prompts goes to WORKDIR/samples/step_XXXXXXX.png.
Multi-host: jax.distributed is initialised from the environment (TPU auto-detect, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax import config_util, fileio, plots, sample, schedules
from infinity_jax.data import latent_cache, pipeline
from infinity_jax.model import transformer as T
from infinity_jax.runs import FINAL_FILE, build_text, build_vae, schedule_from_config, text_config
from infinity_jax.text.encoder import encode_tokens
from infinity_jax.train import distributed, loop
from infinity_jax.train import step as step_lib

log = logging.getLogger("infinity_jax.train")
ARRAY_KEYS = ("image", "tokens", "token_mask")  # what the step reads from a data batch


class ArrayBatches:
    """Keeps only the arrays the step reads (strings stay on the host); forwards get/set_state."""

    def __init__(self, iterator):
        self._it = iterator

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self._it)
        return {k: np.asarray(b[k]) for k in ARRAY_KEYS if k in b}

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)


def data_config(cfg, *, seed_offset: int = 0):
    """cfg.data as a pipeline DataConfig for this host (per-host batch, seed + offset)."""
    d = dict(cfg.data.to_dict())
    for key in ("h_div_w", "latent_cache"):  # schedule / trainer settings, not the pipeline's
        d.pop(key, None)
    d["batch_size"] = cfg.train.global_batch // jax.process_count()
    d["seed"] = int(d.get("seed", cfg.seed)) + seed_offset
    return pipeline.DataConfig.from_dict(d)


def build_data(cfg, tokenizer, *, seed_offset: int = 0):
    """The training batches (ArrayBatches over the pipeline) for this host; seed_offset 1: held-out ones."""
    return ArrayBatches(iter(pipeline.make_dataset(data_config(cfg, seed_offset=seed_offset), tokenizer=tokenizer)))


def build_cached_data(cfg, vae, vae_cfg, vae_params, tokenizer):
    """Batches of precomputed latents (data.latent_cache, built on first use; see data/latent_cache.py)."""
    dcfg = data_config(cfg)
    encode = jax.jit(lambda p, x: vae.apply({"params": p}, pipeline.to_float(x), method="encode"))
    fingerprint = {
        "vae_config": config_util.to_json(vae_cfg),
        "vae_params": _params_digest(vae_params),
        "data": {
            k: str(v) for k, v in dcfg.__dict__.items() if k in ("path", "split", "pn", "image_size", "short_cap_prob")
        },
        "text": {
            "tokenizer": str(cfg.text.tokenizer),
            "max_length": int(cfg.text.max_length),
            "path": str(text_config(cfg.text).get("path", "")),
        },
    }
    arrays = latent_cache.ensure(
        str(cfg.data.latent_cache), dcfg, lambda x: encode(vae_params, x), tokenizer, fingerprint
    )
    return latent_cache.CachedBatches(arrays, dcfg.batch_size, dcfg.seed)


def _params_digest(params) -> str:
    """sha256 over the params' names and values: the same for the same weights, however they were loaded."""
    h = hashlib.sha256()
    for name, value in sorted(fileio.flatten(params).items()):  # numpy or jax arrays (bf16 kept)
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    return f"sha256:{h.hexdigest()}"


def sample_grid_hook(cfg, mcfg, schedule, vae, t5_cfg, tokenizer, mesh):
    """A loop Hook: every cfg.sample.every steps, images for cfg.sample.prompts (fixed seeds; cfg, tau,
    top_k, top_p from cfg.sample, else the official defaults) from the current (EMA if kept) params,
    saved as WORKDIR/samples/step_XXXXXXX.png."""
    s = cfg.sample
    prompts = list(s.prompts)
    sampler = sample.Sampler(mcfg, schedule, vae=vae, mesh=mesh, rules=cfg.parallel.rules)
    k = sampler.batch_multiple
    prompts_padded = prompts + prompts[-1:] * (-len(prompts) % k)
    ids, mask = tokenizer(prompts_padded, length=int(cfg.text.max_length))
    encode = jax.jit(functools.partial(encode_tokens, t5_cfg))
    seeds = np.arange(len(prompts_padded), dtype=np.int64)
    sp = sample.sampling_params(
        len(schedule),
        cfg=s.get("cfg", sample.DEFAULT_CFG),
        tau=s.get("tau", sample.DEFAULT_TAU),
        top_k=int(s.get("top_k", sample.DEFAULT_TOP_K)),
        top_p=float(s.get("top_p", sample.DEFAULT_TOP_P)),
    )

    def fn(step, state, writer):
        feats = encode(state.frozen["t5"], ids, mask)
        params = state.ema_params if state.ema_params is not None else state.params
        out = sampler(params, state.frozen["vae"], np.asarray(feats), mask, seeds, sp)
        images = np.asarray(jax.device_get(out.images))[: len(prompts)]
        if jax.process_index() == 0:
            folder = os.path.join(writer.workdir, "samples")
            os.makedirs(folder, exist_ok=True)
            plots.captioned_grid(images, prompts).save(os.path.join(folder, f"step_{step:07d}.png"))
        return None

    return loop.Hook(fn, every=int(s.every), name="sample_grid")


def run(cfg, workdir: str, until_step: int | None = None) -> dict:
    """Train (or resume) and write final.json; returns its content. until_step: stop (with a checkpoint)
    at this step, before train.total_steps; a later call resumes (no final.json then)."""
    distributed.initialize_distributed()
    schedule = schedule_from_config(cfg)
    mcfg = T.InfinityConfig.from_dict(cfg.model)
    model = T.Infinity(mcfg)
    init_params = functools.partial(T.init_params, mcfg)
    loop.preflight(cfg, workdir, init_params)  # bad settings or a checkpoint it cannot resume: one line, now
    vae, vcfg, vae_params = build_vae(cfg)
    stride = int(vcfg.patch_size) * (2 if mcfg.apply_spatial_patchify else 1)  # pixels per transformer token
    latent_hw = (int(cfg.data.image_size) // stride,) * 2 if cfg.data.get("image_size") else None
    schedules.validate(schedule, latent_hw)
    t5_cfg, t5_params, tokenizer = build_text(cfg)
    options = step_lib.StepOptions.from_config(cfg.step)
    loss_fn = step_lib.make_loss_fn(
        model, schedule, options, vae=vae, text_encoder=functools.partial(encode_tokens, t5_cfg)
    )
    frozen = {"vae": vae_params, "t5": t5_params}
    n_params = T.count_params(mcfg)
    flops_example = step_lib.train_flops_per_example(mcfg, schedule, text_len=int(cfg.text.max_length))
    if cfg.data.get("latent_cache"):
        data = build_cached_data(cfg, vae, vcfg, vae_params, tokenizer)
    else:
        data = build_data(cfg, tokenizer)
    mesh = loop.build_mesh(cfg)
    hooks = []
    if cfg.get("sample") and int(cfg.sample.get("every", 0)) > 0 and cfg.sample.prompts:
        hooks.append(sample_grid_hook(cfg, mcfg, schedule, vae, t5_cfg, tokenizer, mesh))
    result = loop.run_training(
        cfg,
        workdir,
        init_params=init_params,
        loss_fn=loss_fn,
        data=data,
        frozen=frozen,
        flops_per_step=flops_example * cfg.train.global_batch,
        tokens_per_example=schedules.num_tokens(schedule),
        hooks=hooks,
        mesh=mesh,
        until_step=until_step,
    )
    final = result.summary(cfg)
    step = final["step"]
    final.update(
        params=n_params,
        flops_total=flops_example * cfg.train.global_batch * step,
        tokens_total=schedules.num_tokens(schedule) * cfg.train.global_batch * step,
    )
    if result.stopped not in loop.FINISHED:
        return final
    val_fn = step_lib.make_loss_fn(
        model,
        schedule,
        dataclasses.replace(options, bsc_strength=0.0, cond_drop=0.0),
        vae=vae,
        text_encoder=functools.partial(encode_tokens, t5_cfg),
    )
    val_step = jax.jit(lambda p, b, f: val_fn(p, b, jax.random.key(0), f)[0])
    val_data = build_data(cfg, tokenizer, seed_offset=1)
    losses, other_text = [], []
    for _ in range(int(cfg.eval.val_batches)):
        batch = jax.tree.map(jnp.asarray, next(val_data))
        losses.append(float(val_step(result.state.params, batch, result.state.frozen)))
        # the same images with the captions of other examples: the gap is what the model reads from the text
        shifted = dict(batch, tokens=jnp.roll(batch["tokens"], 1, 0), token_mask=jnp.roll(batch["token_mask"], 1, 0))
        other_text.append(float(val_step(result.state.params, shifted, result.state.frozen)))
    final["val_loss"] = float(np.mean(losses))
    final["val_loss_other_text"] = float(np.mean(other_text))
    if jax.process_index() == 0:
        fileio.write_json(os.path.join(workdir, FINAL_FILE), final)
    return final
