"""`infinity-jax bench train`: training-step time, images/s, tokens/s and MFU of the Infinity step.

    infinity-jax bench train --config infinity:infinity_layer12,dtype=bfloat16 --pn 0.06M --batch 16
    infinity-jax bench train --config infinity:tiny --schedule 1x1,2x2,4x4,8x8 --batch 8

The step is the real one (train.state.make_step around train.step.make_loss_fn: self-correction,
CFG dropout, transformer forward + backward, clipping, AdamW) on random latents and text features
(the frozen VAE/T5 are not timed), sharded by --rules over all devices. MFU uses the model FLOPs of
train.step.train_flops_per_example and the device's peak bf16 FLOP/s (train.metrics), when known.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(argv: list[str]) -> int:
    from infinity_jax import config_util, parallel, schedules
    from infinity_jax.model import transformer as T
    from infinity_jax.train import metrics, optim, step as step_lib
    from infinity_jax.train.state import TrainState, make_step, state_shardings
    ap = argparse.ArgumentParser(prog="infinity-jax bench train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="infinity:tiny", help="config spec with a `model` section")
    ap.add_argument("--pn", default="0.06M", help="official pixel budget (square template)")
    ap.add_argument("--schedule", default=None, help="custom 'HxW,...' schedule instead of --pn")
    ap.add_argument("--batch", type=int, default=8, help="global batch")
    ap.add_argument("--text-len", type=int, default=64, help="text tokens per example")
    ap.add_argument("--rules", default="fsdp", help="dp | fsdp | fsdp_tp")
    ap.add_argument("--tensor", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    a = ap.parse_args(argv)

    cfg = config_util.load_config(a.config)
    mcfg = T.InfinityConfig.from_dict(cfg.model)
    sched = schedules.parse_schedule(a.schedule) if a.schedule else schedules.official_schedule(1.0, a.pn)
    mesh = parallel.make_mesh(tensor=a.tensor)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if a.batch % shards:
        ap.error(f"--batch {a.batch} must be a multiple of the {shards} batch shards of the "
                 f"{jax.device_count()}-device mesh")
    model = T.Infinity(mcfg)
    loss_fn = step_lib.make_loss_fn(model, sched)
    tx, lr = optim.make_optimizer(config_util.load_config("train_defaults").optim, 1000, a.batch)
    step = make_step(loss_fn, lr, 1, None if mcfg.dtype == "float32" else jnp.dtype(mcfg.dtype), mesh)
    key = jax.random.key(0)
    init = lambda: TrainState.create(T.init_params(mcfg, key), tx, key)  # noqa: E731
    logical = jax.eval_shape(lambda: T.init_params(mcfg, key))
    from flax import linen as nn
    shardings = state_shardings(jax.eval_shape(init), nn.get_partition_spec(logical), mesh, a.rules)
    _, h, w = sched[-1]
    rng = np.random.default_rng(0)
    batch = {"latent": rng.standard_normal((a.batch, h, w, mcfg.codebook_dim)).astype(np.float32),
             "text_features": rng.standard_normal((a.batch, a.text_len, mcfg.text_channels)).astype(np.float32),
             "text_mask": np.ones((a.batch, a.text_len), bool)}
    batch = {k: jax.device_put(v, parallel.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    rules = parallel.logical_rules(a.rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(init, out_shardings=shardings)()
        t0 = time.perf_counter()
        fn = jax.jit(lambda s, b: step(s, b, jax.random.key(1)), in_shardings=(shardings, None),
                     out_shardings=(shardings, None), donate_argnums=0).lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    state, m = fn(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        state, m = fn(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    n = T.count_params(mcfg)
    flops = step_lib.train_flops_per_example(n, sched, depth=mcfg.depth, embed_dim=mcfg.embed_dim,
                                             text_len=a.text_len) * a.batch
    t = metrics.throughput(dt, a.batch, schedules.num_tokens(sched), flops, jax.device_count(),
                           metrics.peak_flops_per_device())
    H, W = schedules.image_size(sched)
    print(f"{'config':<28} {'image':>9} {'batch':>5} {'params':>12} {'compile s':>9} {'step s':>8} "
          f"{'img/s':>8} {'tokens/s':>10} {'TFLOP/step':>10} {'MFU':>6}  device")
    mfu = f"{t['mfu'] * 100:.1f}%" if "mfu" in t else "-"
    print(f"{a.config:<28} {f'{H}x{W}':>9} {a.batch:>5} {n:>12,} {compile_s:>9.1f} {dt:>8.3f} "
          f"{t['images_per_s']:>8.1f} {t['tokens_per_s']:>10.0f} {flops / 1e12:>10.3f} {mfu:>6}  "
          f"{jax.device_count()}x {jax.devices()[0].device_kind} (loss {float(m['loss']):.3f})")
    return 0
