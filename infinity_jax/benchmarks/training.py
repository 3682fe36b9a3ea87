"""Training-step time, images/s, tokens/s and MFU of the Infinity step (`infinity-jax bench train`).

The step is the real one (train.state.make_step around train.step.make_loss_fn: self-correction,
CFG dropout, transformer forward + backward, clipping, AdamW) on random latents and text features
(the frozen VAE/T5 are not timed), sharded by `rules` over all devices. MFU uses the model FLOPs of
train.step.train_flops_per_example and the device's peak bf16 FLOP/s (train.metrics), when known.

The mesh holds every device: `tensor` on the tensor axis, `fsdp` (default: all the rest under the
'fsdp' and 'fsdp_tp' rules, 1 under 'dp') on the fsdp axis the params and optimizer state are split
over, the rest on data; the batch is split over data x fsdp.

memory=True: nothing runs and nothing is allocated. The same step (state donated, as the training
loop does) is compiled from the abstract state (jax.eval_shape of its init, with its shardings) and
abstract batch, and the row holds XLA's memory analysis of it, in bytes per device: arguments (state
and batch), outputs (the new state, metrics), temporaries (activations kept for the backward pass,
gradients, ...), aliased bytes (the donated state written in place), generated code, and the total =
arguments + outputs + temporaries - aliased, the step's peak on one device; plus the state's own
bytes per device (fp32 params + AdamW moments [+ EMA], split by the rules), the model TFLOP of the step
and, for a GPU target, roofline_mfu: the MFU the step would reach at its roofline estimate
(benchmarks.hlo_cost), a bound on what the device can measure. A laptop gives the
per-device figure of a pod by simulating its devices (XLA_FLAGS=--xla_force_host_platform_device_count=8);
an accelerator's compiler may lay out its temporaries differently: measure there when you can.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from infinity_jax import config_util, parallel, schedules, targets
from infinity_jax.benchmarks import profile as profile_lib
from infinity_jax.benchmarks.sampler import (
    abstract_like,
    bench_mesh,
    gpu_program_cost,
    memory_figures,
    nbytes_per_device,
    target,
)
from infinity_jax.convert import vae as conv_vae
from infinity_jax.errors import UsageError
from infinity_jax.model import flops as flops_lib
from infinity_jax.model import transformer as T
from infinity_jax.runs import schedule_from_config
from infinity_jax.train import metrics, optim
from infinity_jax.train import step as step_lib
from infinity_jax.train.state import TrainState, make_step, state_shardings


def schedule_and_stride(cfg, schedule_spec: str | None, pn: str | None):
    """The benchmarked schedule (schedule_spec, else pn, else the config's own `schedule`, else 0.06M)
    and the pixel stride of the config's VAE (16, the official one, when it names none), so the image
    column says what the model really sees; and the schedule's label for the table."""
    if schedule_spec:
        sched, label = schedules.resolve(schedule_spec)[0], schedule_spec
    elif pn or "schedule" not in cfg:
        sched, label = schedules.resolve(pn or "0.06M")[0], pn or "0.06M"
    else:
        sched, label = schedule_from_config(cfg), str(cfg.schedule)
    stride = schedules.VAE_STRIDE
    vae_spec = str(cfg.get("vae", {}).get("config", "") or "")
    if vae_spec and not vae_spec.endswith(".json"):
        stride = int(conv_vae.load_config(vae_spec).get("patch_size", stride))
    return sched, stride, label


def _matmul_dtypes(traced) -> dict:
    """flops_by_operand_dtypes of the traced step, or {'error': why}: an analysis beside the measurement,
    which must never cost the timing (an accelerator's lease)."""
    try:
        return flops_lib.flops_by_operand_dtypes(traced.jaxpr.jaxpr)
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def train_step(
    config_spec: str = "infinity:tiny",
    *,
    pn: str | None = None,
    schedule_spec: str | None = None,
    batch: int = 8,
    text_len: int = 64,
    rules: str = "fsdp",
    tensor: int = 1,
    fsdp: int | None = None,
    ema: float = 0.0,
    steps: int = 5,
    memory: bool = False,
    topology: str | None = None,
    profile_dir: str | None = None,
    profile_calls: int = 2,
) -> dict:
    """One row: the run's description (config, pn, image, batch, tokens, params, dtype, remat, scan,
    rules, mesh, ema, device, num_devices), matmul_flops_by_dtypes (model.flops.flops_by_operand_dtypes of
    the traced step: float32 operands in a bf16 step are float32 GEMMs), plus either the timing (compile_s,
    step_s = the median of `steps` steps after one warm-up, min_step_s, tflop_per_step, loss, images_per_s,
    tokens_per_s and mfu where the device's peak is known) or, with `memory`, XLA's memory analysis (`memory_figures`:
    bytes per device), custom_calls (the compiled step's fused kernels), compile_s, state_bytes_per_device and
    batch_bytes_per_device. `topology` (with `memory`): compile for that TPU slice or those GPUs
    (targets.compile_target; needs libtpu or jax's CUDA plugin) instead of this machine's devices.
    `profile_dir`: then records `profile_calls` more steps with the profiler there and adds their summary
    (benchmarks.profile) as row['profile']. A mesh that the devices or a batch that the batch shards do not
    divide raises UsageError."""
    if topology and not memory:
        raise UsageError(f"topology {topology!r}: a topology can only be compiled for (--memory), not run")
    tgt = target(topology)
    devices, platform = tgt.devices, tgt.platform
    cfg = config_util.load_config(config_spec)
    mcfg = T.InfinityConfig.from_dict(cfg.model)
    sched, stride, label = schedule_and_stride(cfg, schedule_spec, pn)
    n_dev = jax.device_count() if devices is None else len(devices)
    if n_dev % tensor or (fsdp and n_dev % (fsdp * tensor)):
        raise UsageError(f"tensor {tensor} x fsdp {fsdp or 1}: the mesh does not divide the {n_dev} devices")
    mesh = bench_mesh(rules, tensor=tensor, fsdp=fsdp, devices=devices) or parallel.make_mesh()
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % shards:
        raise UsageError(f"batch {batch}: expected a multiple of the {shards} batch shards of the {n_dev}-device mesh")
    model = T.Infinity(mcfg)
    loss_fn = step_lib.make_loss_fn(model, sched)
    tx, lr = optim.make_optimizer(config_util.load_config("train_defaults").optim, 1000, batch)
    step = make_step(loss_fn, lr, 1, None if mcfg.dtype == "float32" else jnp.dtype(mcfg.dtype), mesh)
    key = jax.random.key(0)
    init = lambda: TrainState.create(T.init_params(mcfg, key), tx, key, ema)  # noqa: E731
    logical = jax.eval_shape(lambda: T.init_params(mcfg, key))
    abstract_state = jax.eval_shape(init)
    shardings = state_shardings(abstract_state, nn.get_partition_spec(logical), mesh, rules)
    _, h, w = sched[-1]
    f = 2 if mcfg.apply_spatial_patchify else 1  # the tokenizer's grid is twice the last scale's under patchify
    shapes = {
        "latent": ((batch, f * h, f * w, mcfg.vae_codebook_dim), np.float32),
        "text_features": ((batch, text_len, mcfg.text_channels), np.float32),
        "text_mask": ((batch, text_len), np.bool_),
    }
    axis_rules = parallel.logical_rules(rules)
    jitted = jax.jit(
        lambda s, b: step(s, b, jax.random.key(1)),
        in_shardings=(shardings, None),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    n = T.count_params(mcfg)
    model_flops = step_lib.train_flops_per_example(mcfg, sched, text_len=text_len) * batch  # MFU's numerator
    H, W = schedules.image_size(sched, stride)
    row = {
        "config": config_spec,
        "pn": label,
        "image": f"{H}x{W}",
        "batch": batch,
        "tokens": schedules.num_tokens(sched),
        "params": n,
        "dtype": mcfg.dtype,
        "remat": mcfg.remat,
        "scan": mcfg.scan_layers,
        "rules": rules,
        "mesh": dict(mesh.shape),
        "ema": ema,
        "device": (devices or jax.devices())[0].device_kind,
        "num_devices": n_dev,
    }

    if memory:
        state_in = abstract_like(abstract_state, shardings)
        batch_in = {
            k: jax.ShapeDtypeStruct(s, dt, sharding=parallel.batch_sharding(mesh, len(s)))
            for k, (s, dt) in shapes.items()
        }
        with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules), targets.compiling_for(platform):
            t0 = time.perf_counter()
            traced = jitted.trace(state_in, batch_in)
            compiled = traced.lower().compile(tgt.compiler_options or None)
            compile_s = time.perf_counter() - t0
        row.update(
            memory_figures(compiled),
            custom_calls=profile_lib.custom_calls(compiled.as_text()),
            **gpu_program_cost(tgt, compiled),
            matmul_flops_by_dtypes=_matmul_dtypes(traced),
            compile_s=compile_s,
            state_bytes_per_device=nbytes_per_device(state_in),
            batch_bytes_per_device=nbytes_per_device(batch_in),
            tflop_per_step=model_flops / 1e12,
        )
        if "hlo_cost" in row:  # the MFU a step at its roofline estimate would reach (an upper bound, not a time)
            cost = row["hlo_cost"]
            row["roofline_mfu"] = model_flops / (cost["estimate_s"] * cost["peak_flops"] * n_dev)
        return row

    rng = np.random.default_rng(0)
    data = {
        "latent": rng.standard_normal(shapes["latent"][0]).astype(np.float32),
        "text_features": rng.standard_normal(shapes["text_features"][0]).astype(np.float32),
        "text_mask": np.ones(shapes["text_mask"][0], bool),
    }
    data = {k: jax.device_put(v, parallel.batch_sharding(mesh, v.ndim)) for k, v in data.items()}
    with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
        state = jax.jit(init, out_shardings=shardings)()
        t0 = time.perf_counter()
        traced = jitted.trace(state, data)
        fn = traced.lower().compile()
        compile_s = time.perf_counter() - t0
    row["matmul_flops_by_dtypes"] = _matmul_dtypes(traced)
    state, m = fn(state, data)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = fn(state, data)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    if profile_dir:

        def run():
            nonlocal state
            state, m = fn(state, data)
            jax.block_until_ready(m)

        row["profile"] = profile_lib.record(profile_dir, run, profile_calls, lambda: [fn.as_text()])
    t = metrics.throughput(dt, batch, schedules.num_tokens(sched), model_flops, n_dev, metrics.peak_flops_per_device())
    row.update(
        compile_s=compile_s,
        step_s=dt,
        min_step_s=min(times),
        tflop_per_step=model_flops / 1e12,
        loss=float(m["loss"]),
        **{k: t[k] for k in ("images_per_s", "tokens_per_s", "mfu") if k in t},
    )
    return row
