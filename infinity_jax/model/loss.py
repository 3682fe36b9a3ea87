"""Bit-wise loss and accuracy of the Infinity head: pure functions, float32.

logits: (B, L, 2d) with logits[..., 2j] / [..., 2j + 1] = bit j being 0 / 1; labels: (B, L, d) in
{0, 1}; a schedule's tokens are concatenated scale by scale (infinity_jax.schedules).

The official trainer's loss (use_bit_label=1, bitloss_type='mean', reweight_loss_by_scale=1):
cross-entropy per bit, mean over the d bits, then a weighted sum over tokens with weights
sqrt(area_last / area_k) for a token of scale k, normalised to sum 1, then the mean over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax import schedules


def _pairs(logits: jax.Array, labels: jax.Array) -> jax.Array:
    b, l, v = logits.shape
    if labels.shape != (b, l, v // 2) or v % 2:
        raise ValueError(f"logits {logits.shape} / labels {labels.shape}: expected (B, L, 2d) and (B, L, d)")
    return logits.astype(jnp.float32).reshape(b, l, v // 2, 2)


def bit_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-token loss (B, L): cross-entropy of each bit's two logits, mean over the d bits.

    label_smoothing as torch's cross_entropy: (1 - eps) * nll + eps * mean over both classes.
    """
    logp = jax.nn.log_softmax(_pairs(logits, labels), axis=-1)
    nll = -jnp.take_along_axis(logp, labels.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return nll.mean(-1)


def scale_token_weights(schedule: schedules.Schedule, reweight: bool = True) -> np.ndarray:
    """(L,) float32 token weights summing to 1: sqrt(area_last / area_k) per token of scale k
    (reweight=True, the official option), else uniform 1 / L."""
    lengths = schedules.scale_lengths(schedule)
    if reweight:
        w = np.concatenate([np.full(n, np.sqrt(lengths[-1] / n)) for n in lengths])
    else:
        w = np.ones(sum(lengths))
    return (w / w.sum()).astype(np.float32)


def bitwise_loss(
    logits: jax.Array,
    labels: jax.Array,
    schedule: schedules.Schedule,
    *,
    reweight: bool = True,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Scalar training loss: per-token bit cross-entropy, weighted per scale, mean over the batch."""
    per_token = bit_cross_entropy(logits, labels, label_smoothing)
    w = jnp.asarray(scale_token_weights(schedule, reweight))
    if per_token.shape[1] != w.shape[0]:
        raise ValueError(f"{per_token.shape[1]} tokens in the logits; the schedule has {w.shape[0]}")
    return (per_token * w).sum(-1).mean()


def per_scale_accuracy(logits: jax.Array, labels: jax.Array, schedule: schedules.Schedule) -> jax.Array:
    """(K,) fraction of correctly predicted bits (argmax) per scale, over batch, tokens and bits."""
    pred = jnp.argmax(_pairs(logits, labels), axis=-1)
    hit = (pred == labels.astype(pred.dtype)).astype(jnp.float32).mean((0, 2))  # (L,)
    return _scale_mean(hit, schedule)


def per_scale_loss(logits: jax.Array, labels: jax.Array, schedule: schedules.Schedule) -> jax.Array:
    """(K,) mean bit cross-entropy per scale (unweighted; for logging)."""
    return _scale_mean(bit_cross_entropy(logits, labels).mean(0), schedule)


def _scale_mean(per_token: jax.Array, schedule: schedules.Schedule) -> jax.Array:
    """(L,) -> (K,) mean over each scale's tokens (float32 sums, no matmul precision loss)."""
    lengths = schedules.scale_lengths(schedule)
    if per_token.shape[0] != sum(lengths):
        raise ValueError(f"{per_token.shape[0]} tokens in the logits; the schedule has {sum(lengths)}")
    ids = jnp.asarray(np.concatenate([np.full(n, k) for k, n in enumerate(lengths)]))
    sums = jax.ops.segment_sum(per_token, ids, num_segments=len(lengths), indices_are_sorted=True)
    return sums / jnp.asarray(lengths, jnp.float32)
