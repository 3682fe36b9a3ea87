"""TPU attention: Pallas splash attention behind the model's attention entry point (model/attention.py).

    out = splash_attention(q, k, v, scale=s, q_scales=ids_q, kv_scales=ids_kv, kv_valid=valid)

Kernel: jax.experimental.pallas.ops.tpu.splash_attention, multi-head (`make_splash_mha`, one device:
head_shards = q_seq_shards = 1). What decides which key a query sees:
  * the scales (block-causal, training) and the length padding form one *static* mask, a splash `Mask`
    built lazily from the numpy ids (`ScaleMask`: query i sees key j iff kv_id[j] <= q_id[i]). The
    kernel turns it into a block-sparse table at trace time: blocks nobody sees are skipped, blocks
    everybody sees run unmasked, only the blocks on a scale boundary load a (block x block) mask tile.
    All heads share it (a MultiHeadMask of one object repeated, deduplicated by the kernel).
  * `kv_valid` (per example, dynamic) goes in as segment ids: the kernel lets query i see key j only
    where q_segment[i] == kv_segment[j] (and-ed with the static mask), so queries get segment 1
    everywhere and keys 1 where real, 0 where padding.

Padding: the kernel's key blocks must be multiples of 128 lanes (`block_kv_compute % 128`, and the
segmented dKV kernel needs `block_q % 128`), and both lengths must be multiples of their blocks. So
l and m are padded to multiples of bq = min(block, l rounded up to 128) and bkv (likewise for m).
Padded keys get the id `_PAD_KEY` that no query reaches; padded queries get `_PAD_QUERY`, which sees
every real key (an all-hidden row would divide by zero in the kernel and put NaN into the backward
pass through dK/dV); their outputs are dropped, so their cotangents are zero and they add nothing
to any gradient.

Numerics: the kernel has no logit scale, so q is multiplied by `scale` (in float32, then cast back
to q's dtype: for bf16 inputs a scale that is not a power of two rounds q once more than a kernel
with a scale argument would). Logits, the online-softmax statistics, the accumulator and the
normalisation are float32 in the kernel; the output is in q's dtype. Head widths: any; the kernel
takes the whole head dimension as one block (a block dim equal to the full array dim is legal for
Mosaic) and handles widths below 128 lanes itself (64, 96, 128 in the model; 16, 32 in tests).

Gradients: the kernel's own custom VJP (flash-style dQ and dKV kernels with the same block sizes
and the same static mask, transposed for dKV); the q scaling and the padding are plain JAX around it.

`interpret=True` runs the very same pallas_calls in Pallas interpret mode (pallas_call(...,
interpret=True), passed down by make_splash_mha), which works on CPU: the tests check the forward
and the gradients that way. (A `jax.experimental.pallas.tpu.InterpretParams()` in place of True also
passes through and runs, in the slower TPU-faithful interpreter.) Not yet run on TPU hardware; Mosaic
compiles these kernels for TPU (forward, dQ, dKV; head widths 32, 96 and 128) when the training step and
the sampler are compiled for a TPU slice through libtpu (`bench ... --memory --topology`, docs/performance.md).
The batch is a vmap over the kernel.

Sharding: the kernel is one pallas_call per device; under jit with sharded activations it must be
wrapped in shard_map over batch (and heads) by the caller, since XLA cannot partition a custom call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from infinity_jax.model.attention import _pad_to, check_inputs

LANES = 128  # splash needs key blocks (and, with segment ids, backward query blocks) in multiples of this
_PAD_KEY = np.iinfo(np.int32).max  # the id of a padded key: no query sees it
_PAD_QUERY = _PAD_KEY - 1  # the id of a padded query: sees every real key, never a padded one


class ScaleMask(splash.Mask):
    """A static splash mask over padded lengths: query i sees key j iff kv_ids[j] <= q_ids[i].

    Slices are computed on demand from the two id vectors, so the (l, m) boolean matrix is never
    built and hashing (the kernel caches its mask processing by hash) costs O(l + m)."""

    def __init__(self, q_ids: np.ndarray, kv_ids: np.ndarray):
        self.q_ids = np.ascontiguousarray(q_ids, np.int32)
        self.kv_ids = np.ascontiguousarray(kv_ids, np.int32)
        if self.q_ids.ndim != 1 or self.kv_ids.ndim != 1:
            raise ValueError("ScaleMask: expected 1-d id vectors")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.q_ids.shape[0], self.kv_ids.shape[0])

    def __getitem__(self, idx) -> np.ndarray:
        if not isinstance(idx, tuple) or len(idx) != 2:
            raise NotImplementedError(f"ScaleMask: unsupported index {idx!r}")
        rows, cols = idx
        q = self.q_ids[rows]
        kv = self.kv_ids[cols]
        return kv[None, :] <= q[:, None] if q.ndim else kv <= q

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScaleMask):
            return NotImplemented
        return np.array_equal(self.q_ids, other.q_ids) and np.array_equal(self.kv_ids, other.kv_ids)

    def __hash__(self) -> int:
        return hash((ScaleMask, self.q_ids.tobytes(), self.kv_ids.tobytes()))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _block_sizes(l: int, m: int, block: int) -> tuple[int, int]:
    """(bq, bkv): `block`, or less for a short sequence (still a multiple of 128)."""
    if block <= 0 or block % LANES:
        raise ValueError(f"splash_attention: block={block} must be a positive multiple of {LANES}")
    return min(block, _round_up(l, LANES)), min(block, _round_up(m, LANES))


def padded_ids(
    l: int, m: int, lp: int, mp: int, q_scales: np.ndarray | None, kv_scales: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The (lp,) query and (mp,) key ids of the static mask (see ScaleMask and the module docstring)."""
    if q_scales is None:
        q_ids, kv_ids = np.zeros(l, np.int64), np.zeros(m, np.int64)
    else:
        q_ids, kv_ids = np.asarray(q_scales, np.int64), np.asarray(kv_scales, np.int64)
        lo = min(q_ids.min(initial=0), kv_ids.min(initial=0))
        hi = max(q_ids.max(initial=0), kv_ids.max(initial=0))
        if lo <= np.iinfo(np.int32).min or hi >= _PAD_QUERY:
            raise ValueError("splash_attention: scale ids must fit in int32 below 2**31 - 2")
    q_ids = np.pad(q_ids, (0, lp - l), constant_values=_PAD_QUERY)
    kv_ids = np.pad(kv_ids, (0, mp - m), constant_values=_PAD_KEY)
    return q_ids.astype(np.int32), kv_ids.astype(np.int32)


def make_kernel(q_ids: np.ndarray, kv_ids: np.ndarray, num_heads: int, bq: int, bkv: int, *, interpret: bool = False):
    """The splash MHA kernel for this static mask: q (H, lp, c), k/v (H, mp, c) [, SegmentIds]."""
    head_mask = ScaleMask(q_ids, kv_ids)
    mask = splash.MultiHeadMask([head_mask] * num_heads)
    sizes = splash.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(
    q,
    k,
    v,
    *,
    scale: float,
    q_scales: np.ndarray | None = None,
    kv_scales: np.ndarray | None = None,
    kv_valid: jax.Array | None = None,
    interpret: bool = False,
    block: int = 128,
) -> jax.Array:
    """q: (B, l, H, c); k, v: (B, m, H, c) (same dtype, bf16 or f32).
    q_scales (l,) and kv_scales (m,): static numpy int arrays; when given, block-causal attention
      over scales: query i sees key j iff kv_scales[j] <= q_scales[i]  (both given or both None).
    kv_valid: (B, m) bool, True = a real key (padded text for cross-attention); None = all real.
    scale: multiplies the logits q.k (1.0 for cosine attention).
    interpret: run the Pallas kernels in interpret mode (CPU, tests).
    block: the query and key block of the kernel, a multiple of 128 (shorter sequences use less).
    Returns (B, l, H, c) in q's dtype; softmax statistics in float32."""
    check_inputs(q, k, v, q_scales, kv_scales, kv_valid, who="splash_attention")
    b, l, h, c = q.shape
    m = k.shape[1]

    bq, bkv = _block_sizes(l, m, block)
    lp, mp = _round_up(l, bq), _round_up(m, bkv)
    q_ids, kv_ids = padded_ids(l, m, lp, mp, q_scales, kv_scales)
    kernel = make_kernel(q_ids, kv_ids, h, bq, bkv, interpret=interpret)

    dtype = q.dtype
    scale = float(scale)
    if scale != 1.0:
        q = (q.astype(jnp.float32) * scale).astype(dtype)
    # (B, len, H, c) -> (B, H, len, c), lengths padded to whole blocks
    qh = _pad_to(q.transpose(0, 2, 1, 3), 2, lp)
    kh = _pad_to(k.transpose(0, 2, 1, 3), 2, mp)
    vh = _pad_to(v.transpose(0, 2, 1, 3), 2, mp)

    if kv_valid is None:
        out = _mxu_precision(lambda q, k, v: jax.vmap(kernel)(q, k, v), dtype)(qh, kh, vh)
    else:
        seg_kv = _pad_to(kv_valid.astype(jnp.int32), 1, mp, 0)  # 1 = real key, 0 = padding
        seg_q = jnp.ones((b, lp), jnp.int32)
        segments = splash.SegmentIds(q=seg_q, kv=seg_kv)

        def with_segments(q, k, v, s):
            return jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=s1))(q, k, v, s)

        out = _mxu_precision(with_segments, dtype)(qh, kh, vh, segments)
    return out[:, :, :l].transpose(0, 2, 1, 3).astype(dtype)


def _mxu_precision(fn, dtype):
    """fn with its kernels' matmuls at the default precision, forward and backward, for 16-bit inputs: the
    TPU multiplies bf16 with float32 accumulation, and Mosaic refuses a bf16 matmul asked for float32
    precision (what jax_default_matmul_precision='highest', set for parity checks, would ask)."""
    if jnp.dtype(dtype).itemsize > 2:
        return fn

    @jax.custom_vjp
    def run(*args):
        with jax.default_matmul_precision("default"):
            return fn(*args)

    def run_fwd(*args):
        with jax.default_matmul_precision("default"):
            return jax.vjp(fn, *args)

    def run_bwd(vjp, g):
        with jax.default_matmul_precision("default"):
            return vjp(g)

    run.defvjp(run_fwd, run_bwd)
    return run
