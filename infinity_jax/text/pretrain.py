"""Pretraining a small T5 encoder from scratch on a dataset's captions (the offline stand-in for Flan-T5);
the command `infinity-jax pretrain-text` (infinity_jax/commands/pretrain_text.py) saves the result.

The official model freezes a T5 pretrained on a web corpus, whose features know word order. With
nothing to download, a *random* byte-level T5 is close to a bag of bytes: its relative position
biases start near zero, so attention is near uniform and each row is its own byte embedding plus
a blur of the rest. A transformer reading such features cannot tell which colour goes with which
shape, or which shape is left of the other.

The objective here makes every row say what is around it: from the encoder row at byte j, small
heads predict the bytes at j + o for offsets o in [-window, window] (a few random offsets per
step). A row can only know its neighbours if attention moves them there. Adam moves each weight
by about lr per step, and sharp local attention needs relative-bias entries several units apart,
so the bias table learns at `bias_lr_mult` x lr (at 1x the heads stay near uniform and the rows
stay a bag of bytes). Measured on the shapes captions (d_model 128, 300 steps, ~1 min on 2 cores):
the distance between the feature-row sets of word-swapped captions ("a red circle and a blue
square" / "a blue circle and a red square", "a triangle left of a circle" / "a circle left of a
triangle"), over the typical distance between unrelated captions, goes from 0.05-0.07 (random
init) to 0.17-0.46. The heads are thrown away; the encoder is saved as a Hugging Face folder (config.json +
model.safetensors) that `text.path` loads frozen, exactly like a downloaded Flan-T5.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from infinity_jax.data import sources
from infinity_jax.text.t5 import T5Config, T5Encoder
from infinity_jax.text.tokenizers import ByteTokenizer

log = logging.getLogger(__name__)
# Small batches, many steps: the rows learn their neighbours only after a sudden jump in accuracy, which
# many small steps reach in less time than fewer large ones (docs/demo_experiments.md)
DEFAULT_STEPS = 2400
DEFAULT_BATCH = 16


class ContextPredictor(nn.Module):
    """T5 encoder rows -> logits of the bytes at the given offsets from each row."""

    config: T5Config
    window: int

    @nn.compact
    def __call__(self, ids, mask, offsets):
        C = self.config.d_model
        feats = T5Encoder(self.config, name="encoder")(ids, mask)
        offset_embed = self.param("offset_embed", nn.initializers.normal(0.02), (2 * self.window + 1, C))
        h = nn.Dense(C, name="context_in")(feats)[:, None] + offset_embed[offsets + self.window][None, :, None]
        return nn.Dense(self.config.vocab_size, name="context_out")(nn.gelu(h))  # (B, offsets, L, vocab)


def context_loss(logits, ids, mask, offsets):
    """(mean cross-entropy, accuracy) of predicting ids[j + o] from row j, over pairs inside the caption."""
    L = ids.shape[1]
    src = jnp.clip(jnp.arange(L)[None, :] + offsets[:, None], 0, L - 1)[None]  # (1, O, L)
    inside = (jnp.arange(L)[None, :] + offsets[:, None] >= 0) & (jnp.arange(L)[None, :] + offsets[:, None] < L)
    target = jnp.take_along_axis(ids[:, None, :], src, axis=2)  # (B, O, L)
    valid = mask[:, None, :] & inside[None] & jnp.take_along_axis(mask[:, None, :], src, axis=2)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
    w = valid.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    return (ce * w).sum() / n, ((logits.argmax(-1) == target) * w).sum() / n


def pretrain(
    captions: Sequence[str],
    config: T5Config,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    lr: float = 3e-3,
    bias_lr_mult: float = 30.0,
    max_length: int = 64,
    window: int = 16,
    offsets_per_step: int = 4,
    seed: int = 0,
    log_every: int = 50,
) -> tuple[dict, dict]:
    """(encoder params, final metrics) after `steps` AdamW steps on random batches of `captions`."""
    if not captions:
        raise ValueError("pretrain: no captions given")
    if steps < 1 or batch_size < 1 or window < 1:
        raise ValueError(
            f"pretrain: steps={steps}, batch_size={batch_size}, window={window}: expected positive numbers"
        )
    ids, mask = (np.asarray(a) for a in ByteTokenizer(max_length=max_length)(list(captions), length=max_length))
    model = ContextPredictor(config, window)
    all_offsets = np.array([o for o in range(-window, window + 1) if o != 0], np.int32)
    params = nn.unbox(model.init(jax.random.key(seed), ids[:1], mask[:1], all_offsets[:1])["params"])
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.multi_transform(
            {"default": optax.adam(_schedule(lr, steps)), "bias": optax.adam(_schedule(lr * bias_lr_mult, steps))},
            jax.tree_util.tree_map_with_path(
                lambda path, _: "bias" if "relative_attention_bias" in jax.tree_util.keystr(path) else "default", params
            ),
        ),
    )
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, ids, mask, offsets):
        def loss_fn(p):
            return context_loss(model.apply({"params": p}, ids, mask, offsets), ids, mask, offsets)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "context_acc": acc}

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        pick = rng.integers(0, len(ids), batch_size)
        offsets = rng.choice(all_offsets, min(offsets_per_step, len(all_offsets)), replace=False)
        params, opt_state, metrics = step(params, opt_state, ids[pick], mask[pick], offsets)
        if i % log_every == 0 or i == steps:
            m = {k: float(v) for k, v in metrics.items()}
            rate = i / (time.perf_counter() - t0)
            log.info(
                "pretrain-text step %d/%d: loss %.4f, context acc %.3f (%.1f steps/s, ETA %.0f s)",
                i,
                steps,
                m["loss"],
                m["context_acc"],
                rate,
                (steps - i) / rate,
            )
    # final figures over (up to 256) captions and every offset
    evaluate = jax.jit(lambda p, i, m: context_loss(model.apply({"params": p}, i, m, all_offsets), i, m, all_offsets))
    loss, acc = evaluate(params, ids[:256], mask[:256])
    final = {
        "steps": steps,
        "captions": len(captions),
        "window": window,
        "context_loss": float(loss),
        "context_acc": float(acc),
        "seconds": time.perf_counter() - t0,
    }
    return params["encoder"], final


def _schedule(peak: float, steps: int):
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(1, steps // 20), steps, peak * 0.05)


def dataset_captions(path: str, split: str = "train", limit: int | None = None) -> list[str]:
    """The distinct captions (`long_caption`) of a dataset built by `infinity-jax data prepare`."""
    src, _ = sources.open_split(path, split)
    n = len(src) if limit is None else min(limit, len(src))
    caps = {}
    for i in range(n):
        c = src[i]["long_caption"]
        caps[c.decode("utf-8") if isinstance(c, bytes) else str(c)] = None
    return list(caps)
