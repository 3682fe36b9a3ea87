"""`infinity-jax eval prefixes --run DIR`: at which scale a trained shapes run loses prompt adherence.

Held-out prompts come with their ground-truth images (the demo's unseen dataset seed). The run's VAE
tokenizes the truth; for j = 0..K the first j scales keep the true bits and the transformer draws
the rest, the VAE decodes, and the shapes evaluator scores. j = 0 is plain sampling (the same
per-bit draw, CFG, tau, top-k/top-p and random numbers as `infinity-jax sample`, through the full
teacher-forced forward instead of the KV cache), j = K the tokenizer's own reconstruction. A score
that jumps between j and j + 1 names the scale whose sampled bits break the images.

Also reported, teacher-forced on the truth (CFG 1, argmax per bit): per-scale bit accuracy and the
share of positions whose d bits are all right, over all positions and over plain-background ones.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax import runs, schedules
from infinity_jax import sample as sampling
from infinity_jax.data import shapes as shapes_data
from infinity_jax.eval import shapes as shapes_eval
from infinity_jax.model.transformer import Infinity, InfinityConfig
from infinity_jax.text.encoder import TextEncoder
from infinity_jax.tokenizer import bsq


def draw_after_prefix(
    model_cfg, schedule, params, text, text_mask, true_bits, num_true: int, seeds, sp: sampling.SamplingParams
) -> list[jax.Array]:
    """Bits of every scale: the first `num_true` from `true_bits`, the rest drawn scale by scale.

    true_bits: list of K arrays (B, h_k, w_k, d); seeds (B,): image i draws scale k from
    uniform(fold_in(key(seeds[i]), k)), as the sampler does, so num_true = 0 reproduces it.
    """
    hws = [(h, w) for _, h, w in schedules.validate(schedule)]
    if not 0 <= num_true <= len(hws):
        raise ValueError(f"num_true={num_true}: expected 0..{len(hws)} (the schedule's scales)")
    B, d = text.shape[0], model_cfg.codebook_dim
    starts = np.cumsum([0] + [h * w for h, w in hws])
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    text_all, mask_all = sampling.cfg_text(params, text, text_mask)  # cond rows, then the null text
    model = Infinity(model_cfg)
    bits = [jnp.asarray(b, jnp.uint8) for b in true_bits]
    for k in range(num_true, len(hws)):
        x = bsq.teacher_forcing_inputs(bits, schedule)  # scales >= k are placeholders, unseen by scale k
        logits = model.apply({"params": params}, text_all, mask_all, jnp.repeat(x, 2, 0), schedule)
        lg = sampling.guide(logits[:, starts[k] : starts[k + 1]] * sp.inv_tau[k], sp.cond_w[k], sp.uncond_w[k])
        u = sampling.scale_uniforms(keys, k, lg.shape[1], d)
        drawn = sampling.sample_bits(lg.reshape(B, -1, d, 2), u, sp.top_k, sp.top_p, sp.greedy, sp.top_p_floor)
        bits[k] = drawn.reshape(B, *hws[k], d)
    return bits


def teacher_forced_accuracy(model_cfg, schedule, params, text, text_mask, true_bits, background=None) -> list[dict]:
    """Per scale: {'bit_acc', 'all_bits_right'} of the argmax bits with the true context (CFG 1), and
    with `background` ((B, h, w) bool at the last scale's grid, True = plain background) the same
    two over background positions (a scale's position is background when all cells it covers are)."""
    hws = [(h, w) for _, h, w in schedules.validate(schedule)]
    x = bsq.teacher_forcing_inputs(true_bits, schedule)
    logits = Infinity(model_cfg).apply({"params": params}, text, text_mask, x, schedule)
    B, d = text.shape[0], model_cfg.codebook_dim
    pred = np.asarray(logits).reshape(B, -1, d, 2)
    pred = pred[..., 1] > pred[..., 0]
    out, start = [], 0
    for k, (h, w) in enumerate(hws):
        ok = pred[:, start : start + h * w] == np.asarray(true_bits[k]).reshape(B, h * w, d).astype(bool)
        start += h * w
        row = {"scale": f"{h}x{w}", "bit_acc": float(ok.mean()), "all_bits_right": float(ok.all(-1).mean())}
        if background is not None:
            H, W = background.shape[1:]
            if H % h == 0 and W % w == 0:
                bg = background.reshape(B, h, H // h, w, W // w).all((2, 4)).reshape(B, h * w)
                if bg.any():
                    row.update(
                        background_share=float(bg.mean()),
                        background_bit_acc=float(ok[bg].mean()),
                        background_all_bits_right=float(ok[bg].all(-1).mean()),
                    )
        out.append(row)
    return out


def prefix_scores(
    run: str,
    *,
    num_prompts: int = 120,
    cfg=shapes_data.SAMPLE_CFG,
    tau=shapes_data.SAMPLE_TAU,
    top_k: int = 900,
    top_p: float = 0.97,
    seed: int = 0,
    prefer_ema: bool = True,
    batch_size: int = 40,
    log=print,
) -> dict:
    """The module docstring's measurement for the training run (or demo transformer folder) `run`; `log`
    gets a progress line per batch. Bad input raises ValueError (UsageError from infinity_jax.runs)."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts={num_prompts}: expected >= 1")
    params, config = runs.load_weights(run, "transformer", prefer_ema=prefer_ema)
    if config is None or "vae" not in config or "text" not in config:
        raise ValueError(f"{run!r}: expected a training run folder (its config names the VAE and text encoder)")
    config = runs.run_relative_paths(config, run)
    model_cfg = InfinityConfig.from_dict(config.model)
    schedule = runs.schedule_from_config(config)
    vae, _, vae_params = runs.build_vae(config)
    encoder = TextEncoder(*runs.build_text(config))
    size = int(config.data.image_size)
    captions, truth = shapes_data.held_out_prompts(num_prompts, size, _dataset_layout(config))
    truth = np.stack(truth)
    sp = sampling.sampling_params(len(schedule), cfg, tau, top_k, top_p)
    tokenize = jax.jit(lambda p, x: vae.apply({"params": p}, x, schedule, method="tokenize"))
    decode = jax.jit(lambda p, bits: vae.apply({"params": p}, bits, schedule, method="decode_bits"))
    draw = jax.jit(draw_after_prefix, static_argnums=(0, 1, 6))
    K = len(schedule)
    images = {j: [] for j in range(K + 1)}
    accuracy_rows = []
    t0 = time.perf_counter()
    for start in range(0, num_prompts, batch_size):
        sl = slice(start, min(start + batch_size, num_prompts))
        feats, mask = (jnp.asarray(a) for a in encoder.encode_text(captions[sl]))
        x = jnp.asarray(truth[sl], jnp.float32) / 127.5 - 1.0
        true_bits = tokenize(vae_params, x)
        seeds = np.arange(start, sl.stop, dtype=np.int64) + seed
        for j in range(K + 1):
            bits = true_bits if j == K else draw(model_cfg, schedule, params, feats, mask, true_bits, j, seeds, sp)
            images[j].append(shapes_data.to_uint8(np.asarray(decode(vae_params, bits))))
        background = _background_cells(truth[sl], true_bits[-1].shape[1:3])
        accuracy_rows.append(teacher_forced_accuracy(model_cfg, schedule, params, feats, mask, true_bits, background))
        log(f"[prefixes] {sl.stop}/{num_prompts} prompts, {time.perf_counter() - t0:.0f}s")
    scores = {j: shapes_eval.evaluate(np.concatenate(images[j]), captions) for j in range(K + 1)}
    hws = [f"{h}x{w}" for _, h, w in schedule]
    weights = np.asarray([min(batch_size, num_prompts - s) for s in range(0, num_prompts, batch_size)], np.float64)
    accuracy = []
    for k in range(K):  # prompt-weighted means over batches
        rows = [r[k] for r in accuracy_rows]
        keys = [key for key in rows[0] if key != "scale" and all(key in r for r in rows)]
        accuracy.append(
            {"scale": hws[k], **{key: float(np.average([r[key] for r in rows], weights=weights)) for key in keys}}
        )
    return {
        "run": run,
        "num_prompts": num_prompts,
        "cfg": str(cfg),
        "tau": str(tau),
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
        "schedule": hws,
        "true_scales": [
            {"true_scales": j, "true_through": hws[j - 1] if j else None, **scores[j]} for j in range(K + 1)
        ],
        "teacher_forced": accuracy,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _dataset_layout(config) -> str:
    """The shapes layout the run's training data was built with ('random' when it says none)."""
    import tensorflow_datasets as tfds

    from infinity_jax.data import sources  # imports tfds

    info = tfds.builder_from_directory(sources.find_dataset_dir(str(config.data.path))).info
    return str(((info.metadata or {}).get("prepare") or {}).get("layout", "random"))


def _background_cells(images: np.ndarray, grid_hw, tolerance: int = 8) -> np.ndarray:
    """(B, h, w) bool: latent cells whose pixels are all within `tolerance` of the dataset background."""
    B, H, W, _ = images.shape
    h, w = grid_hw
    plain = np.abs(images.astype(np.int32) - np.asarray(shapes_data.BACKGROUND)).max(-1) <= tolerance
    return plain.reshape(B, h, H // h, w, W // w).all((2, 4))
