"""One attention entry point for the whole model, with a kernel per backend.

    out = attention(q, k, v, scale=1.0, q_scales=ids_q, kv_scales=ids_kv, kv_valid=valid)

q: (B, l, H, c); k, v: (B, m, H, c); returns (B, l, H, c) in v's dtype. Which keys a query sees:
  q_scales (l,), kv_scales (m,)  static numpy ints, both or neither: block-causal over scales,
                                 query i sees key j iff kv_scales[j] <= q_scales[i] (training);
  kv_valid (B, m) bool           True = a real key (padded text in cross-attention);
  neither                        every key (the cached sampler: k, v are the static prefix of
                                 the cache, the scales before this one and this one).
Every query must see at least one key (true of this model: key 0, or a prompt's first token).
Logits, softmax statistics and the normalisation are float32 in every implementation.

Implementations (`implementation=`, or InfinityConfig.attention):
  'xla'      dense: the (B, H, l, m) float32 logits and probabilities are materialised. The
             reference; what every other path is tested against.
  'chunked'  pure JAX, memory-efficient: queries in chunks of `q_chunk`, keys in chunks of
             `kv_chunk` with an online softmax, the mask built per chunk from the ids, so memory
             is O(q_chunk x kv_chunk) per row and head, not O(l x m). Shapes that fit one chunk
             take the dense path (identical numbers). Its backward (a custom VJP, as flash
             attention's) keeps only the output and per-query log-sum-exp and recomputes each
             chunk's probabilities, so training keeps no scores either.
  'cudnn'    cuDNN flash attention (jax.nn.dot_product_attention, implementation='cudnn'):
             bf16/fp16, head width <= 128 and a multiple of 8. No bias (cuDNN's backward cannot
             give the gradient of a broadcast one): block-causal attention runs as one unmasked
             call per query scale against its key prefix, padded keys go in as lengths, so
             kv_valid must be a prefix mask there (padded text is); odd lengths are padded to
             even ones, which jax's wrapper needs when differentiated (even_lengths=False: a call
             that is never differentiated, the sampler's, skips that copy). Under a mesh each device
             runs the calls on its shard, as splash does.
  'splash'   Pallas splash attention on TPU (model/attention_tpu.py): the block-causal mask is a
             static block-sparse mask (fully hidden blocks are skipped), padding via segment ids;
             elsewhere it runs in Pallas interpret mode (slow: for tests). Under a mesh each
             device runs the kernel on its shard (shard_map: batch over data axes, heads over
             'tensor').
  'auto'     cudnn on GPU where its dtype and head width allow, splash on TPU, chunked elsewhere
             (CPU), for the platform the program is built for (targets.platform(): the default
             backend, or the TPU / GPU target being compiled for). `select_implementation` says which.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax import parallel, targets

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")
Q_CHUNK, KV_CHUNK = 512, 1024  # the chunked path's default blocks: 2 MiB of f32 logits per row and head
_MASKED = -1e30  # finite, so a chunk whose keys are all hidden gives no inf - inf
HIDDEN_ID = np.iinfo(np.int32).max  # the scale id of padded keys: no query sees them


def select_implementation(requested: str, dtype, head_dim: int, backend: str | None = None) -> str:
    """The kernel `attention(..., implementation=requested)` runs for this dtype and head width."""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {requested!r}: expected one of {IMPLEMENTATIONS}")
    if requested != "auto":
        return requested
    backend = backend or targets.platform()
    if backend == "gpu" and cudnn_supports(dtype, head_dim):
        return "cudnn"
    if backend == "tpu":
        return "splash"
    return "chunked"


def cudnn_supports(dtype, head_dim: int) -> bool:
    """cuDNN flash attention takes 16-bit inputs and head widths <= 128 that are multiples of 8."""
    return (
        jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and head_dim <= 128 and head_dim % 8 == 0
    )


def check_inputs(q, k, v, q_scales, kv_scales, kv_valid, who: str = "attention"):
    """ValueError naming `who` and the offending shapes unless the arguments fit `attention`'s."""
    b, l, h, c = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2:] != (h, c):
        raise ValueError(f"{who}: q {q.shape}, k {k.shape}, v {v.shape}: expected (B, l, H, c) and two (B, m, H, c)")
    m = k.shape[1]
    if (q_scales is None) != (kv_scales is None):
        raise ValueError(f"{who}: give both q_scales and kv_scales (block-causal) or neither")
    if q_scales is not None and (np.shape(q_scales) != (l,) or np.shape(kv_scales) != (m,)):
        raise ValueError(
            f"{who}: q_scales {np.shape(q_scales)} / kv_scales {np.shape(kv_scales)}: expected ({l},) and ({m},)"
        )
    if kv_valid is not None and kv_valid.shape != (b, m):
        raise ValueError(f"{who}: kv_valid {kv_valid.shape}: expected ({b}, {m})")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    q_scales: np.ndarray | None = None,
    kv_scales: np.ndarray | None = None,
    kv_valid: jax.Array | None = None,
    implementation: str = "auto",
    q_chunk: int | None = None,
    kv_chunk: int | None = None,
    even_lengths: bool = True,
) -> jax.Array:
    """Softmax(scale * q k^T + mask) v. See the module docstring for shapes, masks and kernels.
    q_chunk / kv_chunk: the chunked path's blocks (default Q_CHUNK / KV_CHUNK, read at call time).
    even_lengths=False: the cuDNN path keeps odd lengths, for calls that are never differentiated."""
    check_inputs(q, k, v, q_scales, kv_scales, kv_valid)
    impl = select_implementation(implementation, v.dtype, q.shape[-1])
    if q_scales is not None:
        q_scales, kv_scales = np.asarray(q_scales, np.int32), np.asarray(kv_scales, np.int32)
    if impl == "xla":
        return dense_attention(q, k, v, scale, q_scales, kv_scales, kv_valid)
    if impl == "chunked":
        return chunked_attention(
            q, k, v, scale, q_scales, kv_scales, kv_valid, q_chunk=q_chunk or Q_CHUNK, kv_chunk=kv_chunk or KV_CHUNK
        )
    if impl == "cudnn":
        if not cudnn_supports(v.dtype, q.shape[-1]):
            raise ValueError(
                f"attention implementation 'cudnn' needs bfloat16/float16 and a head width <= 128 that "
                f"is a multiple of 8; got {jnp.dtype(v.dtype).name}, head width {q.shape[-1]}"
            )
        # per shard: jax's partitioning of the cuDNN call refuses q, k, v sharded differently (FSDP training)
        return _per_shard(
            lambda q, k, v, valid: fused_attention(
                q, k, v, scale, q_scales, kv_scales, valid, implementation="cudnn", even_lengths=even_lengths
            ),
            q,
            k,
            v,
            kv_valid,
        )
    from infinity_jax.model import attention_tpu

    kernel = functools.partial(
        attention_tpu.splash_attention,
        scale=scale,
        q_scales=q_scales,
        kv_scales=kv_scales,
        interpret=targets.platform() != "tpu",
    )
    return _per_shard(lambda q, k, v, valid: kernel(q, k, v, kv_valid=valid), q, k, v, kv_valid).astype(v.dtype)


def _per_shard(fn, q, k, v, kv_valid):
    """Runs a one-device kernel (a pallas_call, which XLA cannot partition, or the cuDNN calls) on each
    device's shard: batch over the mesh's data axes and heads over 'tensor', where a mesh is set and they
    divide."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, kv_valid)
    from jax.sharding import PartitionSpec as P

    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    batch = tuple(a for a in parallel.BATCH_AXES if a in sizes)
    if q.shape[0] % math.prod(sizes[a] for a in batch):
        batch = ()
    heads = "tensor" if "tensor" in sizes and q.shape[2] % sizes["tensor"] == 0 else None
    spec = P(batch or None, None, heads, None)
    vspec = P(batch or None, None)
    if kv_valid is None:
        return jax.shard_map(
            lambda q, k, v: fn(q, k, v, None), mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False
        )(q, k, v)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, vspec), out_specs=spec, check_vma=False)(
        q, k, v, kv_valid
    )


def _visible(q_ids, kv_ids, kv_valid):
    """(B or 1, 1, l, m) bool from the ids and the validity; None when every key is visible."""
    mask = None
    if q_ids is not None:
        mask = (jnp.asarray(kv_ids)[None, :] <= jnp.asarray(q_ids)[:, None])[None, None]
    if kv_valid is not None:
        pad = kv_valid.astype(bool)[:, None, None, :]
        mask = pad if mask is None else mask & pad
    return mask


def dense_attention(q, k, v, scale, q_scales=None, kv_scales=None, kv_valid=None):
    """The reference: float32 logits and softmax over all keys at once."""
    logits = jnp.einsum("blhc,bmhc->bhlm", q, k, preferred_element_type=jnp.float32) * scale
    mask = _visible(q_scales, kv_scales, kv_valid)
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhlm,bmhc->blhc", probs.astype(v.dtype), v, preferred_element_type=jnp.float32).astype(v.dtype)


def _pad_to(x, axis: int, n: int, value=0):
    extra = n - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def chunked_attention(
    q, k, v, scale, q_scales=None, kv_scales=None, kv_valid=None, *, q_chunk: int = Q_CHUNK, kv_chunk: int = KV_CHUNK
):
    """Online-softmax attention over query and key chunks (pure JAX; same semantics as dense), with a
    flash-style backward: it keeps only the output and each query's log-sum-exp, and recomputes each
    chunk's probabilities, so neither pass holds more than one block of scores."""
    b, l, h, c = q.shape
    m = k.shape[1]
    if l <= q_chunk and m <= kv_chunk:
        return dense_attention(q, k, v, scale, q_scales, kv_scales, kv_valid)
    qc, kc = min(q_chunk, l), min(kv_chunk, m)
    nq, nk = -(-l // qc), -(-m // kc)
    # every mask as ids: query i sees key j iff kv_id[j] <= q_id[i] (and kv_valid); padded keys never
    q_ids = np.zeros(l, np.int32) if q_scales is None else q_scales
    kv_ids = np.zeros(m, np.int32) if kv_scales is None else kv_scales
    q_ids = np.pad(q_ids, (0, nq * qc - l)).reshape(nq, qc)
    kv_ids = np.pad(kv_ids, (0, nk * kc - m), constant_values=HIDDEN_ID).reshape(nk, kc)
    valid = jnp.ones((b, m), bool) if kv_valid is None else kv_valid.astype(bool)
    valid = _pad_to(valid, 1, nk * kc, False).reshape(b, nk, kc).swapaxes(0, 1)  # (nk, B, kc)
    fn = _flash(float(scale), q_ids, kv_ids)
    out = fn(_pad_to(q, 1, nq * qc), _pad_to(k, 1, nk * kc), _pad_to(v, 1, nk * kc), valid)
    return out[:, :l]


def _blocks(x, n: int):
    """(B, n * s, H, c) -> (n, B, s, H, c)."""
    return x.reshape(x.shape[0], n, -1, *x.shape[2:]).swapaxes(0, 1)


def _unblock(x):
    """(n, B, s, ...) -> (B, n * s, ...)."""
    return x.swapaxes(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def _flash(scale: float, q_ids: np.ndarray, kv_ids: np.ndarray):
    """The chunked kernel for static ids (nq, qc) / (nk, kc): f(q, k, v, valid) on padded inputs, with
    valid (nk, B, kc). A custom VJP: the backward recomputes probabilities from the saved log-sum-exp."""
    nq, nk = q_ids.shape[0], kv_ids.shape[0]
    # numpy in the closure, made arrays inside each traced function: a custom VJP may not close over tracers

    def visible(q_id, kv_id, ok):  # (B, 1, qc, kc)
        return (kv_id[None, :] <= q_id[:, None])[None, None] & ok[:, None, None, :]

    def scores(q_blk, k_blk, vis):
        s = jnp.einsum("bqhc,bkhc->bhqk", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
        return jnp.where(vis, s, _MASKED)

    def forward(q, k, v, valid):
        kb, vb = _blocks(k, nk), _blocks(v, nk)
        q_idb, kv_idb = jnp.asarray(q_ids), jnp.asarray(kv_ids)

        def q_step(args):
            q_blk, q_id = args
            b, qc, h, c = q_blk.shape

            def kv_step(carry, blk):
                run_max, run_sum, acc = carry  # (B, H, qc), (B, H, qc), (B, qc, H, c) float32
                k_blk, v_blk, kv_id, ok = blk
                vis = visible(q_id, kv_id, ok)
                s = scores(q_blk, k_blk, vis)
                new_max = jnp.maximum(run_max, s.max(-1))
                p = jnp.where(vis, jnp.exp(s - new_max[..., None]), 0.0)
                corr = jnp.exp(run_max - new_max)
                pv = jnp.einsum("bhqk,bkhc->bqhc", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
                return (new_max, run_sum * corr + p.sum(-1), acc * corr.swapaxes(1, 2)[..., None] + pv), None

            init = (
                jnp.full((b, h, qc), _MASKED, jnp.float32),
                jnp.zeros((b, h, qc), jnp.float32),
                jnp.zeros((b, qc, h, c), jnp.float32),
            )
            (run_max, run_sum, acc), _ = jax.lax.scan(kv_step, init, (kb, vb, kv_idb, valid))
            run_sum = jnp.maximum(run_sum, 1e-30)
            out = (acc / run_sum.swapaxes(1, 2)[..., None]).astype(v.dtype)
            return out, run_max + jnp.log(run_sum)  # (B, qc, H, c), log-sum-exp (B, H, qc)

        out, lse = jax.lax.map(q_step, (_blocks(q, nq), q_idb))
        return _unblock(out), lse  # (B, Lq, H, c), (nq, B, H, qc)

    @jax.custom_vjp
    def flash(q, k, v, valid):
        return forward(q, k, v, valid)[0]

    def flash_fwd(q, k, v, valid):
        out, lse = forward(q, k, v, valid)
        return out, (q, k, v, valid, out, lse)

    def flash_bwd(res, dout):
        q, k, v, valid, out, lse = res
        q_idb, kv_idb = jnp.asarray(q_ids), jnp.asarray(kv_ids)
        delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1)  # (B, Lq, H)
        qb, kb, vb, dob = _blocks(q, nq), _blocks(k, nk), _blocks(v, nk), _blocks(dout, nq)
        deltab = _blocks(delta[..., None], nq)[..., 0].swapaxes(2, 3)  # (nq, B, H, qc)

        def grads(q_blk, q_id, do_blk, delta_blk, lse_blk, k_blk, v_blk, kv_id, ok):
            """This block's probabilities p and score gradients ds (B, H, qc, kc), float32."""
            vis = visible(q_id, kv_id, ok)
            p = jnp.where(vis, jnp.exp(scores(q_blk, k_blk, vis) - lse_blk[..., None]), 0.0)
            dp = jnp.einsum("bqhc,bkhc->bhqk", do_blk, v_blk, preferred_element_type=jnp.float32)
            return p, p * (dp - delta_blk[..., None])

        def dq_step(args):  # one query chunk against every key chunk
            q_blk, q_id, do_blk, delta_blk, lse_blk = args

            def body(dq, blk):
                k_blk, v_blk, kv_id, ok = blk
                _, ds = grads(q_blk, q_id, do_blk, delta_blk, lse_blk, k_blk, v_blk, kv_id, ok)
                return dq + jnp.einsum(
                    "bhqk,bkhc->bqhc", ds.astype(k_blk.dtype), k_blk, preferred_element_type=jnp.float32
                ) * scale, None

            dq, _ = jax.lax.scan(body, jnp.zeros(q_blk.shape, jnp.float32), (kb, vb, kv_idb, valid))
            return dq

        def dkv_step(args):  # one key chunk against every query chunk
            k_blk, v_blk, kv_id, ok = args

            def body(carry, blk):
                dk, dv = carry
                q_blk, q_id, do_blk, delta_blk, lse_blk = blk
                p, ds = grads(q_blk, q_id, do_blk, delta_blk, lse_blk, k_blk, v_blk, kv_id, ok)
                dv = dv + jnp.einsum(
                    "bhqk,bqhc->bkhc", p.astype(do_blk.dtype), do_blk, preferred_element_type=jnp.float32
                )
                dk = (
                    dk
                    + jnp.einsum("bhqk,bqhc->bkhc", ds.astype(q_blk.dtype), q_blk, preferred_element_type=jnp.float32)
                    * scale
                )
                return (dk, dv), None

            zero = jnp.zeros(k_blk.shape, jnp.float32)
            (dk, dv), _ = jax.lax.scan(body, (zero, zero), (qb, q_idb, dob, deltab, lse))
            return dk, dv

        dq = _unblock(jax.lax.map(dq_step, (qb, q_idb, dob, deltab, lse)))
        dk, dv = jax.lax.map(dkv_step, (kb, vb, kv_idb, valid))
        return dq.astype(q.dtype), _unblock(dk).astype(k.dtype), _unblock(dv).astype(v.dtype), None

    flash.defvjp(flash_fwd, flash_bwd)
    return flash


SMALL_PREFIX = 128  # cuDNN path: the scales whose keys end within this many go through one dense call


def prefix_groups(q_scales: np.ndarray, kv_scales: np.ndarray) -> list[tuple[int, int, int]]:
    """Block-causal ids as prefix attentions: [(q_start, q_end, kv_end)], one per query scale, whose queries
    see exactly the keys [0, kv_end). Needs nondecreasing ids (the model's: scales in order)."""
    q_scales, kv_scales = np.asarray(q_scales), np.asarray(kv_scales)
    if np.any(np.diff(q_scales) < 0) or np.any(np.diff(kv_scales) < 0):
        raise ValueError("block-causal ids must be nondecreasing (scales in order) for the cuDNN path")
    starts = np.flatnonzero(np.r_[True, q_scales[1:] != q_scales[:-1]])
    ends = np.r_[starts[1:], len(q_scales)]
    kv_ends = np.searchsorted(kv_scales, q_scales[starts], side="right")
    return [(int(a), int(b), int(e)) for a, b, e in zip(starts, ends, kv_ends)]


def _pad_to_even(x):
    """x (B, n, H, c) with one zero row appended along n where n is odd."""
    return jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0))) if x.shape[1] % 2 else x


def fused_attention(
    q,
    k,
    v,
    scale,
    q_scales=None,
    kv_scales=None,
    kv_valid=None,
    *,
    implementation="cudnn",
    small_prefix=None,
    even_lengths=True,
):
    """jax.nn.dot_product_attention with no bias and no mask array: jax asks cuDNN's backward for a bias's
    gradient whenever there is a bias, and cuDNN does not compute it for the broadcast shapes a mask needs
    ((1, 1, l, m); batch > 1). So block-causal ids become one unmasked call per query scale (its queries
    against the keys up to its end, which also skips the hidden blocks), with the first scales, whose keys
    end within `small_prefix`, in one small dense call; kv_valid goes in as key lengths, so on this path it
    must be a prefix mask (each row's real keys first), as padded text is. implementation='xla' runs the
    same calls on CPU (tests). small_prefix: default SMALL_PREFIX, read at call time. even_lengths=False:
    odd lengths stay odd (jax's wrapper refuses them only under differentiation: the sampler's calls)."""
    small_prefix = SMALL_PREFIX if small_prefix is None else small_prefix
    lengths = None if kv_valid is None else jnp.sum(kv_valid.astype(jnp.int32), axis=1)

    def call(q_part, kv_end):
        kv_len = lengths if lengths is None or kv_end >= k.shape[1] else jnp.minimum(lengths, kv_end)
        # Even lengths: differentiated, jax's cuDNN wrapper refuses odd ones (it checks them as if a bias were
        # given). An odd prefix takes one key more where k has it (no copy beyond the slice), else a zero key;
        # the key lengths hide it. A padded query's row is dropped.
        k_end = kv_end + kv_end % 2 if even_lengths else kv_end
        k_part, v_part = k[:, : min(k_end, k.shape[1])], v[:, : min(k_end, k.shape[1])]
        if k_end != kv_end:
            k_part, v_part = _pad_to_even(k_part), _pad_to_even(v_part)
            kv_len = jnp.full((k.shape[0],), kv_end, jnp.int32) if kv_len is None else kv_len
        out = jax.nn.dot_product_attention(
            _pad_to_even(q_part) if even_lengths else q_part,
            k_part,
            v_part,
            scale=float(scale),
            key_value_seq_lengths=kv_len,
            implementation=implementation,
        )
        return out[:, : q_part.shape[1]].astype(v.dtype)

    if q_scales is None:
        return call(q, k.shape[1])
    # trailing keys no query sees (the hidden id: a padding token that evens the sequence, Infinity.__call__)
    # stay in k, hidden by the key lengths; their queries get zero rows
    real = len(kv_scales) - int(np.argmax(kv_scales[::-1] != HIDDEN_ID)) if kv_scales[-1] == HIDDEN_ID else None
    if real is not None:
        if not 0 < real <= len(q_scales) or np.any(kv_scales[:real] == HIDDEN_ID):
            raise ValueError("fused_attention: hidden keys must trail the sequence, after at least one visible key")
        q_scales, kv_scales = q_scales[:real], kv_scales[:real]
    groups = prefix_groups(q_scales, kv_scales)
    small = [g for g in groups if g[2] <= small_prefix]
    outs = []
    if small:
        q_end, kv_end = small[-1][1], small[-1][2]
        valid = None if kv_valid is None else kv_valid[:, :kv_end]
        outs.append(
            dense_attention(
                q[:, :q_end], k[:, :kv_end], v[:, :kv_end], scale, q_scales[:q_end], kv_scales[:kv_end], valid
            )
        )
    outs += [call(q[:, a:b], kv_end) for a, b, kv_end in groups[len(small) :]]
    if real is not None and real < q.shape[1]:
        outs.append(jnp.zeros((q.shape[0], q.shape[1] - real, *q.shape[2:]), v.dtype))
    return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
