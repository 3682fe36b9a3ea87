"""`infinity-jax bench train`: training-step time, images/s, tokens/s and MFU of the Infinity step.

    infinity-jax bench train --config infinity:infinity_layer12,dtype=bfloat16 --pn 0.06M --batch 16
    infinity-jax bench train --config infinity:tiny --schedule 1x1,2x2,4x4,8x8 --batch 8

The step is the real one (train.state.make_step around train.step.make_loss_fn: self-correction,
CFG dropout, transformer forward + backward, clipping, AdamW) on random latents and text features
(the frozen VAE/T5 are not timed), sharded by --rules over all devices. MFU uses the model FLOPs of
train.step.train_flops_per_example and the device's peak bf16 FLOP/s (train.metrics), when known.

The mesh holds every device: --tensor on the tensor axis, --fsdp (default: all the rest under the
'fsdp' and 'fsdp_tp' rules, 1 under 'dp') on the fsdp axis the params and optimizer state are split
over, the rest on data; the batch is split over data x fsdp.

--memory: nothing runs and nothing is allocated. The same step (state donated, as the training loop
does) is compiled from the abstract state (jax.eval_shape of its init, with its shardings) and
abstract batch, and the table is XLA's memory analysis of it, in GiB per device: arguments (state
and batch), outputs (the new state, metrics), temporaries (activations kept for the backward pass,
gradients, ...), aliased bytes (the donated state written in place), generated code, and the total =
arguments + outputs + temporaries - aliased, the step's peak on one device; plus the state's own
bytes per device (fp32 params + AdamW moments [+ EMA], split by the rules). A laptop gives the
per-device figure of a pod by simulating its devices, e.g.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 infinity-jax bench train --memory \\
        --config infinity:infinity_2b,dtype=bfloat16,scan,remat=full --pn 1M --batch 8 --rules fsdp

(an accelerator's compiler may lay out its temporaries differently: measure there when you can).
--json FILE writes the row (either mode) as JSON.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.bench import write_json


def _schedule_and_stride(cfg, schedule_spec: str | None, pn: str | None):
    """The benchmarked schedule (--schedule, else --pn, else the config's own `schedule`, else 0.06M)
    and the pixel stride of the config's VAE (16, the official one, when it names none), so the image
    column says what the model really sees; and the schedule's label for the table."""
    from infinity_jax import schedules
    from infinity_jax.train.cli import schedule_from_config
    if schedule_spec:
        sched, label = schedules.parse_schedule(schedule_spec), schedule_spec
    elif pn or "schedule" not in cfg:
        sched, label = schedules.official_schedule(1.0, pn or "0.06M"), pn or "0.06M"
    else:
        sched, label = schedule_from_config(cfg), str(cfg.schedule)
    stride = schedules.VAE_STRIDE
    vae_spec = str(cfg.get("vae", {}).get("config", "") or "")
    if vae_spec and not vae_spec.endswith(".json"):
        from infinity_jax.convert import vae as conv_vae
        stride = int(conv_vae.load_config(vae_spec).get("patch_size", stride))
    return sched, stride, label


def main(argv: list[str]) -> int:
    from flax import linen as nn
    from infinity_jax import config_util, parallel, schedules
    from infinity_jax.model import transformer as T
    from infinity_jax.sample_bench import (MEMORY_FIELDS, abstract_like, bench_mesh, gib, memory_figures,
                                           nbytes_per_device)
    from infinity_jax.train import metrics, optim, step as step_lib
    from infinity_jax.train.state import TrainState, make_step, state_shardings
    ap = argparse.ArgumentParser(prog="infinity-jax bench train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="infinity:tiny", help="config spec with a `model` section")
    ap.add_argument("--pn", default=None, help="official pixel budget (square template); default: the config's "
                    "schedule, else 0.06M")
    ap.add_argument("--schedule", default=None, help="custom 'HxW,...' schedule instead of --pn")
    ap.add_argument("--batch", type=int, default=8, help="global batch")
    ap.add_argument("--text-len", type=int, default=64, help="text tokens per example")
    ap.add_argument("--rules", default="fsdp", choices=("dp", "fsdp", "fsdp_tp"), help="sharding preset")
    ap.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh size")
    ap.add_argument("--fsdp", type=int, default=None, help="fsdp mesh size (default: see the module docstring)")
    ap.add_argument("--ema", type=float, default=0.0, help="EMA decay (> 0 keeps an EMA copy of the params)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--memory", action="store_true", help="compile only, from the abstract state, and print XLA's "
                    "memory analysis per device (see the module docstring); runs and allocates nothing")
    ap.add_argument("--json", default=None, help="also write the row to this file")
    a = ap.parse_args(argv)

    cfg = config_util.load_config(a.config)
    mcfg = T.InfinityConfig.from_dict(cfg.model)
    sched, stride, label = _schedule_and_stride(cfg, a.schedule, a.pn)
    n_dev = jax.device_count()
    if n_dev % a.tensor or (a.fsdp and n_dev % (a.fsdp * a.tensor)):
        ap.error(f"--tensor {a.tensor} x --fsdp {a.fsdp or 1} does not divide the {n_dev} devices")
    mesh = bench_mesh(a.rules, tensor=a.tensor, fsdp=a.fsdp) or parallel.make_mesh()
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if a.batch % shards:
        ap.error(f"--batch {a.batch} must be a multiple of the {shards} batch shards of the "
                 f"{n_dev}-device mesh")
    model = T.Infinity(mcfg)
    loss_fn = step_lib.make_loss_fn(model, sched)
    tx, lr = optim.make_optimizer(config_util.load_config("train_defaults").optim, 1000, a.batch)
    step = make_step(loss_fn, lr, 1, None if mcfg.dtype == "float32" else jnp.dtype(mcfg.dtype), mesh)
    key = jax.random.key(0)
    init = lambda: TrainState.create(T.init_params(mcfg, key), tx, key, a.ema)  # noqa: E731
    logical = jax.eval_shape(lambda: T.init_params(mcfg, key))
    abstract_state = jax.eval_shape(init)
    shardings = state_shardings(abstract_state, nn.get_partition_spec(logical), mesh, a.rules)
    _, h, w = sched[-1]
    shapes = {"latent": ((a.batch, h, w, mcfg.codebook_dim), np.float32),
              "text_features": ((a.batch, a.text_len, mcfg.text_channels), np.float32),
              "text_mask": ((a.batch, a.text_len), np.bool_)}
    rules = parallel.logical_rules(a.rules)
    jitted = jax.jit(lambda s, b: step(s, b, jax.random.key(1)), in_shardings=(shardings, None),
                     out_shardings=(shardings, None), donate_argnums=0)
    n = T.count_params(mcfg)
    H, W = schedules.image_size(sched, stride)
    mesh_s = " x ".join(str(v) for v in mesh.shape.values())
    row = {"config": a.config, "pn": label, "image": f"{H}x{W}", "batch": a.batch,
           "tokens": schedules.num_tokens(sched), "params": n, "dtype": mcfg.dtype, "remat": mcfg.remat,
           "scan": mcfg.scan_layers, "rules": a.rules, "mesh": dict(mesh.shape), "ema": a.ema,
           "device": jax.devices()[0].device_kind, "num_devices": n_dev}

    if a.memory:
        state_in = abstract_like(abstract_state, shardings)
        batch_in = {k: jax.ShapeDtypeStruct(s, dt, sharding=parallel.batch_sharding(mesh, len(s)))
                    for k, (s, dt) in shapes.items()}
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            t0 = time.perf_counter()
            compiled = jitted.lower(state_in, batch_in).compile()
            compile_s = time.perf_counter() - t0
        row.update(memory_figures(compiled), compile_s=compile_s, state_bytes_per_device=nbytes_per_device(state_in),
                   batch_bytes_per_device=nbytes_per_device(batch_in))
        head = ["config", "image", "batch", "params", "mesh", "state", "args", "outputs", "temps", "alias", "code",
                "total/dev", "compile s", "devices"]
        cells = [a.config, f"{H}x{W}", str(a.batch), f"{n:,}", f"{mesh_s} ({a.rules})",
                 gib(row["state_bytes_per_device"]), *(gib(row[f"{k}_bytes"]) for k in MEMORY_FIELDS),
                 gib(row["total_bytes"]), f"{compile_s:.1f}", f"{n_dev}x {row['device']}"]
        widths = [max(len(x), len(y)) for x, y in zip(head, cells)]
        print("  ".join(x.ljust(wd) for x, wd in zip(head, widths)))
        print("  ".join(x.ljust(wd) for x, wd in zip(cells, widths)))
        print("GiB per device from XLA's memory analysis of the compiled step (nothing was run); "
              "total = args + outputs + temps - alias; state: params + optimizer state (+ EMA)")
    else:
        rng = np.random.default_rng(0)
        batch = {"latent": rng.standard_normal(shapes["latent"][0]).astype(np.float32),
                 "text_features": rng.standard_normal(shapes["text_features"][0]).astype(np.float32),
                 "text_mask": np.ones(shapes["text_mask"][0], bool)}
        batch = {k: jax.device_put(v, parallel.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            state = jax.jit(init, out_shardings=shardings)()
            t0 = time.perf_counter()
            fn = jitted.lower(state, batch).compile()
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
        flops = step_lib.train_flops_per_example(n, sched, depth=mcfg.depth, embed_dim=mcfg.embed_dim,
                                                 text_len=a.text_len) * a.batch
        t = metrics.throughput(dt, a.batch, schedules.num_tokens(sched), flops, n_dev,
                               metrics.peak_flops_per_device())
        print(f"{'config':<28} {'image':>9} {'batch':>5} {'params':>12} {'compile s':>9} {'step s':>8} "
              f"{'img/s':>8} {'tokens/s':>10} {'TFLOP/step':>10} {'MFU':>6}  device")
        mfu = f"{t['mfu'] * 100:.1f}%" if "mfu" in t else "-"
        print(f"{a.config:<28} {f'{H}x{W}':>9} {a.batch:>5} {n:>12,} {compile_s:>9.1f} {dt:>8.3f} "
              f"{t['images_per_s']:>8.1f} {t['tokens_per_s']:>10.0f} {flops / 1e12:>10.3f} {mfu:>6}  "
              f"{n_dev}x {jax.devices()[0].device_kind} (loss {float(m['loss']):.3f})")
        row.update(compile_s=compile_s, step_s=dt, min_step_s=min(times), tflop_per_step=flops / 1e12,
                   loss=float(m["loss"]), **{k: t[k] for k in ("images_per_s", "tokens_per_s", "mfu") if k in t})
    if a.json:
        write_json(a.json, [row])
    return 0
