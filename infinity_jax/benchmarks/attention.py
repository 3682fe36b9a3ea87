"""Every attention kernel this backend can run, on the model's three ways of attending, against the
float32 dense reference: max error, forward ms, forward+backward ms (`infinity-jax bench attention`).

Cases (model/attention.py), at the 2B model's head width (128) by default:
  train      block-causal self-attention over a schedule's scales (train_pn, default 0.06M)
  sample     the cached sampler's last scale: its queries against the whole prefix (sample_pn)
  text       cross-attention from the last scale to padded text (text_len tokens, a quarter padding)

On GPU the kernels are xla (dense), chunked and cudnn; on TPU xla, chunked and splash; on CPU xla
and chunked (plus splash in interpret mode with interpret=True, slow). The error is the max
|out - reference| over the outputs (bf16 outputs carry ~1e-2 of rounding); a row's 'skip' says why a
kernel did not run (e.g. it refused the shape).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax import schedules
from infinity_jax.model import attention as A
from infinity_jax.model.transformer import scale_ids

CASES = ("train", "sample", "text")


def default_impls(backend: str, interpret: bool = False) -> list[str]:
    """The kernels a backend runs: GPU xla, chunked, cudnn; TPU xla, chunked, splash; CPU xla, chunked
    (+ splash in Pallas interpret mode when `interpret`)."""
    return {"gpu": ["xla", "chunked", "cudnn"], "tpu": ["xla", "chunked", "splash"]}.get(
        backend, ["xla", "chunked"] + (["splash"] if interpret else [])
    )


def cases(*, train_pn: str = "0.06M", sample_pn: str = "0.06M", text_len: int = 64, batch: int = 1) -> dict:
    """The three cases' shapes by name (see the module docstring); the sampler cases run 2 rows per
    prompt (CFG)."""
    train = schedules.official_schedule(1.0, train_pn)
    samp = schedules.official_schedule(1.0, sample_pn)
    ids = scale_ids(train)
    n, last = schedules.num_tokens(samp), schedules.scale_lengths(samp)[-1]
    return {
        "train": dict(l=len(ids), m=len(ids), q_scales=ids, kv_scales=ids, pad=False, rows=batch),
        "sample": dict(l=last, m=n, q_scales=None, kv_scales=None, pad=False, rows=2 * batch),
        "text": dict(l=last, m=text_len, q_scales=None, kv_scales=None, pad=True, rows=2 * batch),
    }


def time_ms(fn, *a, runs: int) -> float:
    """Median ms of `runs` calls of fn(*a) (each waited for), after one untimed call."""
    jax.block_until_ready(fn(*a))
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def run_case(
    name: str, case: dict, impls: list[str], *, heads: int, head_dim: int, dtype: str, runs: int, backward: bool = True
) -> list[dict]:
    """One row per kernel: the case's shape, max_err against the float32 dense reference, fwd_ms and
    fwd_bwd_ms (None without `backward`), or 'skip' (why the kernel did not run)."""
    rng = np.random.default_rng(0)
    b, l, m = case["rows"], case["l"], case["m"]
    q = rng.normal(size=(b, l, heads, head_dim)).astype(np.float32)
    k, v = rng.normal(size=(2, b, m, heads, head_dim)).astype(np.float32)
    q, k = q / np.linalg.norm(q, axis=-1, keepdims=True) * 10, k / np.linalg.norm(k, axis=-1, keepdims=True)
    valid = None
    if case["pad"]:
        lens = np.maximum(1, m - rng.integers(0, m // 4 + 1, size=b))
        valid = jnp.asarray(np.arange(m)[None] < lens[:, None])
    qs, ks = case["q_scales"], case["kv_scales"]
    dev = [jnp.asarray(x, dtype) for x in (q, k, v)]
    ref = jax.jit(lambda q, k, v: A.dense_attention(q, k, v, 1.0, qs, ks, valid))(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, v))
    )
    rows = []
    for impl in impls:
        row = {
            "case": name,
            "impl": impl,
            "rows": b,
            "queries": l,
            "keys": m,
            "heads": heads,
            "head_dim": head_dim,
            "dtype": dtype,
        }
        fwd = jax.jit(
            lambda q, k, v: A.attention(
                q, k, v, scale=1.0, q_scales=qs, kv_scales=ks, kv_valid=valid, implementation=impl
            )
        )
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v).astype(jnp.float32) ** 2), argnums=(0, 1, 2)))
        try:
            out = fwd(*dev)
            row["max_err"] = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))
            row["fwd_ms"] = time_ms(fwd, *dev, runs=runs)
            row["fwd_bwd_ms"] = time_ms(grad, *dev, runs=runs) if backward else None
        except Exception as e:  # a kernel that refuses this shape or backend: say so, go on
            row["skip"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        rows.append(row)
    return rows
