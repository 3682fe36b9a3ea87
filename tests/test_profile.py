"""The profile summary of `bench sample|train --profile` (infinity_jax.benchmarks.profile): op kinds read
from compiled HLO, device lines chosen from a trace, self time under nesting, busy time, JAX scopes.

The GPU-shaped trace below is written by hand after the layout of xprof's traces (a device process with
kernel streams and derived lines); the CPU path runs on real traces in test_train_step/test_sample."""

from __future__ import annotations

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from infinity_jax.benchmarks import profile as P


def test_op_kinds_of_compiled_programs():
    def f(x, w, k):
        y = jnp.tanh(x @ w)
        z = jax.lax.conv_general_dilated(
            y[None, :, :, None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.lax.fori_loop(0, 3, lambda i, c: c * 2.0, z).sum()

    args = (jnp.ones((16, 16)), jnp.ones((16, 16)), jnp.ones((3, 3, 1, 1)))
    kinds = P.op_kinds(jax.jit(f).lower(*args).compile().as_text())
    by_kind = {}
    for name, (kind, jax_op) in kinds.items():
        by_kind.setdefault(kind, []).append(jax_op)
    assert any("dot_general" in j for j in by_kind["matmul"])
    assert any("conv_general_dilated" in j for j in by_kind["convolution"])
    assert any(j.endswith("/while") for j in by_kind["control"])


HLO = """HloModule jit_step, is_scheduled=true

%fused_gemm (p0: bf16[64,64], p1: bf16[64,64]) -> bf16[64,64] {
  %p0 = bf16[64,64]{1,0} parameter(0)
  %p1 = bf16[64,64]{1,0} parameter(1)
  ROOT %dot.1 = bf16[64,64]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0.1: bf16[64,64]) -> bf16[64,64] {
  %p0.1 = bf16[64,64]{1,0} parameter(0)
  ROOT %add.1 = bf16[64,64]{1,0} add(%p0.1, %p0.1)
}

ENTRY %main (a: bf16[64,64], b: bf16[64,64]) -> bf16[64,64] {
  %a = bf16[64,64]{1,0} parameter(0)
  %b = bf16[64,64]{1,0} parameter(1)
  %gemm_fusion = bf16[64,64]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_gemm, META="FWD/ffn/fc1/dot_general"}
  %cudnn-call.2 = (bf16[1,16,64,128]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), CUDNN
  %all-reduce.7 = bf16[64,64]{1,0} all-reduce(%a), replica_groups={}, to_apply=%fused_add
  ROOT %loop_add_fusion = bf16[64,64]{1,0} fusion(%gemm_fusion), kind=kLoop, calls=%fused_add, META="BWD/ffn/add"}
}
"""
HLO = HLO.replace(
    "CUDNN", 'custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="FWD/sa/dot_product_attention"}'
)
HLO = HLO.replace("META", "metadata={op_name").replace("FWD", "jit(step)/jvp(Infinity)/Infinity._blocks/blocks_3")
HLO = HLO.replace("BWD", "jit(step)/transpose(jvp(Infinity))/Infinity._blocks/blocks_3")


def _trace(path, device_lines: dict[str, list[tuple[str, float, float]]], process="/device:GPU:0", args=True):
    """A Perfetto-style trace: one device process, a thread per line, 'X' events (hlo op, start, duration)."""
    events = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": process}}]
    events.append({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}})
    events.append({"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 1e4, "name": "PjitFunction(step)"})
    for tid, (line, ops) in enumerate(device_lines.items(), 10):
        events.append({"ph": "M", "pid": 7, "tid": tid, "name": "thread_name", "args": {"name": line}})
        for op, ts, dur in ops:
            e = {"ph": "X", "pid": 7, "tid": tid, "ts": ts, "dur": dur, "name": op}
            events.append(dict(e, args={"hlo_op": op}) if args else e)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return path


KERNELS = [  # two calls of the program: 100 us window each, 60 us busy, an idle gap in the middle
    ("gemm_fusion", 0, 30),
    ("cudnn-call.2", 30, 20),
    ("loop_add_fusion", 90, 10),
    ("gemm_fusion", 1000, 30),
    ("cudnn-call.2", 1030, 20),
    ("loop_add_fusion", 1090, 10),
]


def test_custom_calls_of_a_gpu_program():
    assert P.custom_calls(HLO) == {"__cudnn$fmhaSoftmax": 1}
    assert P.custom_calls(HLO.replace("%all-reduce.7", '%c = f32[] custom-call(), custom_call_target="x"\n  %r')) == {
        "__cudnn$fmhaSoftmax": 1,
        "x": 1,
    }


def test_summary_of_a_gpu_trace_counts_kernels_not_the_lines_that_span_programs(tmp_path):
    path = _trace(
        tmp_path / "t.json.gz",
        {"XLA Modules": [("jit_step", 0, 100), ("jit_step", 1000, 100)], "Stream #7(Compute)": KERNELS},
    )
    s = P.summarize(path, [HLO], calls=2)
    kinds = {k: round(v["seconds"] * 1e6, 6) for k, v in s["by_kind"].items()}
    assert kinds == {"matmul": 30, "attention": 20, "fusion": 10}  # per call, microseconds
    assert s["ops"] == 3 and s["by_kind"]["matmul"]["share"] == pytest.approx(0.5)
    assert s["busy_s"] == pytest.approx(60e-6) and s["window_s"] == pytest.approx(550e-6)
    assert [r["op"] for r in s["top"]] == ["gemm_fusion", "cudnn-call.2", "loop_add_fusion"]
    assert s["by_scale"] == []  # no sampler scales in this program
    scopes = {r["scope"]: round(r["share"], 6) for r in s["by_scope"]}
    assert scopes == {
        "Infinity._blocks/blocks/ffn": 0.5,
        "Infinity._blocks/blocks/sa": round(1 / 3, 6),
        "bwd Infinity._blocks/blocks/ffn": round(1 / 6, 6),
    }
    # a derived per-op line, where the profiler made one, is read instead of the streams (no double count)
    path = _trace(tmp_path / "u.json.gz", {"Stream #7(Compute)": KERNELS, "XLA Ops": KERNELS[:3]})
    assert P.summarize(path, [HLO])["ops"] == 3
    # a kernel that carries no op name is matched by its own, which XLA makes from the op's ('.' -> '_')
    path = _trace(tmp_path / "w.json.gz", {"Stream #7": [("cudnn-call_2", 0, 5)]}, args=False)
    assert set(P.summarize(path, [HLO])["by_kind"]) == {"attention"}
    # ops the HLO does not name fall back to the kernel's name
    path = _trace(tmp_path / "v.json.gz", {"Stream #7": [("sm90_xmma_gemm_bf16", 0, 5), ("MemcpyD2D", 5, 5)]})
    assert set(P.summarize(path)["by_kind"]) == {"matmul", "copy"}


def test_self_time_leaves_out_nested_events_and_a_failing_profiler_keeps_the_row(tmp_path):
    """The CPU runtime nests a loop's body ops inside the loop's event on one thread."""
    events = [("while.1", 0, 100), ("gemm_fusion", 10, 40), ("loop_add_fusion", 60, 20), ("gemm_fusion", 200, 40)]
    path = _trace(tmp_path / "t.json.gz", {"Stream #1": events})
    s = P.summarize(
        path, [HLO.replace("%all-reduce.7 = bf16", "%while.1 = bf16").replace("all-reduce(%a)", "while(%a)")]
    )
    kinds = {k: round(v["seconds"] * 1e6, 6) for k, v in s["by_kind"].items()}
    assert kinds == {"control": 40, "matmul": 80, "fusion": 20}
    assert s["busy_s"] == pytest.approx(140e-6)
    out = P.record(tmp_path / "p", lambda: None, 1, lambda: 1 / 0)
    assert out["error"].startswith("ZeroDivisionError") and P.format_summary(out).startswith("no profile:")


@pytest.mark.parametrize(
    "jax_op, scope",
    [
        (
            "jit(_program)/Infinity.decode_scale/Infinity._blocks/while/body/closed_call/blocks/sa/exp",
            "Infinity._blocks/blocks/sa",
        ),
        (
            "jit(f)/transpose(jvp(Infinity))/Infinity._blocks/while/body/closed_call/checkpoint/rematted_computation/blocks/ca/reduce_sum",
            "bwd Infinity._blocks/blocks/ca",
        ),
        ("jit(f)/jvp(Infinity)/Infinity._blocks/blocks_11/ffn/fc2/dot_general", "Infinity._blocks/blocks/ffn"),
        (
            "jit(_program)/BSQVAE.decode/decoder/up_0/block_0/conv1/conv/conv_general_dilated",
            "BSQVAE.decode/decoder/up_0",
        ),
        ("jit(<lambda>)/mul", ""),
        ("", ""),
    ],
)
def test_scope(jax_op, scope):
    assert P.scope(jax_op) == scope
