"""Compiling for NVIDIA GPUs without one (infinity_jax/targets.py): XLA's GPU compiler from jax's CUDA plugin,
for a device description of ours, with cuDNN building the fused attention kernels. The compiles run in a
subprocess with the plugin on its path (launch/install_gpu_compiler.sh puts it in .gpu-compiler/, which CI
does), so that the jax of the rest of the suite stays a CPU jax."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from infinity_jax import commands, targets
from infinity_jax.benchmarks import hlo_cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILER_DIR = os.environ.get("INFINITY_JAX_GPU_COMPILER", os.path.join(REPO, ".gpu-compiler"))


def test_gpu_target_names():
    h100, h200 = targets.GPU_MODELS["h100"], targets.GPU_MODELS["h200"]
    assert targets.parse_gpu_target("h100") == (h100, 1, 1)
    assert targets.parse_gpu_target("H200:8") == (h200, 1, 8)
    assert targets.parse_gpu_target("h100:2x8") == (h100, 2, 8)
    assert targets.parse_gpu_target("v5e:2x2") is None and targets.parse_gpu_target("a100") is None
    with pytest.raises(commands.UsageError, match="GPU target 'h100:0': expected MODEL"):
        targets.parse_gpu_target("h100:0")


def test_the_target_config_describes_the_device():
    text = targets.GPU_MODELS["h200"].target_config((9, 8, 0))
    assert "device_memory_size: 141000000000\n" in text and "core_count: 132\n" in text
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text
    assert "dnn_version_info { major: 9 minor: 8 patch: 0 }" in text and 'platform_name: "CUDA"' in text
    assert text.count("{") == text.count("}") == 3


def test_a_gpu_target_without_the_cuda_plugin_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(targets, "_cudnn_version", lambda: (_ for _ in ()).throw(RuntimeError("no plugin")))
    assert commands.main(["bench", "sample", "--memory", "--topology", "h100", "--config", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "GPU target 'h100': no plugin; compiling for NVIDIA GPUs needs jax's CUDA plugin" in err
    assert len(err.strip().splitlines()) == 1


def _gpu_compiler_env() -> dict:
    """The environment of a process that compiles for GPUs: the plugin importable, jax's backend the CPU."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if importlib.util.find_spec("jax_plugins") is None or importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        if not os.path.isdir(COMPILER_DIR):
            pytest.skip("no GPU compiler: bash launch/install_gpu_compiler.sh (or pip install 'jax[cuda12]')")
        env["PYTHONPATH"] = os.pathsep.join([COMPILER_DIR, REPO, env.get("PYTHONPATH", "")])
    return env


def _bench_memory(what: str, args: list[str], tmp_path, dump=None) -> dict:
    """`bench WHAT --memory ARGS`'s JSON row; with `dump` (a folder), XLA's optimized HLO written there too."""
    out = tmp_path / f"{what}.json"
    argv = [sys.executable, "-m", "infinity_jax", "bench", what, "--memory", *args, "--json", str(out)]
    env = _gpu_compiler_env()
    if dump is not None:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text".strip()
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    return row


@pytest.mark.slow  # ~18 s: keeps the suite inside its 10 minutes; CI runs it with -m slow
def test_the_training_step_compiles_for_8_h100s_under_fsdp_with_cudnn_attention(tmp_path):
    """The bf16 training step of layer12 at 256² (block-causal self-attention, cross-attention to padded
    text) compiles for 8 H100s under FSDP with cuDNN flash attention forward and backward. It holds two
    fixes: the scales past the dense first ones have odd lengths (144 queries against 265 keys), which jax's
    cuDNN wrapper refuses when differentiated; and jax's partitioning of the cuDNN call refuses q, k and v
    sharded differently, as XLA shards them here, so the calls run per shard."""
    row = _bench_memory(
        "train",
        ["--topology", "h100:8", "--config", "infinity:infinity_layer12,dtype=bfloat16,scan,remat=full"]
        + ["--pn", "0.06M", "--batch", "8", "--rules", "fsdp"],
        tmp_path,
    )
    assert row["device"] == "NVIDIA H100 80GB HBM3" and row["num_devices"] == 8 and row["mesh"]["fsdp"] == 8
    calls = row["custom_calls"]
    assert calls.get("__cudnn$fmhaSoftmax", 0) >= 1 and calls.get("__cudnn$fmhaSoftmaxBackward", 0) >= 1, calls
    assert 0 < row["total_bytes"] < 2**30


@pytest.mark.slow  # ~24 s (two compiles): keeps the suite inside its 10 minutes; CI runs it with -m slow
def test_the_training_steps_gpu_program_has_no_loop_copies_unscanned_and_its_roofline_mfu(tmp_path):
    """The bf16 step compiled for an H200, blocks scanned and unscanned: only the scanned program copies each
    layer's weights and saved activations out of and into stacked buffers (hlo_cost's 'slice' and 'update'
    kernels, the loop's cost that makes the unscanned step the GPU recipe: docs/performance.md); each row has
    the model TFLOP of the step and the MFU its roofline estimate implies. Unscanned, each block's GELU runs
    in fc1's cuBLAS epilogue, which also writes fc1's output for the backward (no GELU kernel of its own)."""
    args = ["--topology", "h200", "--schedule", "1x1,2x2,4x4,8x8", "--batch", "4", "--rules", "dp"]  # 8 x 43 rows
    dump = tmp_path / "hlo"
    rows = {
        scan: _bench_memory(
            "train", ["--config", f"infinity:tiny,dtype=bfloat16{scan}", *args], tmp_path, dump if not scan else None
        )
        for scan in ("", ",scan")
    }
    (step,) = dump.glob("*gpu_after_optimizations.txt")
    assert step.read_text().count('"epilogue":"BIAS_GELU_AUX"') == 2  # tiny's depth
    kinds = {scan: set(row["hlo_cost"]["by_kind"]) for scan, row in rows.items()}
    assert {"slice", "update"} <= kinds[",scan"] and not {"slice", "update"} & kinds[""], kinds
    for row in rows.values():
        cost = row["hlo_cost"]
        assert row["tflop_per_step"] > 0 and cost["peak_flops"] == 989e12
        want = row["tflop_per_step"] * 1e12 / (cost["estimate_s"] * cost["peak_flops"])
        assert row["roofline_mfu"] == pytest.approx(want, rel=1e-9) and 0 < row["roofline_mfu"] < 1


def test_the_samplers_gpu_program_projects_the_text_once_pads_nothing_and_keeps_q_k_in_bf16(tmp_path):
    """The scanned bf16 sampler compiled for an H200 (XLA's optimized HLO, dumped): the text's cross-attention
    keys/values are one matmul before the scales (decode_context), not one per block and scale; the cuDNN
    calls against the cache keep their odd lengths (no padded copy: they are never differentiated); q and k
    go from the qkv matmul to bf16 (and into the cache) with only their per-head norms written in float32
    between (the l2 norm's division fuses into RoPE, not into the norm's reduction kernel); and the row
    carries hlo_cost's count of the program's kernels."""
    dump = tmp_path / "hlo"
    row = _bench_memory(
        "sample",
        ["--topology", "h200", "--config", "tiny,dtype=bfloat16,scan", "--schedule", "1x1,2x2,4x4,8x8,12x12"]
        + ["--batch", "2", "--vae-config", "none"],
        tmp_path,
        dump,
    )
    (program,) = dump.glob("*jit__program*gpu_after_optimizations.txt")
    rows = hlo_cost.kernels(program.read_text())
    matmuls = {r["op"]: r["launches"] for r in rows if r["kind"] == "matmul"}
    assert [op for op in matmuls if "_blocks" in op and op.endswith("btc,csd->btsd/dot_general")] == []
    assert matmuls["Infinity.decode_context/vmap(btc,csd->btsd)/dot_general"] == 1
    assert sum(n for op, n in matmuls.items() if op.endswith("blocks/ffn/fc1/dot_general")) == 5 * 2  # scales x depth
    assert not [r["op"] for r in rows if "pad" in r["op"]]
    assert row["hlo_cost"]["kernels"] == sum(r["launches"] for r in rows)
    assert row["hlo_cost"]["by_kind"]["attention"]["kernels"] == 5 * 2 * 2  # scales x depth x (self, cross)
    float32_writes = [
        dims
        for line in program.read_text().splitlines()
        if " fusion(" in line and "decode_scale" in line and "/blocks/sa/" in line
        for dims in re.findall(r"f32\[([\d,]*)\]", line.split(" = ", 1)[1].split(" fusion(", 1)[0])
    ]
    head_dim = 32  # tiny: width 64, 2 heads
    assert float32_writes and not [d for d in float32_writes if d.endswith(f",{head_dim}")], float32_writes


@pytest.mark.slow
def test_the_sampler_compiles_for_an_h200_with_cudnn_attention(tmp_path):
    """The whole sampling program (bf16, CFG, no VAE) for one H200: cuDNN attention against the cache, and
    the GPU compiler's memory analysis with the KV cache among the temporaries."""
    row = _bench_memory(
        "sample",
        ["--topology", "h200", "--config", "tiny,dtype=bfloat16", "--schedule", "1x1,2x2,4x4,8x8,12x12"]
        + ["--batch", "2", "--vae-config", "none"],
        tmp_path,
    )
    assert row["device"] == "NVIDIA H200" and row["num_devices"] == 1
    assert row["custom_calls"].get("__cudnn$fmhaSoftmax", 0) >= 1, row["custom_calls"]
    assert row["temp_bytes"] >= row["kv_cache_bytes_per_device"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("batch, scan", [(1, ",scan"), (4, ",scan"), (1, "")])
def test_the_gpu_compiler_keeps_the_samplers_temporaries_within_twice_the_kv_cache(batch, scan, tmp_path):
    """Issue 28's memory contract read from XLA's GPU compiler, not the CPU's: layer12 (bf16) at 1024² for
    one H100, temporaries <= 2x the KV cache at batch 1 and 4 (13.5x before the in-place cache and the fused
    attention), blocks scanned and unrolled (2.1x unrolled before each layer's cache writes were kept from
    fusing into the reads of its prefix)."""
    row = _bench_memory(
        "sample",
        ["--topology", "h100", "--config", f"infinity_layer12,dtype=bfloat16{scan}", "--pn", "1M"]
        + ["--batch", str(batch), "--vae-config", "none"],
        tmp_path,
    )
    assert row["device"] == "NVIDIA H100 80GB HBM3" and row["batch"] == batch
    assert "__cudnn$fmhaSoftmax" in row["custom_calls"]
    assert row["temp_bytes"] <= 2 * row["kv_cache_bytes_per_device"], row["temp_over_kv_cache"]
