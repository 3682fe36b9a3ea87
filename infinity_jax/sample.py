"""The sampler: one jit-compiled program from text features to images, over all scales of a schedule.

    sampler = Sampler(model_cfg, schedule, vae=vae_config)        # static: shapes and options
    out = sampler(params, vae_params, text, text_mask, seeds, cfg=3.0, tau=1.0, top_k=900, top_p=0.97)
    out.images  # (B, H, W, 3) uint8 RGB      out.bits  # (B, L, d) uint8

Inside the program, for each scale k (a static Python loop: shapes differ per scale):
  1. the transformer runs scale k's tokens (the SOS token for k = 0) against a KV cache
     preallocated for the whole schedule and written in place (Infinity.decode_scale);
  2. classifier-free guidance on the logits, the official formula and order: every logit is
     multiplied by 1/tau_k, then cfg_k * l_cond + (1 - cfg_k) * l_uncond. Cond and uncond rows
     are one batch of 2B, interleaved (cond_0, uncond_0, cond_1, ...) so a batch sharded over
     devices keeps each prompt's pair on one device;
  3. every bit is drawn from its two logits (top-k, then top-p, then a Bernoulli draw, as the
     official sampler does per bit) or, in greedy mode, set to argmax;
  4. the codes are accumulated at the last scale's size and the next scale's input is built
     from them (tokenizer.bsq.accumulate_codes / next_scale_input, shared with training).
Then the VAE decodes the summed codes and pixels become uint8 as the official sampler makes them:
((x + 1) / 2 * 255) truncated (RGB here; the official one returns BGR).

Dynamic inputs (changing them never recompiles): params, text, seeds, the per-scale guidance and
temperature, top_k, top_p, greedy. Static (one program each): the model and VAE configs, the
schedule, batch size and text length, `cfg_batch` (whether the uncond half is run at all),
`return_logits`, `progress` and the mesh. Programs are compiled ahead of time per input signature
and kept, so a second call with the same shapes runs without tracing; `compile_seconds` records
the cost.

Randomness: image i uses the key `seeds[i]`, folded with the scale index, so an image depends on
its own seed only (not on its batch or position in it), bit-identically on one backend.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import time
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from infinity_jax import parallel, schedules, targets
from infinity_jax.model import flops
from infinity_jax.model.transformer import Infinity, InfinityConfig, abstract_params, init_cache, null_text
from infinity_jax.tokenizer import bsq
from infinity_jax.tokenizer import vae as vae_lib

# The official tools/run_infinity.py defaults (top_k 900 keeps both logits of a bit: a no-op).
DEFAULT_CFG, DEFAULT_TAU, DEFAULT_TOP_K, DEFAULT_TOP_P = 3.0, 1.0, 900, 0.97
# XLA compile options used when a Sampler is given none (tests set LLVM -O0: same numbers, faster CPU compiles)
DEFAULT_COMPILER_OPTIONS: dict[str, Any] = {}


# ---------------------------------------------------------------- guidance schedules (host side)
def per_scale(spec: Any, num_scales: int, name: str = "cfg") -> np.ndarray:
    """A per-scale value list (num_scales,) float64 from a number, a list, or a string.

    Strings: '3' (constant), '1,2,3,...' (one per scale; a shorter list repeats its last value, as
    in the official cfg_list which only needs len >= K), 'lin:A:B' (a linear ramp from A at the
    first scale to B at the last).
    """
    if isinstance(spec, str):
        s = spec.strip()
        m = re.fullmatch(r"lin(?:ear)?:([^:]+):([^:]+)", s)
        try:
            if m:
                a, b = float(m.group(1)), float(m.group(2))
                return np.linspace(a, b, num_scales) if num_scales > 1 else np.array([a])
            spec = [float(v) for v in s.split(",") if v.strip()]
        except ValueError as e:
            raise ValueError(f"{name}={spec!r}: expected a number, 'v1,v2,...' or 'lin:START:END'") from e
    vals = np.atleast_1d(np.asarray(spec, np.float64))
    if vals.ndim != 1 or vals.size == 0 or not np.all(np.isfinite(vals)):
        raise ValueError(f"{name}={spec!r}: expected a finite number or a non-empty list of them")
    if vals.size > num_scales:
        vals = vals[:num_scales]
    return np.concatenate([vals, np.full(num_scales - vals.size, vals[-1])])


class SamplingParams(NamedTuple):
    """Dynamic sampling settings (a pytree of arrays; changing them does not recompile).

    cond_w, uncond_w: (K,) float32, cfg_k and 1 - cfg_k (computed in float64 on the host, as the
    official Python floats); inv_tau: (K,) float32, 1 / tau_k; top_k: () int32 (only 1 filters: a
    bit has 2 logits); top_p: () float32 (0 = off); greedy: () bool (argmax per bit, ties -> 0);
    top_p_floor: () float32, the probability at or below which top-p drops a logit: 1 - top_p in
    float64 on the host, then float32, as the official sampler compares its softmax with it.
    """

    cond_w: Any
    uncond_w: Any
    inv_tau: Any
    top_k: Any
    top_p: Any
    greedy: Any
    top_p_floor: Any = np.float32(0.0)


def sampling_params(
    num_scales: int,
    cfg: Any = DEFAULT_CFG,
    tau: Any = DEFAULT_TAU,
    top_k: int = DEFAULT_TOP_K,
    top_p: float = DEFAULT_TOP_P,
    greedy: bool = False,
) -> SamplingParams:
    """SamplingParams for a schedule of `num_scales` scales; cfg and tau as `per_scale` accepts."""
    cfgs, taus = per_scale(cfg, num_scales, "cfg"), per_scale(tau, num_scales, "tau")
    if np.any(taus <= 0):
        raise ValueError(f"tau={tau!r}: expected positive temperatures")
    if not 0.0 <= float(top_p) <= 1.0:
        raise ValueError(f"top_p={top_p!r}: expected a value in [0, 1] (0 = off)")
    if int(top_k) < 0:
        raise ValueError(f"top_k={top_k!r}: expected >= 0 (0 = off)")
    top_p = float(top_p)  # any top_p > 0 filters, however small, as the official sampler's argument does
    return SamplingParams(
        np.float32(cfgs),
        np.float32(1.0 - cfgs),
        np.float32(1.0 / taus),
        np.int32(top_k),
        np.float32(top_p),
        np.bool_(greedy),
        top_p_floor(top_p),
    )


def top_p_floor(top_p: float) -> np.float32:
    """float32(1 - top_p) with the subtraction in float64: the official filter's threshold (a Python
    float cast to float32), which differs from float32 arithmetic by up to 15 float32 steps (0.97)."""
    return np.float32(1.0 - float(top_p))


def uses_guidance(sp: SamplingParams) -> bool:
    """True when some scale has cfg != 1 (then the uncond half must run)."""
    return bool(np.any(np.asarray(sp.cond_w) != 1.0))


# ---------------------------------------------------------------- per-bit sampling
def sample_bits(logits: jax.Array, u: jax.Array, top_k, top_p, greedy, floor=None) -> jax.Array:
    """Bits from bit logits as the official per-bit sampler draws them.

    logits: (..., d, 2) float32 ([..., 0] = bit is 0); u: (..., d) uniforms in [0, 1).
    top_k == 1 drops the strictly smaller logit; top_p > 0 drops the smaller one when its
    probability <= floor (`top_p_floor(top_p)`, the official threshold; None: 1 - top_p in
    float32) (ties: bit 0 counts as the smaller, as a stable ascending sort);
    the rest is a draw with p(1) = softmax. greedy: argmax (ties -> 0). Returns (..., d) uint8.
    """
    l0, l1 = logits[..., 0], logits[..., 1]
    small_is_0 = l0 <= l1
    lo, hi = jnp.minimum(l0, l1), jnp.maximum(l0, l1)
    floor = 1 - top_p if floor is None else floor
    drop = ((top_k == 1) & (lo < hi)) | ((top_p > 0) & (jax.nn.sigmoid(lo - hi) <= floor))
    p1 = jnp.where(drop, small_is_0.astype(jnp.float32), jax.nn.sigmoid(l1 - l0))
    sampled = u < p1
    return jnp.where(greedy, l1 > l0, sampled).astype(jnp.uint8)


# ---------------------------------------------------------------- the program
class SampleOutput(NamedTuple):
    """bits (B, L, d) uint8 (all scales, row-major per scale); summed_codes (B, h, w, d) float32
    (the decoder input; under spatial patchify (B, 2h, 2w, d/4), the VAE's grid and bits); images
    (B, H, W, 3) uint8 RGB or None; logits (B, L, 2d) float32 (after temperature and CFG, what the bits
    were drawn from) or None."""

    bits: Any
    summed_codes: Any
    images: Any = None
    logits: Any = None


def guide(logits: jax.Array, cond_w, uncond_w) -> jax.Array:
    """CFG over the rows of a `cfg_text` batch (cond_0, uncond_0, cond_1, ...): (2B, ...) -> (B, ...),
    cond_w * cond + uncond_w * uncond (temperature is applied before, as the official sampler does)."""
    lg = logits.reshape(logits.shape[0] // 2, 2, *logits.shape[1:])
    return cond_w * lg[:, 0] + uncond_w * lg[:, 1]


def scale_uniforms(keys: jax.Array, k: int, n: int, d: int) -> jax.Array:
    """The uniforms that image i's n positions x d bits of scale k are drawn from: (B, n, d), from
    fold_in(keys[i], k), so an image's draw does not depend on its batch."""
    return jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, k), (n, d)))(keys)


def cfg_text(
    params, text: jax.Array, text_mask: jax.Array, neg_text: jax.Array | None = None, neg_mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The CFG batch: (2B, Lt', Ct) features and (2B, Lt') mask, rows (cond_0, uncond_0, cond_1, ...).

    The uncond row of a prompt is the null text cfg_uncond[:len_i] (official default), or the
    negative prompt's features (neg_*: (B or 1, Ln, Ct)); lengths are zero-padded to match.
    """
    B = text.shape[0]
    if neg_text is None:
        neg_text, neg_mask = null_text(params, text_mask).astype(text.dtype), text_mask
    else:
        if neg_text.shape[0] not in (1, B):
            raise ValueError(f"negative text batch {neg_text.shape[0]}: expected 1 or {B}")
        neg_text = jnp.broadcast_to(neg_text, (B, *neg_text.shape[1:])).astype(text.dtype)
        neg_mask = jnp.broadcast_to(neg_mask, (B, neg_mask.shape[1]))
    lt = max(text.shape[1], neg_text.shape[1])

    def pad(x, m):
        n = lt - x.shape[1]
        return jnp.pad(x, ((0, 0), (0, n), (0, 0))), jnp.pad(m.astype(bool), ((0, 0), (0, n)))

    (t, m), (tn, mn) = pad(text, text_mask), pad(neg_text, neg_mask)
    both = jnp.stack([t, tn], 1).reshape(2 * B, lt, t.shape[-1])
    return both, jnp.stack([m, mn], 1).reshape(2 * B, lt)


def _constrain_batch(x, mesh: Mesh | None, axis: int = 0):
    if mesh is None:
        return x
    spec = [None] * x.ndim
    spec[axis] = parallel.BATCH_AXES
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


_last_progress = [0.0]


def _progress(k, token, *, num_scales, hw):
    """Host side of the per-scale progress callback: which scale finished, seconds since the last."""
    del token  # only there so the callback waits for the scale's bits
    now = time.perf_counter()
    dt = now - _last_progress[0]
    _last_progress[0] = now
    print(f"[sample] scale {int(k) + 1}/{num_scales} ({hw[0]}x{hw[1]}) done, +{dt:.3f}s", file=sys.stderr, flush=True)


def generate_tokens(
    model_cfg: InfinityConfig,
    schedule: schedules.Schedule,
    params,
    text,
    text_mask,
    seeds,
    sp: SamplingParams,
    neg_text=None,
    neg_mask=None,
    *,
    cfg_batch: bool = True,
    return_logits: bool = False,
    progress: bool = False,
    mesh: Mesh | None = None,
):
    """The autoregressive loop (pure; call under jit). Returns (bits (B,L,d), summed (B,h,w,d), logits|None);
    under the model's apply_spatial_patchify the bits stay in transformer order (4 x the VAE's bits per token)
    and summed is on the VAE's doubled grid (B, 2h, 2w, d/4), each scale's bits pixel-shuffled onto it.

    params: the transformer's (unboxed) params; text (B, Lt, Ct), text_mask (B, Lt); seeds (B,)
    uint32; sp: SamplingParams; cfg_batch: run the uncond half (needed unless every cfg_k == 1).
    """
    model = Infinity(model_cfg)
    schedule = schedules.validate(schedule)
    hws = [(h, w) for _, h, w in schedule]
    d, B = model_cfg.codebook_dim, text.shape[0]
    patchify = model_cfg.apply_spatial_patchify  # the VAE grid is then twice each scale's, with d / 4 bits
    vae_hw = bsq.scale_hws(bsq.vae_schedule(schedule, patchify))[-1]
    variables = {"params": params}
    if cfg_batch:
        text_all, mask_all = cfg_text(params, text, text_mask, neg_text, neg_mask)
    else:
        text_all, mask_all = text, text_mask
    ctx = model.apply(variables, _constrain_batch(text_all, mesh), mask_all, method=Infinity.encode_text)
    ctx = model.apply(variables, ctx, method=Infinity.decode_context)  # the text's keys/values, once
    rows = 2 * B if cfg_batch else B

    def new_cache(sched):  # (depth, batch, L, H, c): batch over the data axes, like the activations
        cache = init_cache(model_cfg, rows, sched)
        if mesh is not None:
            cache = jax.lax.with_sharding_constraint(cache, NamedSharding(mesh, P(None, parallel.BATCH_AXES)))
        return cache

    # The first scale (one token) runs on a cache of its own, copied into the whole schedule's after it: where
    # the big cache meets a one-token scale the TPU compiler gives it another layout there, and a copy of
    # all of it (measured: XLA's TPU memory analysis, docs/performance.md).
    cache = new_cache(schedule[:1])
    keys = jax.vmap(jax.random.key)(seeds)
    summed = jnp.zeros((B, *vae_hw, model_cfg.vae_codebook_dim), jnp.float32)
    x, bits_out, logits_out = None, [], []
    for k, hw in enumerate(hws):
        # the scope names each scale's ops (HLO metadata only), so a profile splits the time per scale
        with jax.named_scope(f"scale{k:02d}_{hw[0]}x{hw[1]}"):
            logits, cache = model.apply(variables, ctx, x, cache, schedule, k, method=Infinity.decode_scale)
            if k == 0 and len(hws) > 1:
                first, cache = cache, new_cache(schedule)
                cache = jax.tree.map(lambda c, f: jax.lax.dynamic_update_slice_in_dim(c, f, 0, axis=2), cache, first)
            logits = logits * sp.inv_tau[k]
            if cfg_batch:
                logits = guide(logits, sp.cond_w[k], sp.uncond_w[k])
            logits = _constrain_batch(logits, mesh)
            u = scale_uniforms(keys, k, hw[0] * hw[1], d)
            bits = sample_bits(logits.reshape(B, -1, d, 2), u, sp.top_k, sp.top_p, sp.greedy, sp.top_p_floor)
            bits_out.append(bits)
            if return_logits:
                logits_out.append(logits)
            summed = bsq.accumulate_codes(summed, bsq.from_tokens(bits, hw, patchify))
            if progress:
                jax.debug.callback(functools.partial(_progress, num_scales=len(hws), hw=hw), k, bits[0, 0, 0])
            if k + 1 < len(hws):
                x = bsq.next_scale_input(summed, hws[k + 1], patchify)
                if cfg_batch:  # the same input for a prompt's cond and uncond rows
                    x = jnp.repeat(x, 2, axis=0)
                x = _constrain_batch(x.astype(jnp.float32), mesh)
    bits = jnp.concatenate(bits_out, axis=1)
    return bits, summed, (jnp.concatenate(logits_out, axis=1) if return_logits else None)


def to_uint8(images: jax.Array, bgr: bool = False) -> jax.Array:
    """(B, H, W, 3) in [-1, 1] -> uint8 as the official sampler: ((x + 1) / 2 * 255) truncated."""
    x = jnp.floor((images.astype(jnp.float32) + 1) / 2 * 255)
    x = jnp.clip(x, 0, 255).astype(jnp.uint8)
    return x[..., ::-1] if bgr else x


def teacher_forced_cfg_logits(
    model_cfg: InfinityConfig,
    schedule,
    params,
    text,
    text_mask,
    x_wo_prefix,
    cfg: Any = DEFAULT_CFG,
    tau: Any = DEFAULT_TAU,
    neg_text=None,
    neg_mask=None,
):
    """The sampler's logits replayed with the full teacher-forced forward (no cache).

    x_wo_prefix: (B, L - 1, d) next-scale inputs of a sampled sequence. Returns (B, L, 2d): per
    scale k, cfg_k * l_cond / tau_k + (1 - cfg_k) * l_uncond / tau_k, in the sampler's order.
    """
    schedule = schedules.validate(schedule)
    sp = sampling_params(len(schedule), cfg, tau)
    text_all, mask_all = cfg_text(params, text, text_mask, neg_text, neg_mask)
    logits = Infinity(model_cfg).apply({"params": params}, text_all, mask_all, jnp.repeat(x_wo_prefix, 2, 0), schedule)
    lengths = np.asarray(schedules.scale_lengths(schedule))
    per_tok = lambda v: jnp.asarray(np.repeat(np.asarray(v), lengths))[None, :, None]
    return guide(logits * per_tok(sp.inv_tau), per_tok(sp.cond_w), per_tok(sp.uncond_w))


# ---------------------------------------------------------------- the compiled sampler
def _vae_model(vae):
    if vae is None or isinstance(vae, vae_lib.BSQVAE):
        return vae
    return vae_lib.from_config(vae)


def _unbox(tree):
    return None if tree is None else nn.unbox(tree)


# the blocks' matmul kernels and their Dense layers' biases, which every use casts to the compute dtype
# (model/layers.py; flax's Dense casts its bias to its dtype before the add)
_COMPUTE_DTYPE_KERNELS = {
    ("sa", "mat_qkv"),
    ("ca", "mat_kv"),
    *(
        (*layer, p)
        for layer in (("sa", "proj"), ("ca", "mat_q"), ("ca", "proj"), ("ffn", "fc1"), ("ffn", "fc2"))
        for p in ("kernel", "bias")
    ),
}


def kernels_in_compute_dtype(params, model_cfg: InfinityConfig):
    """The params with the blocks' matmul kernels (and their Dense biases) stored in the compute dtype
    (arrays or ShapeDtypeStructs). Each use casts them to it anyway, so outputs are bit-identical; a bf16
    model's params take about half the memory and no scale of the program casts 2B weights (or launches a
    kernel per bias and layer to cast the biases) again."""
    dtype = model_cfg.compute_dtype
    if dtype == jnp.float32:
        return params

    def cast(path, x):
        keys = tuple(getattr(k, "key", None) for k in path)
        if not (keys and str(keys[0]).startswith("blocks") and keys[1:] in _COMPUTE_DTYPE_KERNELS):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params)


def check_padding_at_end(mask: np.ndarray, name: str) -> None:
    """ValueError unless each row's real tokens come first (padding at the end), as the text encoder gives
    them: the fused attention kernels take text padding as lengths, as the official code does."""
    lengths = mask.sum(-1, keepdims=True)
    bad = np.flatnonzero((mask != (np.arange(mask.shape[-1]) < lengths)).any(-1))
    if bad.size:
        raise ValueError(
            f"{name} row {int(bad[0])} is {mask[bad[0]].astype(int).tolist()}: expected its real tokens first "
            "and the padding at the end (True ... True False ... False)"
        )


class Sampler:
    """Compiles and runs the whole sampling program for one model, schedule and mesh.

    model_cfg: InfinityConfig; schedule: (t, h, w) triples (static); vae: a BSQVAE, a
    configs/bsq_vae.py ConfigDict, or None (no decoding: images=None); mesh/rules: shard the
    batch over the data axes and the params by their logical axes (parallel.RULES preset);
    cfg_batch: run the uncond half (False only when every cfg_k == 1); return_logits: also
    return the guided logits (tests); progress: print each scale as it finishes (a host callback
    per scale; off for benchmarks); compiler_options: XLA options for the compile (tests use
    {'xla_backend_optimization_level': 0}: same numbers, CPU compiles ~2x faster);
    compute_dtype_kernels: store the blocks' matmul kernels in the compute dtype
    (`kernels_in_compute_dtype`; same outputs, half the params' memory for bf16). Default: on
    GPU/TPU only. XLA's CPU backend runs bf16 matmuls in float32 and hoists that conversion of the
    whole stacked kernels out of the layer loop, so on CPU bf16 kernels cost an f32 copy instead.

    A call compiles once per input signature (shapes, dtypes, whether a negative prompt is given)
    and reuses the executable: `num_compiles` and `compile_seconds` tell how many and how long.
    """

    def __init__(
        self,
        model_cfg: InfinityConfig,
        schedule,
        vae=None,
        *,
        mesh: Mesh | None = None,
        rules: Any = "dp",
        cfg_batch: bool = True,
        return_logits: bool = False,
        progress: bool = False,
        compiler_options: Mapping[str, Any] | None = None,
        compute_dtype_kernels: bool | None = None,
    ):
        self.model_cfg = model_cfg
        if compute_dtype_kernels is None:
            compute_dtype_kernels = targets.platform() != "cpu"
        self.compute_dtype_kernels = compute_dtype_kernels
        self.schedule = schedules.validate(schedule)
        self.vae = _vae_model(vae)
        if self.vae is not None:
            model_cfg.check_tokenizer(self.vae.codebook_dim, self.vae.patch_size)
        self.mesh, self.rules = mesh, rules
        self.cfg_batch, self.return_logits, self.progress = cfg_batch, return_logits, progress
        opts = DEFAULT_COMPILER_OPTIONS if compiler_options is None else compiler_options
        self.compiler_options = dict(opts) or None
        self._executables: dict[Any, Any] = {}
        self.compile_seconds: dict[Any, float] = {}
        self._param_shardings = self._vae_shardings = None
        if mesh is not None:
            self._param_shardings = parallel.param_shardings(abstract_params(model_cfg), mesh, rules)
            if self.vae is not None:
                self._vae_shardings = parallel.param_shardings(vae_lib.abstract_params(self.vae), mesh, rules)

    # -- the program
    def _program(self, params, vae_params, text, text_mask, seeds, sp, neg_text, neg_mask):
        bits, summed, logits = generate_tokens(
            self.model_cfg,
            self.schedule,
            params,
            text,
            text_mask,
            seeds,
            sp,
            neg_text,
            neg_mask,
            cfg_batch=self.cfg_batch,
            return_logits=self.return_logits,
            progress=self.progress,
            mesh=self.mesh,
        )
        images = None
        if self.vae is not None:
            images = to_uint8(self.vae.apply({"params": vae_params}, summed, method="decode"))
            images = _constrain_batch(images, self.mesh)
        return SampleOutput(bits, summed, images, logits)

    @property
    def batch_multiple(self) -> int:
        """The cond batch must be a multiple of this (the number of batch shards)."""
        if self.mesh is None:
            return 1
        return int(np.prod([self.mesh.shape[a] for a in parallel.BATCH_AXES]))

    @property
    def num_compiles(self) -> int:
        return len(self._executables)

    def _kernels(self, params):
        return kernels_in_compute_dtype(params, self.model_cfg) if self.compute_dtype_kernels else params

    def place_params(self, params, vae_params=None):
        """Unboxes and puts the params where the program expects them (sharded under a mesh), the
        blocks' matmul kernels in the compute dtype where `compute_dtype_kernels` says so."""
        params, vae_params = _unbox(params), _unbox(vae_params)
        if self.mesh is None:
            params = jax.tree.map(jnp.asarray, params)
            return self._kernels(params), (None if vae_params is None else jax.tree.map(jnp.asarray, vae_params))
        params = self._kernels(jax.device_put(params, self._param_shardings))
        if vae_params is not None:
            vae_params = jax.device_put(vae_params, self._vae_shardings)
        return params, vae_params

    def _jitted(self, with_negative: bool):
        if self.mesh is None:
            return jax.jit(self._program)
        rows = lambda nd: parallel.batch_sharding(self.mesh, nd)
        neg = (rows(3), rows(2)) if with_negative else (None, None)
        in_sh = (
            self._param_shardings,
            self._vae_shardings,
            rows(3),
            rows(2),
            rows(1),
            parallel.replicated(self.mesh),
            *neg,
        )
        return jax.jit(self._program, in_shardings=in_sh)

    def compile(self, params, vae_params, text, text_mask, seeds, sp, neg_text=None, neg_mask=None):
        """Compiles (if not yet) for these inputs' signature; returns (executable, seconds spent now).
        Inputs may be arrays or ShapeDtypeStructs (params: the blocks' kernels are taken as
        `place_params` stores them)."""
        params = self._kernels(params)
        args = (params, vae_params, text, text_mask, seeds, sp, neg_text, neg_mask)
        sig = jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), args)
        sig = (jax.tree.structure(args), tuple(jax.tree.leaves(sig)))
        if sig in self._executables:
            return self._executables[sig], 0.0
        t0 = time.perf_counter()
        with self._context():
            exe = self._jitted(neg_text is not None).lower(*args).compile(self.compiler_options)
        self.compile_seconds[sig] = dt = time.perf_counter() - t0
        self._executables[sig] = exe
        return exe, dt

    def _context(self):
        stack = contextlib.ExitStack()
        if self.mesh is not None:
            stack.enter_context(jax.set_mesh(self.mesh))
        return stack

    def prepare(self, text, text_mask, seeds, neg_text=None, neg_mask=None):
        """Checks shapes and puts the per-prompt inputs on device (batch-sharded under a mesh)."""
        text, text_mask = np.asarray(text, np.float32), np.asarray(text_mask, bool)
        B = text.shape[0]
        if text.ndim != 3 or text_mask.shape != text.shape[:2] or text.shape[-1] != self.model_cfg.text_channels:
            raise ValueError(
                f"text {text.shape} / mask {text_mask.shape}: expected (B, Lt, "
                f"{self.model_cfg.text_channels}) and (B, Lt)"
            )
        if not text_mask.any(1).all():
            raise ValueError("a prompt has no text tokens (empty mask row): every prompt needs at least one token")
        check_padding_at_end(text_mask, "text_mask")
        seeds = np.asarray(seeds, np.int64).reshape(-1)
        if seeds.size == 1 and B > 1:
            seeds = seeds + np.arange(B)  # one seed for the batch: image i gets seed + i
        if seeds.shape != (B,):
            raise ValueError(f"seeds of shape {seeds.shape}: expected one per prompt ({B},) or a single seed")
        seeds = (seeds % (1 << 32)).astype(np.uint32)
        if B % self.batch_multiple:
            raise ValueError(
                f"batch {B} is not a multiple of the {self.batch_multiple} batch shards of the mesh; "
                "pad the prompts (e.g. repeat the last one)"
            )
        if neg_text is not None:
            neg_text, neg_mask = np.asarray(neg_text, np.float32), np.asarray(neg_mask, bool)
            check_padding_at_end(neg_mask, "neg_mask")
            if neg_text.shape[0] == 1 and B > 1:  # one negative prompt for all
                neg_text = np.repeat(neg_text, B, 0)
                neg_mask = np.repeat(neg_mask, B, 0)
        if self.mesh is None:
            put = jnp.asarray
        else:
            put = lambda a: jax.device_put(a, parallel.batch_sharding(self.mesh, a.ndim))
        out = [put(text), put(text_mask), put(seeds)]
        out += [None, None] if neg_text is None else [put(neg_text), put(neg_mask)]
        return out

    def __call__(
        self,
        params,
        vae_params,
        text,
        text_mask,
        seeds,
        sp: SamplingParams | None = None,
        *,
        neg_text=None,
        neg_mask=None,
        **settings,
    ) -> SampleOutput:
        """Runs the program. text: (B, Lt, Ct) float32 features, text_mask: (B, Lt) bool (at least one
        token per prompt); seeds: (B,) or one int (image i then gets seed + i); sp: SamplingParams
        or keywords of `sampling_params` (cfg, tau, top_k, top_p, greedy); neg_text/neg_mask:
        (B or 1, Ln, Ct) negative-prompt features for the uncond rows (default: the null text).
        params / vae_params: as `place_params` returns them (or host arrays: placed per call)."""
        if sp is None:
            sp = sampling_params(len(self.schedule), **settings)
        elif settings:
            raise TypeError(f"pass either sp or sampling keywords, not both: {sorted(settings)}")
        if not self.cfg_batch and uses_guidance(sp):
            raise ValueError("this Sampler was built with cfg_batch=False but cfg != 1 at some scale")
        if self.vae is not None and vae_params is None:
            raise ValueError("this Sampler decodes images: pass the VAE params (or build it with vae=None)")
        if self.vae is None:
            vae_params = None
        text, text_mask, seeds, neg_text, neg_mask = self.prepare(text, text_mask, seeds, neg_text, neg_mask)
        params, vae_params = _unbox(params), _unbox(vae_params)
        if self.mesh is not None:  # a no-op for params already placed by place_params
            params = jax.device_put(params, self._param_shardings)
            if vae_params is not None:
                vae_params = jax.device_put(vae_params, self._vae_shardings)
        params = self._kernels(params)  # a no-op after place_params
        sp = SamplingParams(*(jnp.asarray(v) for v in sp))
        exe, _ = self.compile(params, vae_params, text, text_mask, seeds, sp, neg_text, neg_mask)
        _last_progress[0] = time.perf_counter()
        with self._context():
            return exe(params, vae_params, text, text_mask, seeds, sp, neg_text, neg_mask)


# ---------------------------------------------------------------- FLOPs (for utilisation figures)
def transformer_flops(cfg: InfinityConfig, schedule, batch: int, text_len: int, cfg_batch: bool = True) -> float:
    """Matmul FLOPs of one sampling call's transformer work (model/flops.py: each scale against the cache
    is the teacher-forced forward's work, the text's keys/values once per call). Rows: 2B with CFG."""
    return batch * (2 if cfg_batch else 1) * flops.forward_flops(cfg, schedule, text_len)["total"]


def scale_flops(cfg: InfinityConfig, schedule, batch: int, text_len: int, cfg_batch: bool = True) -> list[float]:
    """transformer_flops split per scale (each scale's tokens against the cache; the text's and the
    per-example work with the first), summing to it."""
    totals = [transformer_flops(cfg, schedule[: k + 1], batch, text_len, cfg_batch) for k in range(len(schedule))]
    return [t - (totals[k - 1] if k else 0.0) for k, t in enumerate(totals)]
