"""The Infinity training loss: latents -> bitwise self-correction -> transformer -> bit-wise loss.

`make_loss_fn(...)` returns `loss_fn(params, batch, rng, frozen=None) -> (loss, metrics)` for
`train.state.make_step` / `train.loop.run_training`. Everything runs inside the one jitted step:

  1. latents z (B, h, w, d): `batch['latent']` when precomputed, else the frozen BSQ-VAE encoder
     on `batch['image']` ((B, H, W, 3) uint8 or float in [-1, 1]) with `frozen['vae']`;
  2. text (B, Lt, Ct) + mask (B, Lt): `batch['text_features']`/`batch['text_mask']` when
     precomputed, else the frozen T5 encoder on `batch['tokens']`/`batch['token_mask']` with
     `frozen['t5']`;
  3. bitwise self-correction (official recipe: strength up to p on the first N scales,
     re-quantization) -> inputs x (B, L - 1, d) and labels (B, L, d); under the model's
     apply_spatial_patchify the latent is (B, 2h, 2w, d/4) and x / labels pixel-unshuffled from it;
  4. classifier-free-guidance text dropout: each prompt replaced by the null text with p = cond_drop;
  5. teacher-forced logits and the official bit-wise loss with per-scale reweighting;
     metrics (scalars): bit_acc (mean over scales), bit_acc/sKK and loss/sKK per scale.

Frozen encoders are arguments of the step (not closed-over constants, which XLA would embed in
the program): pass them as `frozen` (TrainState.frozen in the loop).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from infinity_jax import schedules
from infinity_jax.model import flops
from infinity_jax.model import loss as loss_lib
from infinity_jax.model.transformer import InfinityConfig
from infinity_jax.tokenizer import bsq


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Loss-side training options (official defaults from the released train script)."""

    bsc_strength: float = 0.3  # noise_apply_strength: per-scale flip probability drawn up to this
    bsc_layers: int = 13  # noise_apply_layers: self-correction on the first N scales
    bsc_requant: bool = True  # noise_apply_requant: continue the residual from the flipped bits
    cond_drop: float = 0.1  # cond_drop_rate: CFG text dropout
    reweight_by_scale: bool = True  # reweight_loss_by_scale
    label_smoothing: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "StepOptions":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"step options {sorted(unknown)} unknown; expected some of {[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**cfg)


def make_loss_fn(
    model,
    schedule: schedules.Schedule,
    options: StepOptions = StepOptions(),
    *,
    vae=None,
    text_encoder: Callable | None = None,
) -> Callable:
    """model: an `Infinity` module; schedule: the (static) training schedule of this bucket;
    vae: a `BSQVAE` module (used when batches carry images); text_encoder:
    `(t5_params, ids, mask) -> features (B, Lt, Ct)` (used when batches carry tokens)."""
    schedule = schedules.validate(schedule)
    # official apply_spatial_patchify (8B): latents on the doubled grid, 4 of their positions per token
    patchify = model.cfg.apply_spatial_patchify

    def latents(batch, frozen):
        if "latent" in batch:
            return batch["latent"].astype(jnp.float32)
        if vae is None or frozen is None or "vae" not in frozen:
            raise ValueError("batch has no 'latent': give a vae module and frozen['vae'] params to encode 'image'")
        from infinity_jax.data.pipeline import to_float  # here: the data pipeline imports grain

        return vae.apply({"params": frozen["vae"]}, to_float(batch["image"]), method="encode")

    def text(batch, frozen):
        if "text_features" in batch:
            return batch["text_features"], batch["text_mask"]
        if text_encoder is None or frozen is None or "t5" not in frozen:
            raise ValueError(
                "batch has no 'text_features': give a text_encoder and frozen['t5'] params to encode 'tokens'"
            )
        return text_encoder(frozen["t5"], batch["tokens"], batch["token_mask"]), batch["token_mask"]

    def loss_fn(params, batch, rng, frozen=None):
        k_flip, k_drop, k_path = jax.random.split(rng, 3)
        z = jax.lax.stop_gradient(latents(batch, frozen).astype(jnp.float32))
        feats, mask = text(batch, frozen)
        feats = jax.lax.stop_gradient(feats)
        x, labels, _ = bsq.self_correction(
            z,
            schedule,
            k_flip,
            strength=options.bsc_strength,
            num_layers=options.bsc_layers,
            requant=options.bsc_requant,
            patchify=patchify,
        )
        drop = jax.random.bernoulli(k_drop, options.cond_drop, (z.shape[0],)) if options.cond_drop > 0 else None
        logits = model.apply(
            {"params": params},
            feats,
            mask,
            x.astype(jnp.float32),
            schedule,
            drop=drop,
            train=True,
            rngs={"dropout": k_path},
        )
        loss = loss_lib.bitwise_loss(
            logits, labels, schedule, reweight=options.reweight_by_scale, label_smoothing=options.label_smoothing
        )
        acc = loss_lib.per_scale_accuracy(logits, labels, schedule)
        per_scale = loss_lib.per_scale_loss(logits, labels, schedule)
        metrics = {
            "bit_acc": acc.mean(),
            **{f"bit_acc/s{k:02d}": a for k, a in enumerate(acc)},
            **{f"loss/s{k:02d}": v for k, v in enumerate(per_scale)},
        }
        return loss, metrics

    return loss_fn


def train_flops_per_example(cfg: InfinityConfig, schedule: schedules.Schedule, *, text_len: int) -> float:
    """Model FLOPs of forward + backward for one example (for MFU): 3 x the forward's (model/flops.py: each
    weight for the rows it multiplies, attention over the pairs each query sees), recomputation not counted."""
    return 3.0 * flops.forward_flops(cfg, schedule, text_len)["total"]
