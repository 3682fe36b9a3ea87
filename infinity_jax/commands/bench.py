"""`infinity-jax bench attention|data|sample|train`: the benchmarks' command lines and tables (the
measuring is infinity_jax.benchmarks). --json FILE also writes the rows as JSON.

  infinity-jax bench attention                                     # the backend's defaults
  infinity-jax bench attention --heads 2 --sample-pn 0.06M --json a.json   # a CPU smoke run
  infinity-jax bench data --workers 0,4,8
  infinity-jax bench sample --config infinity_2b,dtype=bfloat16 --pn 1M --batch 1 --runs 10
  infinity-jax bench sample --config tiny --pn 0.06M --vae-config tiny        # CPU smoke run
  infinity-jax bench sample --memory --config infinity_2b,dtype=bfloat16,scan --pn 1M --batch 1
  infinity-jax bench train --config infinity:infinity_layer12,dtype=bfloat16 --pn 0.06M --batch 16
  infinity-jax bench train --config infinity:tiny --schedule 1x1,2x2,4x4,8x8 --batch 8
  XLA_FLAGS=--xla_force_host_platform_device_count=8 infinity-jax bench train --memory \\
      --config infinity:infinity_2b,dtype=bfloat16,scan,remat=full --pn 1M --batch 8 --rules fsdp

--memory (sample, train): nothing runs and nothing is allocated; the table is XLA's memory analysis of
the compiled program in GiB per device (see infinity_jax.benchmarks.sampler and .training).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax

from infinity_jax.benchmarks import attention as attention_lib
from infinity_jax.benchmarks import data as data_lib
from infinity_jax.benchmarks import hlo_cost
from infinity_jax.benchmarks import profile as profile_lib
from infinity_jax.benchmarks import sampler as sampler_lib
from infinity_jax.benchmarks import training as training_lib
from infinity_jax.benchmarks.sampler import MEMORY_FIELDS, gib
from infinity_jax.convert import infinity as convert_infinity
from infinity_jax.convert import vae as convert_vae
from infinity_jax.errors import UsageError
from infinity_jax.fileio import write_json


def _add_compile_only_args(p: argparse.ArgumentParser, inputs: str) -> None:
    """--memory and --topology of `bench sample` and `bench train`."""
    p.add_argument(
        "--memory",
        action="store_true",
        help=f"compile only, from {inputs}, and print XLA's memory analysis per device (see the description); "
        "runs and allocates nothing",
    )
    p.add_argument(
        "--topology",
        default=None,
        help="with --memory: compile for this TPU slice (e.g. v5e:2x2, v5p:2x2x2; needs libtpu: pip install "
        "'jax[tpu]') or these NVIDIA GPUs (h100, h200, h100:8 = 8 in a host, h100:2x8 = 2 hosts of 8; needs jax's "
        "CUDA plugin: pip install 'jax[cuda12]') instead of this machine's devices; no TPU or GPU needed",
    )


def _add_profile_arg(p: argparse.ArgumentParser, calls: str) -> None:
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help=f"after timing, record two more {calls} with jax.profiler into DIR (Perfetto and xprof files) "
        "and print where the device time went (infinity_jax.benchmarks.profile)",
    )


def _print_custom_calls(row: dict) -> None:
    calls = row.get("custom_calls")
    if calls is not None:
        listed = ", ".join(f"{k} x{v}" for k, v in calls.items()) or "none"
        print(f"custom calls in the compiled program (fused kernels; a loop body's count once): {listed}", flush=True)


def _print_hlo_cost(row: dict) -> None:
    if "hlo_cost" in row:
        print(f"{row['config']}: {hlo_cost.format_summary(row['hlo_cost'])}", flush=True)


def _print_matmul_dtypes(row: dict) -> None:
    by = row["matmul_flops_by_dtypes"]
    shares = by["error"] if "error" in by else ", ".join(f"{k} {100 * v:.1f}%" for k, v in by.items())
    print(f"matmul FLOPs by operand dtypes: {shares}", flush=True)


def _print_profile(row: dict) -> None:
    if "profile" in row:
        print(f"{row['config']}: {profile_lib.format_summary(row['profile'])}", flush=True)


def _default_vae(config: str) -> str:
    """The tokenizer a transformer config reads when --vae-config is not given: tiny's for tiny, else the
    released one of its bits (d32; d56 for the 8B's apply_spatial_patchify)."""
    if config.split(",")[0] == "tiny":
        return "tiny"
    m = convert_infinity.load_config(config).model
    return convert_vae.released_for(m.get("codebook_dim", 32), m.get("apply_spatial_patchify", 0)) or "d32"


def _parser(name: str, module) -> argparse.ArgumentParser:
    """A benchmark's parser: its library module's docstring is the help's description."""
    return argparse.ArgumentParser(
        prog=f"infinity-jax bench {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart, trailing blanks stripped."""
    lines = [head] + rows
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


# ---------------------------------------------------------------- attention
def format_attention_table(rows: list[dict]) -> str:
    head = ["case", "impl", "rows x queries x keys", "heads x width", "dtype", "max err", "fwd ms", "fwd+bwd ms"]
    lines = []
    for r in rows:
        cells = [
            r["case"],
            r["impl"],
            f"{r['rows']} x {r['queries']} x {r['keys']}",
            f"{r['heads']} x {r['head_dim']}",
            r["dtype"],
        ]
        if "skip" in r:
            lines.append(cells + ["skip: " + r["skip"], "", ""])
            continue
        fb = "-" if r["fwd_bwd_ms"] is None else f"{r['fwd_bwd_ms']:.2f}"
        lines.append(cells + [f"{r['max_err']:.2e}", f"{r['fwd_ms']:.2f}", fb])
    return _table(head, lines)


def attention(argv: list[str]) -> int:
    backend = jax.default_backend()
    accel = backend != "cpu"
    p = _parser("attention", attention_lib)
    p.add_argument("--impl", action="append", help="kernels to run (repeatable); default: the backend's")
    p.add_argument("--case", action="append", choices=attention_lib.CASES, help="default: all three")
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
    impls = a.impl or attention_lib.default_impls(backend, a.interpret)
    cases = attention_lib.cases(train_pn=a.train_pn, sample_pn=a.sample_pn, text_len=a.text_len, batch=a.batch)
    rows = []
    for name in a.case or list(cases):
        print(f"[bench attention] {name} ...", file=sys.stderr, flush=True)
        rows += attention_lib.run_case(
            name,
            cases[name],
            impls,
            heads=a.heads,
            head_dim=a.head_dim,
            dtype=a.dtype,
            runs=a.runs,
            backward=not a.no_backward,
        )
    print(format_attention_table(rows))
    print(f"device: {jax.devices()[0].device_kind} ({backend}); reference: dense float32", flush=True)
    if a.json:
        write_json(a.json, rows)
    return 0


# ---------------------------------------------------------------- data
def data(argv: list[str]) -> int:
    ap = _parser("data", data_lib)
    ap.add_argument("--data", default=None, help="a built dataset to read instead of synthetic JPEGs")
    ap.add_argument("--num-images", type=int, default=256, help="synthetic images to write")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=16, help="timed batches (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=256, help="fixed square output size")
    ap.add_argument("--pn", default=None, help="use the h/w templates of this pixel budget instead")
    ap.add_argument(
        "--workers", default=None, help="comma-separated worker counts to compare (default: the pipeline default)"
    )
    ap.add_argument("--threads", type=int, default=None, help="decode threads per process (default: config)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args(argv)
    try:
        workers = [int(w) for w in a.workers.split(",")] if a.workers else [data_lib.default_workers()]
    except ValueError:
        raise UsageError(f"--workers {a.workers!r}: expected comma-separated integers, e.g. 0,4,8") from None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = a.data
        if path is None:
            t = time.perf_counter()
            path = data_lib.synthetic_dataset(tmp, a.num_images)
            print(
                f"wrote and built {a.num_images} synthetic JPEGs (384-768 px sides) in {time.perf_counter() - t:.1f}s"
            )
        size = None if a.pn else a.image_size
        out = f"{a.image_size}x{a.image_size}" if size else f"templates of {a.pn}"
        print(f"output {out}, batch {a.batch_size}, {os.cpu_count()} CPU cores")
        print(f"load average {os.getloadavg()[0]:.1f} (other processes share these cores)")
        print(
            f"{'workers':>7} {'threads':>7} {'images/s':>9} {'ms/batch':>9} {'startup s':>9} {'cpu ms/img':>10}",
            flush=True,
        )
        for r in data_lib.throughput(
            path,
            workers,
            batch_size=a.batch_size,
            image_size=size,
            pn=a.pn,
            threads=a.threads,
            batches=a.batches,
            warmup=a.warmup,
        ):
            cpu = "-" if r["cpu_ms_per_image"] is None else f"{r['cpu_ms_per_image']:.2f}"
            print(
                f"{r['workers']:>7} {r['threads']:>7} {r['images_per_s']:>9.1f} {r['ms_per_batch']:>9.1f} "
                f"{r['startup_s']:>9.1f} {cpu:>10}",
                flush=True,
            )
            rows.append(r)
    if a.json:
        write_json(a.json, rows)
    return 0


# ---------------------------------------------------------------- sample
def format_sample_table(rows: list[dict]) -> str:
    head = [
        "config",
        "pn",
        "image",
        "batch",
        "compile s",
        "median s",
        "min s",
        "img/s",
        "peak mem",
        "GFLOP",
        "util",
        "device",
    ]
    lines = []
    for r in rows:
        mem = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f} MiB ({r['mem_source']})"
        util = "-" if r["utilisation"] is None else f"{100 * r['utilisation']:.1f}%"
        lines.append(
            [
                r["config"],
                r["pn"],
                r["image"],
                str(r["batch"]),
                f"{r['compile_s']:.1f}",
                f"{r['median_s']:.3f}",
                f"{r['min_s']:.3f}",
                f"{r['images_per_s']:.2f}",
                mem,
                f"{1e3 * r['tflop_per_call']:.4g}",
                util,
                f"{r['device']} x{r['num_devices']}",
            ]
        )
    return _table(head, lines)


def format_sample_memory_table(rows: list[dict]) -> str:
    head = [
        "config",
        "pn",
        "image",
        "batch",
        "args",
        "outputs",
        "temps",
        "alias",
        "code",
        "total/dev",
        "KV cache/dev",
        "temps/KV",
        "compile s",
        "devices",
    ]
    lines = []
    for r in rows:
        mesh = "" if not r["mesh"] else " (" + " x ".join(str(v) for v in r["mesh"].values()) + f", {r['rules']})"
        ratio = "-" if r["temp_over_kv_cache"] is None else f"{r['temp_over_kv_cache']:.2f}"
        lines.append(
            [
                r["config"],
                r["pn"],
                r["image"],
                str(r["batch"]),
                *(gib(r[f"{k}_bytes"]) for k in MEMORY_FIELDS),
                gib(r["total_bytes"]),
                gib(r["kv_cache_bytes_per_device"]),
                ratio,
                f"{r['compile_s']:.1f}",
                f"{r['device']} x{r['num_devices']}{mesh}",
            ]
        )
    return _table(head, lines) + (
        "\nGiB per device from XLA's memory analysis of the compiled program (nothing was "
        "run); total = args + outputs + temps - alias; KV cache: k and v, rows = 2 x batch "
        "with CFG"
    )


def sample(argv: list[str]) -> int:
    p = _parser("sample", sampler_lib)
    p.add_argument(
        "--config",
        action="append",
        help="configs/infinity.py spec (repeatable); default "
        "infinity_2b,dtype=bfloat16 on GPU/TPU (and with --memory), tiny on CPU",
    )
    p.add_argument(
        "--pn",
        action="append",
        help="pixel budget (repeatable); default 1M on GPU/TPU (and with --memory), 0.06M on CPU",
    )
    p.add_argument("--schedule", default=None, help="a custom schedule 'HxW,HxW,...' instead of --pn (smoke runs)")
    p.add_argument(
        "--vae-config",
        default=None,
        help="configs/bsq_vae.py name; default: the released tokenizer the model reads (d32; d56 for the 8B's "
        "apply_spatial_patchify; tiny for the tiny config); 'none' skips the decode",
    )
    p.add_argument("--h-div-w", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1, help="prompts per call (rounded up to the batch shards)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--text-len", type=int, default=64, help="text tokens per prompt")
    p.add_argument("--cfg", type=float, default=3.0, help="1 runs without the uncond half")
    p.add_argument("--rules", default="dp", choices=("dp", "fsdp", "fsdp_tp"), help="sharding preset over all devices")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh size (with --rules fsdp_tp)")
    _add_compile_only_args(p, "abstract inputs")
    _add_profile_arg(p, "calls")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.topology and not args.memory:
        raise UsageError(f"--topology {args.topology}: a topology can only be compiled for (--memory), not run")
    if args.profile and args.memory:
        raise UsageError("--profile records running calls; --memory runs none")
    accel = args.memory or jax.default_backend() != "cpu"
    configs = args.config or (["infinity_2b,dtype=bfloat16"] if accel else ["tiny"])
    pns = args.pn or (["1M"] if accel else ["0.06M"])
    rows = []
    for c in configs:
        vae = args.vae_config or _default_vae(c)
        for pn in [None] if args.schedule else pns:
            common = dict(
                vae_spec=None if vae == "none" else vae,
                batch=args.batch,
                h_div_w=args.h_div_w,
                text_len=args.text_len,
                cfg=args.cfg,
                schedule_spec=args.schedule,
                rules=args.rules,
                tensor=args.tensor,
            )
            if args.memory:
                r = sampler_lib.sampler_memory(c, pn or "", topology=args.topology, **common)
                print(
                    f"[bench sample] {c} {r['pn']}: compile {r['compile_s']:.1f}s, "
                    f"{gib(r['total_bytes'])} GiB per device",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                profile = args.profile and os.path.join(args.profile, f"{len(rows)}")
                r = sampler_lib.bench_one(
                    c, pn or "", runs=args.runs, warmup=args.warmup, profile_dir=profile, **common
                )
                print(
                    f"[bench sample] {c} {r['pn']}: compile {r['compile_s']:.1f}s, median {r['median_s']:.3f}s",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append(r)
    print(format_sample_memory_table(rows) if args.memory else format_sample_table(rows), flush=True)
    for r in rows:
        _print_custom_calls(r)
        _print_hlo_cost(r)
        _print_profile(r)
    if args.json:
        write_json(args.json, rows)
    return 0


# ---------------------------------------------------------------- train
def format_train_memory_table(r: dict) -> str:
    mesh = " x ".join(str(v) for v in r["mesh"].values())
    head = [
        "config",
        "image",
        "batch",
        "params",
        "mesh",
        "state",
        "args",
        "outputs",
        "temps",
        "alias",
        "code",
        "total/dev",
        "compile s",
        "devices",
    ]
    cells = [
        r["config"],
        r["image"],
        str(r["batch"]),
        f"{r['params']:,}",
        f"{mesh} ({r['rules']})",
        gib(r["state_bytes_per_device"]),
        *(gib(r[f"{k}_bytes"]) for k in MEMORY_FIELDS),
        gib(r["total_bytes"]),
        f"{r['compile_s']:.1f}",
        f"{r['num_devices']}x {r['device']}",
    ]
    return _table(head, [cells]) + (
        "\nGiB per device from XLA's memory analysis of the compiled step (nothing was "
        "run); total = args + outputs + temps - alias; state: params + optimizer state "
        "(+ EMA)"
    )


def format_train_table(r: dict) -> str:
    mfu = f"{r['mfu'] * 100:.1f}%" if "mfu" in r else "-"
    return "\n".join(
        [
            f"{'config':<28} {'image':>9} {'batch':>5} {'params':>12} {'compile s':>9} {'step s':>8} "
            f"{'img/s':>8} {'tokens/s':>10} {'TFLOP/step':>10} {'MFU':>6}  device",
            f"{r['config']:<28} {r['image']:>9} {r['batch']:>5} {r['params']:>12,} {r['compile_s']:>9.1f} "
            f"{r['step_s']:>8.3f} {r['images_per_s']:>8.1f} {r['tokens_per_s']:>10.0f} {r['tflop_per_step']:>10.3f} "
            f"{mfu:>6}  {r['num_devices']}x {r['device']} (loss {r['loss']:.3f})",
        ]
    )


def train(argv: list[str]) -> int:
    ap = _parser("train", training_lib)
    ap.add_argument("--config", default="infinity:tiny", help="config spec with a `model` section")
    ap.add_argument(
        "--pn", default=None, help="official pixel budget (square template); default: the config's schedule, else 0.06M"
    )
    ap.add_argument("--schedule", default=None, help="custom 'HxW,...' schedule instead of --pn")
    ap.add_argument("--batch", type=int, default=8, help="global batch")
    ap.add_argument("--text-len", type=int, default=64, help="text tokens per example")
    ap.add_argument("--rules", default="fsdp", choices=("dp", "fsdp", "fsdp_tp"), help="sharding preset")
    ap.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh size")
    ap.add_argument("--fsdp", type=int, default=None, help="fsdp mesh size (default: see the description)")
    ap.add_argument("--ema", type=float, default=0.0, help="EMA decay (> 0 keeps an EMA copy of the params)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    _add_compile_only_args(ap, "the abstract state")
    _add_profile_arg(ap, "steps")
    ap.add_argument("--json", default=None, help="also write the row to this file")
    a = ap.parse_args(argv)
    if a.profile and a.memory:
        raise UsageError("--profile records running steps; --memory runs none")
    row = training_lib.train_step(
        a.config,
        pn=a.pn,
        schedule_spec=a.schedule,
        batch=a.batch,
        text_len=a.text_len,
        rules=a.rules,
        tensor=a.tensor,
        fsdp=a.fsdp,
        ema=a.ema,
        steps=a.steps,
        memory=a.memory,
        topology=a.topology,
        profile_dir=a.profile,
    )
    print(format_train_memory_table(row) if a.memory else format_train_table(row), flush=True)
    _print_custom_calls(row)
    _print_hlo_cost(row)
    if "roofline_mfu" in row:
        print(
            f"MFU at the roofline estimate: {100 * row['roofline_mfu']:.1f}% ({row['tflop_per_step']:.1f} model TFLOP "
            "per step; an upper bound from the compiled program, not a measurement)",
            flush=True,
        )
    _print_matmul_dtypes(row)
    _print_profile(row)
    if a.json:
        write_json(a.json, [row])
    return 0
