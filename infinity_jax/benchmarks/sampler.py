"""The sampler's compile time, latency, images/s, memory and utilisation (`infinity-jax bench sample`).

Per config and pixel budget: random weights (the numbers do not depend on them), random text
features of text_len tokens (the text encoder is not timed), the whole program (all scales with
CFG, then the VAE decode to uint8), `runs` timed calls after `warmup`, each ending when the images
are on the host (`bench_one`).

A row's figures: compile s (trace + XLA compile, once per shape), median / min latency, images/s
(batch / median), peak memory (the device's peak_bytes_in_use where it reports one, which also counts
the params' float32 init before they are stored for sampling, else XLA's memory analysis of the
program: arguments + outputs + temporaries; that one is also the row's program_bytes), transformer
TFLOP per call
(matmuls, with the KV cache; sample.transformer_flops) and utilisation = achieved FLOP/s / the
devices' dense peak for the compute dtype, where that peak is known (else None).

`sampler_memory`: nothing runs and nothing is allocated. The same program is compiled from abstract
inputs (jax.ShapeDtypeStruct params, text and seeds, carrying their shardings under a mesh), and the
figures are XLA's memory analysis of it, in bytes per device: arguments (params, text), outputs
(bits, codes, images), temporaries (the KV cache, activations, logits), aliased bytes, generated
code, and the total = arguments + outputs + temporaries - aliased, the program's peak on one device;
then the KV cache (k and v: depth x rows x tokens x heads x head_dim x itemsize, rows = 2 x batch
with CFG, per device: split over the batch shards) and temporaries / KV cache (1 + what the program
keeps beside the cache), and the custom calls the compiled program kept (`profile.custom_calls`: its fused
kernels). It needs no accelerator: a laptop compiles for a mesh of simulated devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8), though an accelerator's compiler may lay out
its temporaries differently; `topology` compiles with that accelerator's compiler instead (a TPU slice
through libtpu, NVIDIA GPUs through jax's CUDA plugin: targets.compile_target).

Meshes (`bench_mesh`, shared with the training benchmark): one device, no mesh; more, a mesh over
all of them with the batch split over every device, and the params sharded by `rules`: 'fsdp' /
'fsdp_tp' put all devices (but `tensor`) on the fsdp axis, so the params really are split.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from flax import linen as nn

from infinity_jax import parallel, sample, schedules, targets
from infinity_jax.benchmarks import hlo_cost
from infinity_jax.benchmarks import profile as profile_lib
from infinity_jax.convert import infinity as conv_inf
from infinity_jax.convert import vae as conv_vae
from infinity_jax.model.transformer import InfinityConfig, abstract_params, init_cache, init_params
from infinity_jax.tokenizer import vae as vae_lib
from infinity_jax.train import metrics


def _peak_bytes(devices) -> int | None:
    vals = []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # CPU backends may not implement it
            stats = {}
        if "peak_bytes_in_use" in stats:
            vals.append(stats["peak_bytes_in_use"])
    return max(vals) if vals else None


def _program_bytes(sampler) -> int | None:
    try:
        exe = next(iter(sampler._executables.values()))
        m = exe.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:
        return None


# ---------------------------------------------------------------- memory analysis (sampler_memory)
MEMORY_FIELDS = ("argument", "output", "temp", "alias", "generated_code")


def bench_mesh(rules: str = "dp", *, tensor: int = 1, fsdp: int | None = None, devices=None):
    """The benchmarks' mesh over all devices, or the given ones (None for this machine's one device): the
    batch split over data x fsdp; fsdp (default: every device but `tensor` under the 'fsdp'/'fsdp_tp'
    rules, 1 under 'dp') is the axis the params are split over, so the 'fsdp' rules shard them."""
    n = jax.device_count() if devices is None else len(devices)
    if n == 1 and tensor == 1 and not fsdp and devices is None:
        return None
    if fsdp is None:
        fsdp = n // tensor if str(rules).startswith("fsdp") and n % tensor == 0 else 1
    return parallel.make_mesh(fsdp=fsdp, tensor=tensor, devices=devices)


def target(topology: str | None) -> targets.CompileTarget:
    """What a benchmark compiles for: this machine (devices and platform None: its own), or the compile-only
    devices of a TPU slice or NVIDIA GPUs (the platform is for targets.compiling_for, which picks kernels)."""
    if topology is None:
        return targets.CompileTarget(None, None, {})
    return targets.compile_target(topology)


def memory_figures(compiled) -> dict:
    """XLA's memory analysis of a compiled program, per device: {argument, output, temp, alias,
    generated_code, total}_bytes with total = argument + output + temp - alias (its peak)."""
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError("this backend gives no memory analysis of compiled programs")
    m = m[0] if isinstance(m, (list, tuple)) else m
    out = {f"{k}_bytes": int(getattr(m, f"{k}_size_in_bytes")) for k in MEMORY_FIELDS}
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def gpu_program_cost(tgt: targets.CompileTarget, compiled) -> dict:
    """{'hlo_cost': benchmarks.hlo_cost.summarize of the compiled program} for a GPU target, else {}."""
    if tgt.gpu is None:
        return {}
    peak = metrics.peak_flops_per_device(tgt.gpu.description)
    return {
        "hlo_cost": hlo_cost.summarize(compiled.as_text(), bandwidth=tgt.gpu.bandwidth_bytes_per_s, peak_flops=peak)
    }


def abstract_like(tree, shardings=None):
    """ShapeDtypeStructs of a (possibly abstract) tree, with the shardings of a matching tree (or none)."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def nbytes_per_device(tree) -> int:
    """Bytes of a tree of arrays / ShapeDtypeStructs on one device (a sharded leaf counts its shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        sh = getattr(x, "sharding", None)
        shape = sh.shard_shape(x.shape) if sh is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def gib(nbytes: float | None) -> str:
    """Bytes as GiB for the tables: 3 decimals, or 2 significant digits below a MiB (small models)."""
    if nbytes is None:
        return "-"
    g = nbytes / 2**30
    return f"{g:.3f}" if g == 0 or g >= 1e-3 else f"{g:.1e}"


def _setup(config_spec: str, pn: str, *, vae_spec: str | None, h_div_w: float, schedule_spec: str | None):
    model_cfg = InfinityConfig.from_dict(conv_inf.load_config(config_spec).model)
    schedule, _ = schedules.resolve(schedule_spec or pn, h_div_w)  # a custom 'HxW,...' or a pixel budget
    vae_cfg = None
    if vae_spec:
        vae_cfg = conv_vae.load_config(vae_spec)
        vae_cfg.dtype = model_cfg.dtype
    return model_cfg, schedule, vae_cfg


def sampler_memory(
    config_spec: str,
    pn: str = "1M",
    batch: int = 1,
    *,
    vae_spec: str | None = None,
    text_len: int = 64,
    cfg: float = 3.0,
    schedule_spec: str | None = None,
    h_div_w: float = 1.0,
    rules: str = "dp",
    tensor: int = 1,
    fsdp: int | None = None,
    compiler_options: dict | None = None,
    topology: str | None = None,
) -> dict:
    """XLA's memory analysis of the whole sampling program (see the module docstring), compiled from
    abstract inputs: nothing runs and no params are allocated. `topology`: compile for that TPU slice or
    those GPUs (targets.compile_target; needs libtpu or jax's CUDA plugin) instead of this machine's devices.

    Returns the `memory_figures` (bytes per device) plus kv_cache_bytes (k and v for all rows and
    the whole schedule, as transformer.init_cache makes it), kv_cache_bytes_per_device (split over
    the batch shards), temp_over_kv_cache (temporaries / the per-device cache), params_bytes and
    params_bytes_per_device (the transformer's, global and one device's shards; the arguments also
    hold the text inputs and the VAE decoder's params), compile_s, and the run's description
    (config, pn, image, batch, rows, mesh, ...)."""
    model_cfg, schedule, vae_cfg = _setup(
        config_spec, pn, vae_spec=vae_spec, h_div_w=h_div_w, schedule_spec=schedule_spec
    )
    tgt = target(topology)
    devices, platform = tgt.devices, tgt.platform
    if tgt.compiler_options:
        compiler_options = {**(compiler_options or {}), **tgt.compiler_options}
    mesh = bench_mesh(rules, tensor=tensor, fsdp=fsdp, devices=devices)
    # the Sampler picks its weights' dtype and the compile its kernels for the target platform
    with targets.compiling_for(platform):
        sampler = sample.Sampler(
            model_cfg,
            schedule,
            vae=vae_cfg,
            mesh=mesh,
            rules=rules,
            cfg_batch=cfg != 1.0,
            compiler_options=compiler_options,
        )
        params = abstract_like(nn.unbox(abstract_params(model_cfg)), sampler._param_shardings)
        vae_params = None
        if sampler.vae is not None:
            vae_params = abstract_like(nn.unbox(vae_lib.abstract_params(sampler.vae)), sampler._vae_shardings)
        shards = sampler.batch_multiple
        batch = -(-batch // shards) * shards

        def rows(shape, dtype):
            return jax.ShapeDtypeStruct(
                shape, dtype, sharding=None if mesh is None else parallel.batch_sharding(mesh, len(shape))
            )

        text = rows((batch, text_len, model_cfg.text_channels), np.float32)
        mask = rows((batch, text_len), np.bool_)
        seeds = rows((batch,), np.uint32)
        rep = None if mesh is None else parallel.replicated(mesh)
        sp = sample.SamplingParams(
            *(
                jax.ShapeDtypeStruct(np.shape(v), jax.dtypes.canonicalize_dtype(np.asarray(v).dtype), sharding=rep)
                for v in sample.sampling_params(len(schedule), cfg=cfg)
            )
        )
        exe, compile_s = sampler.compile(params, vae_params, text, mask, seeds, sp)
    out = memory_figures(exe)
    out["custom_calls"] = profile_lib.custom_calls(exe.as_text())
    out.update(gpu_program_cost(tgt, exe))
    n_rows = batch * (2 if sampler.cfg_batch else 1)
    cache = jax.eval_shape(lambda: init_cache(model_cfg, n_rows, schedule))
    kv = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)))
    kv_dev = kv // shards
    H, W = schedules.image_size(schedule)
    out.update(
        config=config_spec,
        pn=schedule_spec or pn,
        image=f"{W}x{H}",
        scales=len(schedule),
        tokens=schedules.num_tokens(schedule),
        batch=batch,
        rows=n_rows,
        text_len=text_len,
        dtype=model_cfg.dtype,
        vae=bool(vae_cfg),
        rules=rules,
        mesh=None if mesh is None else dict(mesh.shape),
        params_bytes=int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))),
        params_bytes_per_device=nbytes_per_device(params),
        kv_cache_bytes=kv,
        kv_cache_bytes_per_device=kv_dev,
        temp_over_kv_cache=out["temp_bytes"] / kv_dev if kv_dev else None,
        compile_s=compile_s,
        device=(devices or jax.devices())[0].device_kind,
        num_devices=len(devices or jax.devices()),
    )
    return out


def bench_one(
    config_spec: str,
    pn: str,
    *,
    vae_spec: str | None,
    batch: int,
    runs: int,
    warmup: int,
    h_div_w: float,
    text_len: int,
    cfg: float,
    schedule_spec: str | None = None,
    rules: str = "dp",
    tensor: int = 1,
    profile_dir: str | None = None,
    profile_calls: int = 2,
) -> dict:
    """Times the whole sampling program on random weights and text features (see the module docstring):
    one row, with the figures the module docstring lists. `profile_dir`: then records `profile_calls`
    more calls with the profiler there and adds their summary (benchmarks.profile) as row['profile']."""
    model_cfg, schedule, vae_cfg = _setup(
        config_spec, pn, vae_spec=vae_spec, h_div_w=h_div_w, schedule_spec=schedule_spec
    )
    mesh = bench_mesh(rules, tensor=tensor)
    sampler = sample.Sampler(model_cfg, schedule, vae=vae_cfg, mesh=mesh, rules=rules, cfg_batch=cfg != 1.0)
    key = jax.random.key(0)
    params = jax.jit(lambda k: nn.unbox(init_params(model_cfg, k)), out_shardings=sampler._param_shardings)(key)
    vae_params = None
    if sampler.vae is not None:
        vae_params = jax.jit(
            lambda k: nn.unbox(vae_lib.init_params(sampler.vae, k)), out_shardings=sampler._vae_shardings
        )(key)
    params, vae_params = sampler.place_params(params, vae_params)  # kernels in the compute dtype, once
    batch = -(-batch // sampler.batch_multiple) * sampler.batch_multiple
    rng = np.random.default_rng(0)
    text = rng.normal(size=(batch, text_len, model_cfg.text_channels)).astype(np.float32)
    mask = np.ones((batch, text_len), bool)
    sp = sample.sampling_params(len(schedule), cfg=cfg)

    def call(seed):
        out = sampler(params, vae_params, text, mask, seed, sp)
        return jax.device_get(out.images if out.images is not None else out.bits)

    t0 = time.perf_counter()
    call(0)
    first = time.perf_counter() - t0
    compile_s = sum(sampler.compile_seconds.values())
    for i in range(warmup):
        call(1 + i)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        call(100 + i)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    profile = None
    if profile_dir:
        hlo = lambda: [exe.as_text() for exe in sampler._executables.values()]  # noqa: E731
        profile = profile_lib.record(profile_dir, lambda: call(200), profile_calls, hlo)
    devices = jax.devices()
    flops = sample.transformer_flops(model_cfg, schedule, batch, text_len, cfg_batch=sampler.cfg_batch)
    peak = metrics.peak_flops_per_device(devices[0].device_kind, model_cfg.dtype)

    def utilisation(f, seconds):  # achieved FLOP/s over the devices' peak
        return f / seconds / (peak * len(devices)) if peak and seconds else None

    util = utilisation(flops, med)
    scales = [r for r in (profile or {}).get("by_scale", []) if r["scale"] != "other"]
    if len(scales) == len(schedule):  # the profile's time per scale, in schedule order
        per = sample.scale_flops(model_cfg, schedule, batch, text_len, cfg_batch=sampler.cfg_batch)
        for row, f in zip(scales, per):
            row.update(tflop=f / 1e12, utilisation=utilisation(f, row["seconds"]))
    peak_bytes, program_bytes = _peak_bytes(devices), _program_bytes(sampler)
    mem_src = "device"
    if peak_bytes is None:
        peak_bytes, mem_src = program_bytes, "xla"
    H, W = schedules.image_size(schedule)
    return {
        "config": config_spec,
        "pn": schedule_spec or pn,
        "image": f"{W}x{H}",
        "scales": len(schedule),
        "tokens": schedules.num_tokens(schedule),
        "batch": batch,
        "dtype": model_cfg.dtype,
        "vae": bool(vae_cfg),
        "compile_s": compile_s,
        "first_call_s": first,
        "median_s": med,
        "min_s": min(times),
        "images_per_s": batch / med,
        "peak_bytes": peak_bytes,
        "mem_source": mem_src,
        "program_bytes": program_bytes,
        "tflop_per_call": flops / 1e12,
        "utilisation": util,
        "device": devices[0].device_kind,
        "num_devices": len(devices),
        "runs": runs,
        **({"profile": profile} if profile else {}),
    }
