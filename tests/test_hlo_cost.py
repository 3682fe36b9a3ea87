"""benchmarks/hlo_cost.py: kernel launches, HBM bytes and FLOPs per call, read from optimized HLO text."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from infinity_jax.benchmarks import hlo_cost

# A GPU-shaped program (fixtures/toy_gpu_program.hlo.txt): a loop of 4 trips copies one layer's weight
# out of a stack (a dynamic-slice fusion), multiplies by it with cuBLAS and writes the result into a stack
# in place; then cuDNN attention and a fusion that reads half of q.
HLO = (Path(__file__).parent / "fixtures" / "toy_gpu_program.hlo.txt").read_text()


def _by_op(rows):
    return {r["op"]: r for r in rows}


def test_a_loop_body_counts_its_trips_and_slices_count_what_they_move():
    rows = _by_op(hlo_cost.kernels(HLO))
    gemm, sliced, update = rows["layer/dot_general"], rows["dynamic_slice"], rows["dynamic_update_slice"]
    assert (gemm["kind"], gemm["launches"], gemm["flops"]) == ("matmul", 4, 4 * 2 * 8 * 64 * 32)
    # cuBLAS reads x and the layer's weight, writes its output and workspace
    assert gemm["bytes"] == 4 * (8 * 64 * 2 + 64 * 32 * 2 + 8 * 32 * 2 + 1024)
    # the weight copy reads one layer of the stack, not all four, and writes it
    assert (sliced["kind"], sliced["launches"], sliced["bytes"]) == ("slice", 4, 4 * (2 * 64 * 32 * 2 + 4))
    # the in-place update reads its bf16 rows and writes them as f32, never the whole stack
    assert (update["kind"], update["bytes"]) == ("update", 4 * (8 * 32 * 2 + 8 * 32 * 4 + 4))
    # a fusion that reads half of q through a static slice reads that half
    assert (rows["neg"]["kind"], rows["neg"]["bytes"]) == ("fusion", 2 * (2 * 3 * 4 * 16 * 2))
    attn = rows["attention"]
    assert (attn["kind"], attn["launches"], attn["flops"]) == ("attention", 1, 4 * 2 * 4 * 6 * 10 * 16)


def test_the_summary_adds_up_and_takes_each_kernel_at_its_roofline():
    s = hlo_cost.summarize(HLO, bandwidth=1e9, peak_flops=1e9)
    rows = hlo_cost.kernels(HLO)
    assert s["kernels"] == sum(r["launches"] for r in rows) == 14
    assert s["estimate_s"] == pytest.approx(sum(max(r["bytes"], r["flops"]) / 1e9 for r in rows))
    assert set(s["by_kind"]) == {"matmul", "slice", "update", "attention", "fusion"}
    assert s["by_kind"]["matmul"]["flops"] == 4 * 2 * 8 * 64 * 32
    assert "14 kernel launches" in hlo_cost.format_summary(s)


def test_the_flops_of_a_compiled_scan_of_matmuls_are_counted_per_trip():
    """A real program (this machine's compiler): three layers' matmuls in a scan, each trip counted."""

    def f(ws, x):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

    ws = jax.ShapeDtypeStruct((3, 128, 128), jnp.float32)
    x = jax.ShapeDtypeStruct((32, 128), jnp.float32)
    rows = hlo_cost.kernels(jax.jit(f).lower(ws, x).compile().as_text())
    assert sum(r["flops"] for r in rows) == 3 * 2 * 32 * 128 * 128
    assert max(r["launches"] for r in rows if r["flops"]) == 3


def test_shape_bytes_of_arrays_and_tuples():
    assert hlo_cost.shape_bytes("bf16[2,64]{1,0}") == 256
    assert hlo_cost.shape_bytes("(f32[3]{0}, s8[10]{0}, pred[])") == 12 + 10 + 1
