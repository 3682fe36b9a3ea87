"""Bitwise multi-scale residual quantizer (BSQ) of Infinity, as pure, jit-able JAX functions.

A latent z: (B, h, w, d) is coded coarse to fine over a schedule of K scales (h_k, w_k), the
last equal to (h, w). At scale k the residual z - accumulated is area-averaged down to
(h_k, w_k); its signs are the d bits of every position (1 = positive); the codes
(2*bits - 1) / sqrt(d) are upsampled bilinearly to (h, w) and added to the accumulation.

The transformer sees, for scale k+1, the accumulation after scale k resized (bilinearly, as the
official trainer and sampler both do) to (h_{k+1}, w_{k+1}) and flattened row-major; its labels
are the bits of every scale flattened the same way. Bitwise self-correction flips random bits of
the first scales and continues the residual from the corrupted accumulation, so the labels of
later scales learn to undo earlier mistakes.

Resizing follows PyTorch exactly: 'area' is adaptive average pooling (windows overlap when the
sizes do not divide), bilinear is align_corners=False without antialiasing. Both are written as
a constant (out, in) matrix per axis, which is exact and costs nothing to trace.

Spatial patchify (the official `apply_spatial_patchify=1`, the Infinity-8B recipe): the transformer
works on 4d bits per token over its schedule (h_k, w_k) while the tokenizer quantizes on the doubled
grid (2h_k, 2w_k) with d bits; a VAE-grid map (B, 2h, 2w, d) becomes transformer rows by
`pixel_unshuffle` (B, h, w, 4d) (channel 4c + 2i + j holds channel c of pixel (2y+i, 2x+j), as
torch's pixel_unshuffle(., 2)), and sampled rows go back by `pixel_shuffle`. Functions that take a
schedule take the transformer's and `patchify`; the latent, bits and flip masks are then on the
doubled grid (`vae_schedule`), the inputs and labels in transformer order.

Conventions: schedules are sequences of (t, h, w) triples with t = 1 (see
infinity_jax.schedules), or (h, w) pairs; they are static: under jit pass them as hashable
tuples, e.g. jax.jit(multiscale_quantize, static_argnums=1) or functools.partial(..., schedule=s).
Bits are uint8 (B, h_k, w_k, d); all quantizer math is float32 whatever the input dtype.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax import schedules

_HIGHEST = jax.lax.Precision.HIGHEST  # resizes are exact fp32 sums, also on TPU/GPU
_L2_EPS = 1e-12  # torch F.normalize's floor on the norm


class MultiScaleTokens(NamedTuple):
    """Output of `multiscale_quantize` (a pytree).

    bits:         list of K arrays (B, h_k, w_k, d) uint8, 1 = positive sign
    z_hat:        (B, h, w, d) float32, the sum of every scale's codes upsampled to (h, w)
    quant_inputs: list of K arrays (B, h_k, w_k, d) float32, the residual quantized at scale k
    """

    bits: list
    z_hat: jax.Array
    quant_inputs: list


# ----------------------------------------------------------------------------- schedules


def scale_hws(
    schedule: Sequence[Sequence[int]], latent_hw: tuple[int, int] | None = None
) -> tuple[tuple[int, int], ...]:
    """(h_k, w_k) of every scale of `schedule` ((t, h, w) triples with t = 1, or (h, w) pairs).

    Raises ValueError for a malformed schedule or one whose last scale is not `latent_hw`.
    """
    try:
        triples = [tuple(s) if len(s) == 3 else (1, *s) for s in schedule]
    except TypeError as e:
        raise ValueError(f"schedule={schedule!r}: expected a sequence of (t, h, w) or (h, w) scales") from e
    sched = schedules.validate(triples, latent_hw=latent_hw)
    if any(t != 1 for t, _, _ in sched):
        raise ValueError(f"schedule={sched}: the image quantizer expects t = 1 at every scale")
    return tuple((h, w) for _, h, w in sched)


def vae_schedule(schedule: Sequence[Sequence[int]], patchify: int = 0) -> tuple[tuple[int, int, int], ...]:
    """The tokenizer's schedule of a transformer schedule: the same, or (t, 2h, 2w) per scale under spatial
    patchify (the official sampler's and trainer's vae_scale_schedule)."""
    triples = [tuple(int(v) for v in s) if len(s) == 3 else (1, *(int(v) for v in s)) for s in schedule]
    return tuple((t, 2 * h, 2 * w) for t, h, w in triples) if patchify else tuple(triples)


def _check_latent(z, name: str = "z") -> None:
    if z.ndim != 4:
        raise ValueError(f"{name} has shape {tuple(z.shape)}: expected a latent (B, h, w, d)")


# ----------------------------------------------------------------------------- resizing


@functools.lru_cache(maxsize=None)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) adaptive-average-pooling weights: row i averages [floor(i*n/m), ceil((i+1)*n/m))."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


@functools.lru_cache(maxsize=None)
def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights of PyTorch, align_corners=False, no antialias.

    Source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped at 0, computed in float32 as
    PyTorch's CPU kernel does; the right neighbour is clamped to the last input.
    """
    m = np.zeros((n_out, n_in), np.float32)
    ratio = np.float32(n_in) / np.float32(n_out)
    for i in range(n_out):
        src = max(ratio * (np.float32(i) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
        i0 = min(int(np.floor(src)), n_in - 1)
        lam = np.float32(min(max(src - np.float32(i0), 0.0), 1.0))
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        m[i, i0] += np.float32(1.0) - lam
        m[i, i1] += lam
    return m


def _resize(x: jax.Array, hw: tuple[int, int], matrix) -> jax.Array:
    if x.ndim != 4:
        raise ValueError(f"resize input has shape {tuple(x.shape)}: expected (B, h, w, C)")
    (h, w), (H, W) = x.shape[1:3], (int(hw[0]), int(hw[1]))
    if H < 1 or W < 1:
        raise ValueError(f"resize target {hw}: expected positive (H, W)")
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    y = x.astype(jnp.float32)
    if H != h:  # equal sizes are an exact copy in PyTorch; skip the matmul
        y = jnp.einsum("Hh,bhwc->bHwc", matrix(h, H), y, precision=_HIGHEST)
    if W != w:
        y = jnp.einsum("Ww,bhwc->bhWc", matrix(w, W), y, precision=_HIGHEST)
    return y.astype(dtype)


def area_resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """PyTorch `F.interpolate(mode='area')` (adaptive average pooling). x: (B, h, w, C) -> (B, H', W', C)."""
    return _resize(x, hw, _area_matrix)


def bilinear_resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """PyTorch bilinear/trilinear (on a (1, h, w) volume), align_corners=False, no antialias.

    x: (B, h, w, C) -> (B, H', W', C); shrinking samples two neighbours, as PyTorch does.
    """
    return _resize(x, hw, _linear_matrix)


def pixel_unshuffle(x: jax.Array) -> jax.Array:
    """(B, 2h, 2w, C) -> (B, h, w, 4C), torch's pixel_unshuffle(., 2) channels-last: output channel
    4c + 2i + j is input channel c at offset (i, j) of its 2x2 block."""
    b, H, W, c = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"pixel_unshuffle of shape {tuple(x.shape)}: expected even (H, W)")
    x = x.reshape(b, H // 2, 2, W // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, H // 2, W // 2, 4 * c)


def pixel_shuffle(x: jax.Array) -> jax.Array:
    """(B, h, w, 4C) -> (B, 2h, 2w, C): the inverse of `pixel_unshuffle` (torch's pixel_shuffle(., 2))."""
    b, h, w, c4 = x.shape
    if c4 % 4:
        raise ValueError(f"pixel_shuffle of shape {tuple(x.shape)}: expected channels divisible by 4")
    x = x.reshape(b, h, w, c4 // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, 2 * h, 2 * w, c4 // 4)


def to_tokens(x: jax.Array, patchify: int = 0) -> jax.Array:
    """One scale's VAE-grid map (B, H, W, C) as transformer rows (B, H*W, C), or (B, H*W/4, 4C) under
    patchify (pixel_unshuffle first), row-major."""
    if patchify:
        x = pixel_unshuffle(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def from_tokens(x: jax.Array, hw: tuple[int, int], patchify: int = 0) -> jax.Array:
    """Transformer rows (B, h*w, C) of a scale of transformer size hw -> its VAE-grid map: (B, h, w, C),
    or (B, 2h, 2w, C/4) under patchify. The inverse of `to_tokens`."""
    x = x.reshape(x.shape[0], int(hw[0]), int(hw[1]), x.shape[-1])
    return pixel_shuffle(x) if patchify else x


# ----------------------------------------------------------------------------- one scale


def bit_margins(x: jax.Array) -> jax.Array:
    """|x| / ||x|| per channel (x: (..., d), float32): how far each bit is from flipping."""
    x = x.astype(jnp.float32)
    return jnp.abs(x) / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _L2_EPS)


def quantize_scale(x: jax.Array) -> jax.Array:
    """Bits of one scale. x: (B, h, w, d) -> (B, h, w, d) uint8, 1 where the l2-normalised x > 0."""
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _L2_EPS)
    return (x > 0).astype(jnp.uint8)


def bits_to_codes(bits: jax.Array) -> jax.Array:
    """Codes on the unit sphere: (2*bits - 1) / sqrt(d). bits: (..., d) -> float32 (..., d)."""
    d = bits.shape[-1]
    return (2.0 * bits.astype(jnp.float32) - 1.0) * np.float32(1.0 / math.sqrt(d))


def accumulate_codes(accumulated: jax.Array, bits: jax.Array) -> jax.Array:
    """accumulated + the codes of `bits` upsampled to its size.

    accumulated: (B, h, w, d) float32; bits: (B, h_k, w_k, d). The one update the encoder, the
    teacher-forcing path and the sampler share.
    """
    return accumulated + bilinear_resize(bits_to_codes(bits), accumulated.shape[1:3])


def next_scale_input(accumulated: jax.Array, hw: tuple[int, int], patchify: int = 0) -> jax.Array:
    """Transformer input of the next scale, of transformer size hw: accumulated (B, h, w, d) resized to hw,
    as (B, h'*w', d); under patchify resized to the doubled hw and pixel_unshuffled, (B, h'*w', 4d)."""
    _check_latent(accumulated, "accumulated")
    f = 2 if patchify else 1
    x = bilinear_resize(accumulated.astype(jnp.float32), (f * int(hw[0]), f * int(hw[1])))
    return to_tokens(x, patchify)


# ----------------------------------------------------------------------------- sequences


def flatten_scales(xs: Sequence[jax.Array]) -> jax.Array:
    """List of (B, h_k, w_k, C) -> (B, L, C), every scale row-major, coarse to fine."""
    if not xs:
        raise ValueError("flatten_scales got no scales: expected a non-empty list of (B, h_k, w_k, C)")
    for k, x in enumerate(xs):
        if x.ndim != 4:
            raise ValueError(f"scale {k} has shape {tuple(x.shape)}: expected (B, h_k, w_k, C)")
    return jnp.concatenate([x.reshape(x.shape[0], -1, x.shape[-1]) for x in xs], axis=1)


def flatten_tokens(bits_per_scale: Sequence[jax.Array], patchify: int = 0) -> jax.Array:
    """VAE-grid bits of every scale (B, H_k, W_k, d) -> transformer labels (B, L, d or 4d) (see to_tokens)."""
    if not patchify:
        return flatten_scales(bits_per_scale)
    return jnp.concatenate([to_tokens(b, patchify) for b in bits_per_scale], axis=1)


def split_tokens(x: jax.Array, schedule, patchify: int = 0) -> list[jax.Array]:
    """Transformer rows (B, L, C) of `schedule` -> VAE-grid maps per scale; the inverse of `flatten_tokens`."""
    return [pixel_shuffle(s) if patchify else s for s in split_scales(x, schedule)]


def split_scales(x: jax.Array, schedule) -> list[jax.Array]:
    """(B, L, C) -> list of (B, h_k, w_k, C); the inverse of `flatten_scales`."""
    hws = scale_hws(schedule)
    L = sum(h * w for h, w in hws)
    if x.ndim != 3 or x.shape[1] != L:
        raise ValueError(f"split_scales got shape {tuple(x.shape)}: expected (B, {L}, C) for schedule {hws}")
    out, start = [], 0
    for h, w in hws:
        out.append(x[:, start : start + h * w].reshape(x.shape[0], h, w, x.shape[-1]))
        start += h * w
    return out


# ----------------------------------------------------------------------------- multi-scale


def _residual_quantize(z, hws, flip_masks=None, requant: bool = True, patchify: int = 0):
    """The one encoder loop: bits, quantizer inputs, final accumulation and next-scale inputs.

    flip_masks[k] (or None) flips bits of scale k before they enter the accumulation (when
    `requant`); the returned bits stay the unflipped signs of the residual, i.e. the labels.
    """
    z = z.astype(jnp.float32)
    acc = jnp.zeros_like(z)
    bits, inputs, next_inputs = [], [], []
    for k, hw in enumerate(hws):
        residual = z - acc
        r = residual if hw == z.shape[1:3] else area_resize(residual, hw)
        b = quantize_scale(r)
        fed = b
        if requant and flip_masks is not None and k < len(flip_masks) and flip_masks[k] is not None:
            fed = b ^ flip_masks[k].astype(jnp.uint8)
        acc = accumulate_codes(acc, fed)
        bits.append(b)
        inputs.append(r)
        if k + 1 < len(hws):  # hws are the VAE grid's: the input is resized there, then unshuffled
            x = bilinear_resize(acc, hws[k + 1])
            next_inputs.append(to_tokens(x, patchify))
    return bits, inputs, acc, next_inputs


def _latent_and_scales(z, schedule, patchify: int = 0):
    _check_latent(z)
    return scale_hws(vae_schedule(scale_hws(schedule), patchify), latent_hw=tuple(z.shape[1:3]))


def multiscale_quantize(z: jax.Array, schedule, patchify: int = 0) -> MultiScaleTokens:
    """Quantize a latent z: (B, h, w, d) over `schedule` (last scale (h, w); under patchify the transformer
    schedule, z and the outputs on its doubled grid). See MultiScaleTokens."""
    hws = _latent_and_scales(z, schedule, patchify)
    bits, inputs, acc, _ = _residual_quantize(z, hws)
    return MultiScaleTokens(bits=bits, z_hat=acc, quant_inputs=inputs)


def _check_bits(bits_per_scale, hws, *, allow_prefix: bool = False):
    n = len(bits_per_scale)
    if not (n == len(hws) or (allow_prefix and 1 <= n <= len(hws))):
        want = f"1..{len(hws)}" if allow_prefix else f"{len(hws)}"
        raise ValueError(f"got bits for {n} scales: expected {want} for schedule {hws}")
    d = bits_per_scale[0].shape[-1]
    for k, (b, hw) in enumerate(zip(bits_per_scale, hws)):
        if b.ndim != 4 or tuple(b.shape[1:3]) != hw or b.shape[-1] != d:
            raise ValueError(f"bits of scale {k} have shape {tuple(b.shape)}: expected (B, {hw[0]}, {hw[1]}, {d})")


def bits_to_latent(bits_per_scale: Sequence[jax.Array], schedule, patchify: int = 0) -> jax.Array:
    """Quantized latent (B, h, w, d): every scale's codes upsampled to the last scale and summed.

    bits_per_scale may hold only the first k scales (a coarse reconstruction); shapes must
    match schedule[:k] (under patchify: its doubled grid, VAE-grid bits); the output is always at
    the last scale's size.
    """
    hws = scale_hws(vae_schedule(scale_hws(schedule), patchify))
    _check_bits(bits_per_scale, hws, allow_prefix=True)
    b0 = bits_per_scale[0]
    acc = jnp.zeros((b0.shape[0], *hws[-1], b0.shape[-1]), jnp.float32)
    for b in bits_per_scale:
        acc = accumulate_codes(acc, b)
    return acc


def teacher_forcing_inputs(bits_per_scale: Sequence[jax.Array], schedule, patchify: int = 0) -> jax.Array:
    """Transformer inputs of scales 2..K from the bits of all K scales: (B, L - h_1*w_1, d).

    For scale k+1: the accumulation of scales 1..k resized to (h_{k+1}, w_{k+1}), row-major. Under
    patchify: VAE-grid bits of the doubled schedule in, (B, L - h_1*w_1, 4d) out (see next_scale_input).
    """
    hws = scale_hws(schedule)
    vhws = scale_hws(vae_schedule(hws, patchify))
    _check_bits(bits_per_scale, vhws)
    b0 = bits_per_scale[0]
    acc = jnp.zeros((b0.shape[0], *vhws[-1], b0.shape[-1]), jnp.float32)
    xs = []
    for k in range(len(hws) - 1):
        acc = accumulate_codes(acc, bits_per_scale[k])
        xs.append(next_scale_input(acc, hws[k + 1], patchify))
    if not xs:
        return jnp.zeros((b0.shape[0], 0, b0.shape[-1] * (4 if patchify else 1)), jnp.float32)
    return jnp.concatenate(xs, axis=1)


# ----------------------------------------------------------------------------- self-correction


def flip_strength_levels(strength: float) -> int:
    """How many strengths the official draw picks from: 0, 0.01, ..., (n-1) * 0.01 uniformly.

    Mirrors numpy's randint(0, 100 * strength + 1) with a float bound (truncated), so 0.3 gives
    0..0.30 and 0.29 gives 0..0.28, exactly as the official trainer draws.
    """
    try:
        p = float(strength)
    except TypeError as e:  # a traced value: the number of levels fixes a static bound
        raise ValueError(f"strength={strength!r}: expected a static Python float in [0, 1], not a traced array") from e
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"strength={strength!r}: expected a float in [0, 1]")
    return int(100 * p + 1)


def draw_flip_masks(
    rng: jax.Array, hws, batch: int, d: int, *, strength: float = 0.3, num_layers: int = 13
) -> tuple[list[jax.Array], jax.Array]:
    """Random flips of the official recipe: (masks, strengths).

    For each of the first `num_layers` scales one strength s_k (shared by the batch) is drawn
    uniformly from {0, 0.01, ..., } (see flip_strength_levels); each bit flips independently
    with probability s_k. hws: the (h_k, w_k) of every scale.
    masks: list of (batch, h_k, w_k, d) uint8 (all zero past num_layers); strengths: (K,) float32.
    """
    levels = flip_strength_levels(strength)
    if not (isinstance(num_layers, (int, np.integer)) and num_layers >= 0):
        raise ValueError(f"num_layers={num_layers!r}: expected a non-negative int (how many scales get flips)")
    hws = tuple((int(h), int(w)) for h, w in hws)
    lengths = np.array([h * w for h, w in hws])
    k_s, k_m = jax.random.split(rng)
    # two draws for the whole schedule (not two per scale): cheaper to trace and compile
    strengths = jax.random.randint(k_s, (len(hws),), 0, levels).astype(jnp.float32) * np.float32(0.01)
    strengths = jnp.where(jnp.arange(len(hws)) < num_layers, strengths, 0.0)
    per_token = jnp.repeat(strengths, lengths, total_repeat_length=int(lengths.sum()))
    flips = jax.random.uniform(k_m, (batch, int(lengths.sum()), d)) < per_token[None, :, None]
    return split_scales(flips.astype(jnp.uint8), hws), strengths


def self_correction_with_flips(
    z: jax.Array, schedule, flip_masks: Sequence[jax.Array | None], *, requant: bool = True, patchify: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Teacher forcing with given bit flips: (x_wo_prefix (B, L - h_1*w_1, d), labels (B, L, d) uint8).

    z: (B, h, w, d) raw latent. flip_masks: up to K masks (B, h_k, w_k, d) (None = no flips).
    With `requant`, scale k's flipped bits enter the accumulation and later residuals (hence
    labels) correct them. Without it the official trainer feeds the unflipped codes, so flips
    change nothing; this is kept as it is. Under patchify z and the masks are on the doubled grid
    of the (transformer) schedule, and x / labels are in transformer order with 4d channels.
    """
    hws = _latent_and_scales(z, schedule, patchify)
    if len(flip_masks) > len(hws):
        raise ValueError(f"got {len(flip_masks)} flip masks: expected at most {len(hws)} (one per scale)")
    for k, m in enumerate(flip_masks):
        want = (z.shape[0], *hws[k], z.shape[-1])
        if m is not None and tuple(m.shape) != want:
            raise ValueError(f"flip mask of scale {k} has shape {tuple(m.shape)}: expected {want}")
    bits, _, _, xs = _residual_quantize(z, hws, flip_masks, requant, patchify)
    c = z.shape[-1] * (4 if patchify else 1)
    x = jnp.concatenate(xs, axis=1) if xs else jnp.zeros((z.shape[0], 0, c), jnp.float32)
    return x, flatten_tokens(bits, patchify)


def self_correction(
    z: jax.Array,
    schedule,
    rng: jax.Array,
    *,
    strength: float = 0.3,
    num_layers: int = 13,
    requant: bool = True,
    patchify: int = 0,
) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
    """Bitwise self-correction (training inputs with random flips), the official recipe.

    z: (B, h, w, d) raw latent; rng: a PRNG key. Returns (x_wo_prefix (B, L - h_1*w_1, d) float32,
    labels (B, L, d) uint8, flip_masks: list of K (B, h_k, w_k, d) uint8). strength and
    num_layers are static Python numbers. strength=0 gives exactly the teacher-forcing inputs.
    Under patchify (the official trainer's apply_spatial_patchify) z and the flips are on the doubled
    grid of the transformer schedule; x and labels have 4d channels (see self_correction_with_flips).
    """
    hws = _latent_and_scales(z, schedule, patchify)
    masks, _ = draw_flip_masks(rng, hws, z.shape[0], z.shape[-1], strength=strength, num_layers=num_layers)
    x, labels = self_correction_with_flips(z, schedule, masks, requant=requant, patchify=patchify)
    return x, labels, masks
