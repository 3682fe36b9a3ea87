"""`infinity-jax bench attention`: every attention kernel this backend can run, on the model's three
ways of attending, against the float32 dense reference: max error, forward ms, forward+backward ms.

Cases (model/attention.py), at the 2B model's head width (128) by default:
  train      block-causal self-attention over a schedule's scales (--train-pn, default 0.06M)
  sample     the cached sampler's last scale: its queries against the whole prefix (--sample-pn)
  text       cross-attention from the last scale to padded text (--text-len tokens, a quarter padding)

On GPU the kernels are xla (dense), chunked and cudnn; on TPU xla, chunked and splash; on CPU xla
and chunked (plus splash in interpret mode with --interpret, slow). The error column is the max
|out - reference| over the outputs (bf16 outputs carry ~1e-2 of rounding); 'skip' says why a kernel
did not run (e.g. it refused the shape).

usage:
  infinity-jax bench attention                                     # the backend's defaults
  infinity-jax bench attention --heads 2 --sample-pn 0.06M --json a.json   # a CPU smoke run
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from infinity_jax.bench import write_json


def _cases(args):
    from infinity_jax import schedules
    from infinity_jax.model.transformer import scale_ids
    train = schedules.official_schedule(1.0, args.train_pn)
    samp = schedules.official_schedule(1.0, args.sample_pn)
    ids = scale_ids(train)
    n, last = schedules.num_tokens(samp), schedules.scale_lengths(samp)[-1]
    return {"train": dict(l=len(ids), m=len(ids), q_scales=ids, kv_scales=ids, pad=False, rows=args.batch),
            "sample": dict(l=last, m=n, q_scales=None, kv_scales=None, pad=False, rows=2 * args.batch),
            "text": dict(l=last, m=args.text_len, q_scales=None, kv_scales=None, pad=True, rows=2 * args.batch)}


def _time(fn, *a, runs: int) -> float:
    import jax
    jax.block_until_ready(fn(*a))
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def run_case(name: str, case: dict, impls: list[str], *, heads: int, head_dim: int, dtype: str, runs: int,
             backward: bool = True) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from infinity_jax.model import attention as A
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
        *(jnp.asarray(x, jnp.float32) for x in (q, k, v)))
    rows = []
    for impl in impls:
        row = {"case": name, "impl": impl, "rows": b, "queries": l, "keys": m, "heads": heads, "head_dim": head_dim,
               "dtype": dtype}
        fwd = jax.jit(lambda q, k, v: A.attention(q, k, v, scale=1.0, q_scales=qs, kv_scales=ks, kv_valid=valid,
                                                  implementation=impl))
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v).astype(jnp.float32) ** 2), argnums=(0, 1, 2)))
        try:
            out = fwd(*dev)
            row["max_err"] = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))
            row["fwd_ms"] = _time(fwd, *dev, runs=runs)
            row["fwd_bwd_ms"] = _time(grad, *dev, runs=runs) if backward else None
        except Exception as e:  # a kernel that refuses this shape or backend: say so, go on
            row["skip"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["case", "impl", "rows x queries x keys", "heads x width", "dtype", "max err", "fwd ms", "fwd+bwd ms"]
    lines = [head]
    for r in rows:
        shape = f"{r['rows']} x {r['queries']} x {r['keys']}"
        if "skip" in r:
            lines.append([r["case"], r["impl"], shape, f"{r['heads']} x {r['head_dim']}", r["dtype"], "skip: " +
                          r["skip"], "", ""])
            continue
        fb = "-" if r["fwd_bwd_ms"] is None else f"{r['fwd_bwd_ms']:.2f}"
        lines.append([r["case"], r["impl"], shape, f"{r['heads']} x {r['head_dim']}", r["dtype"],
                      f"{r['max_err']:.2e}", f"{r['fwd_ms']:.2f}", fb])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


def main(argv: list[str] | None = None) -> int:
    import jax
    backend = jax.default_backend()
    accel = backend != "cpu"
    p = argparse.ArgumentParser(prog="infinity-jax bench attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", action="append", help="kernels to run (repeatable); default: the backend's")
    p.add_argument("--case", action="append", choices=("train", "sample", "text"), help="default: all three")
    p.add_argument("--heads", type=int, default=16 if accel else 2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16" if accel else "float32")
    p.add_argument("--batch", type=int, default=1, help="prompts (the sampler cases run 2 rows each: CFG)")
    p.add_argument("--train-pn", default="0.06M")
    p.add_argument("--sample-pn", default="1M" if accel else "0.06M")
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-backward", action="store_true", help="time the forward only")
    p.add_argument("--interpret", action="store_true", help="on CPU, also run splash in Pallas interpret mode")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    a = p.parse_args(argv)
    impls = a.impl or {"gpu": ["xla", "chunked", "cudnn"], "tpu": ["xla", "chunked", "splash"]}.get(
        backend, ["xla", "chunked"] + (["splash"] if a.interpret else []))
    cases = _cases(a)
    rows = []
    for name in a.case or list(cases):
        print(f"[bench attention] {name} ...", file=sys.stderr, flush=True)
        rows += run_case(name, cases[name], impls, heads=a.heads, head_dim=a.head_dim, dtype=a.dtype, runs=a.runs,
                         backward=not a.no_backward)
    print(format_table(rows))
    print(f"device: {jax.devices()[0].device_kind} ({backend}); reference: dense float32", flush=True)
    if a.json:
        write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
