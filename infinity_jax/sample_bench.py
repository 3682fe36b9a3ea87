"""`infinity-jax bench sample`: the sampler's compile time, latency, images/s, memory and utilisation.

Per config and pixel budget: random weights (the numbers do not depend on them), random text
features of --text-len tokens (the text encoder is not timed), the whole program (all scales with
CFG, then the VAE decode to uint8), `--runs` timed calls after `--warmup`, each ending when the
images are on the host.

Columns: compile s (trace + XLA compile, once per shape), median / min latency, images/s
(batch / median), peak memory (the device's peak_bytes_in_use where it reports one, else XLA's
memory analysis of the program: arguments + outputs + temporaries), transformer TFLOP per call
(matmuls, with the KV cache; sample.transformer_flops) and utilisation = achieved FLOP/s / the
devices' dense peak for the compute dtype, where that peak is known (else '-').

usage:
  infinity-jax bench sample --config infinity_2b,dtype=bfloat16 --pn 1M --batch 1 --runs 10
  infinity-jax bench sample --config tiny --pn 0.06M --vae-config tiny        # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

# dense peak FLOP/s per device by (device_kind substring, dtype); public spec-sheet figures
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H200", "bfloat16"): 989e12, ("A100", "bfloat16"): 312e12,
    ("H100", "float32"): 67e12, ("H200", "float32"): 67e12, ("A100", "float32"): 19.5e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5 lite", "bfloat16"): 197e12, ("TPU v5e", "bfloat16"): 197e12,
    ("TPU v5p", "bfloat16"): 459e12, ("TPU v5", "bfloat16"): 459e12, ("TPU v6", "bfloat16"): 918e12,
}


def device_peak_flops(device, dtype: str) -> float | None:
    kind = getattr(device, "device_kind", "")
    for (name, dt), peak in PEAK_FLOPS.items():
        if name in kind and dt == dtype:
            return peak
    return None


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
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:
        return None


def bench_one(config_spec: str, pn: str, *, vae_spec: str | None, batch: int, runs: int, warmup: int,
              h_div_w: float, text_len: int, cfg: float, schedule_spec: str | None = None,
              rules: str = "dp") -> dict:
    import jax
    from flax import linen as nn
    from infinity_jax import parallel, sample, schedules
    from infinity_jax.convert import infinity as conv_inf, vae as conv_vae
    from infinity_jax.model.transformer import InfinityConfig, init_params
    from infinity_jax.tokenizer import vae as vae_lib

    model_cfg = InfinityConfig.from_dict(conv_inf.load_config(config_spec).model)
    schedule = schedules.parse_schedule(schedule_spec) if schedule_spec else schedules.official_schedule(h_div_w, pn)
    mesh = parallel.make_mesh() if jax.device_count() > 1 else None
    vae_cfg = None
    if vae_spec:
        vae_cfg = conv_vae.load_config(vae_spec)
        vae_cfg.dtype = model_cfg.dtype
    sampler = sample.Sampler(model_cfg, schedule, vae=vae_cfg, mesh=mesh, rules=rules,
                             cfg_batch=cfg != 1.0)
    key = jax.random.key(0)
    params = jax.jit(lambda k: nn.unbox(init_params(model_cfg, k)), out_shardings=sampler._param_shardings)(key)
    vae_params = None
    if sampler.vae is not None:
        vae_params = jax.jit(lambda k: nn.unbox(vae_lib.init_params(sampler.vae, k)),
                             out_shardings=sampler._vae_shardings)(key)
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
    devices = jax.devices()
    flops = sample.transformer_flops(model_cfg, schedule, batch, text_len, cfg_batch=sampler.cfg_batch)
    peak = device_peak_flops(devices[0], model_cfg.dtype)
    util = flops / med / (peak * len(devices)) if peak else None
    peak_bytes = _peak_bytes(devices)
    mem_src = "device"
    if peak_bytes is None:
        peak_bytes, mem_src = _program_bytes(sampler), "xla"
    H, W = schedules.image_size(schedule)
    return {"config": config_spec, "pn": schedule_spec or pn, "image": f"{W}x{H}", "scales": len(schedule),
            "tokens": schedules.num_tokens(schedule), "batch": batch, "dtype": model_cfg.dtype,
            "vae": bool(vae_cfg), "compile_s": compile_s, "first_call_s": first, "median_s": med,
            "min_s": min(times), "images_per_s": batch / med, "peak_bytes": peak_bytes, "mem_source": mem_src,
            "tflop_per_call": flops / 1e12, "utilisation": util, "device": devices[0].device_kind,
            "num_devices": len(devices), "runs": runs}


def format_table(rows: list[dict]) -> str:
    head = ["config", "pn", "image", "batch", "compile s", "median s", "min s", "img/s", "peak mem", "GFLOP",
            "util", "device"]
    lines = [head]
    for r in rows:
        mem = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f} MiB ({r['mem_source']})"
        util = "-" if r["utilisation"] is None else f"{100 * r['utilisation']:.1f}%"
        lines.append([r["config"], r["pn"], r["image"], str(r["batch"]), f"{r['compile_s']:.1f}",
                      f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['images_per_s']:.2f}", mem,
                      f"{1e3 * r['tflop_per_call']:.4g}", util, f"{r['device']} x{r['num_devices']}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines)


def main(argv: list[str] | None = None) -> int:
    import jax
    accel = jax.default_backend() != "cpu"
    p = argparse.ArgumentParser(prog="infinity-jax bench sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", help="configs/infinity.py spec (repeatable); default "
                   "infinity_2b,dtype=bfloat16 on GPU/TPU, tiny on CPU")
    p.add_argument("--pn", action="append", help="pixel budget (repeatable); default 1M on GPU/TPU, 0.06M on CPU")
    p.add_argument("--schedule", default=None, help="a custom schedule 'HxW,HxW,...' instead of --pn (smoke runs)")
    p.add_argument("--vae-config", default=None, help="configs/bsq_vae.py name; default d32 (tiny for the tiny "
                   "config); 'none' skips the decode")
    p.add_argument("--h-div-w", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1, help="prompts per call (rounded up to the batch shards)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--text-len", type=int, default=64, help="text tokens per prompt")
    p.add_argument("--cfg", type=float, default=3.0, help="1 runs without the uncond half")
    p.add_argument("--rules", default="dp", help="sharding preset over all devices")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    configs = args.config or (["infinity_2b,dtype=bfloat16"] if accel else ["tiny"])
    pns = args.pn or (["1M"] if accel else ["0.06M"])
    rows = []
    for c in configs:
        vae = args.vae_config or ("tiny" if c.split(",")[0] == "tiny" else "d32")
        for pn in ([None] if args.schedule else pns):
            r = bench_one(c, pn or "", vae_spec=None if vae == "none" else vae, batch=args.batch, runs=args.runs,
                          warmup=args.warmup, h_div_w=args.h_div_w, text_len=args.text_len, cfg=args.cfg,
                          schedule_spec=args.schedule, rules=args.rules)
            rows.append(r)
            print(f"[bench sample] {c} {r['pn']}: compile {r['compile_s']:.1f}s, median {r['median_s']:.3f}s",
                  file=sys.stderr, flush=True)
    print(format_table(rows), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
