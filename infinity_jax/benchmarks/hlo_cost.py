"""What a compiled GPU program asks of the device per call, read from its optimized HLO: nothing runs.

`bench sample|train --memory --topology h100|h200` adds it to the row: kernel launches, HBM bytes, the
FLOPs of its GEMMs, attention and convolutions, and a roofline estimate of its time, in total, per kind
and for the costliest JAX ops, so a change to a hot path can be judged on a machine with no GPU.

Every kernel is an instruction of the entry computation or of a loop body, which runs its known trip
count times (nested loops multiply): a fusion, a custom call (cuBLAS GEMM, cuDNN attention or
convolution), a copy. Its HBM traffic is what it writes plus what it reads: a fusion reads of each
operand only the elements its outputs need (a slice of it, say), and a dynamic-update-slice writes its
update in place. FLOPs: 2 per multiply-add of each GEMM and convolution; cuDNN flash attention
4 * B * H * l * m * c forward, 2.5 times that backward. Kinds: those of `profile.op_kinds`, with two of
the fusions told apart, 'slice' (a copy of a dynamic slice: a scanned layer's weights or cache) and
'update' (a dynamic-update-slice in place: a scan's stacked outputs, the KV cache).

The estimate is each kernel's max(bytes / bandwidth, FLOPs / peak), summed: no launch cost, no overlap
between kernels, peak efficiency within them, and collectives at HBM bandwidth (the interconnect is
slower: on several GPUs read their bytes, not their time). It is not a measurement; it ranks what to change (the
residuals a remat policy writes, the weights a scan copies, the kernels a scale launches) before a
device is at hand.
"""

from __future__ import annotations

import collections
import math
import re
from typing import NamedTuple

from infinity_jax.benchmarks import profile

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4}
_DTYPE_BYTES.update({"s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "c64": 8})
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id", "replica-id"}
# what else a fusion that only moves a dynamic slice (or update) holds: its index arithmetic, casts, copies
_MOVING = {"parameter", "constant", "bitcast", "add", "subtract", "multiply", "compare", "select", "clamp"}
_MOVING |= {"convert", "reshape", "tuple", "copy"}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of them), e.g. 'bf16[2,64]{1,0}' -> 256."""
    return sum(
        math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dt]
        for dt, dims in _ARRAY.findall(shape)
        if dt in _DTYPE_BYTES
    )


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


class _Instr(NamedTuple):
    name: str
    shape: str  # an array's or a tuple's, layout included
    opcode: str
    operands: list[str]
    line: str


def _parse_instr(line: str) -> _Instr | None:
    m = profile._INSTR.match(line)
    if not m:
        return None
    name, rest = m.groups()
    if rest.startswith("("):  # a tuple shape: up to its closing parenthesis
        depth = 0
        for i, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
        shape, rest = rest[: i + 1], rest[i + 2 :]
    else:
        shape, _, rest = rest.partition(" ")
    m = re.match(r"([a-z][a-z0-9\-]*)\((.*)$", rest)
    if not m:
        return None
    opcode, args = m.groups()
    depth, end = 1, len(args)
    for i, ch in enumerate(args):  # the operand list ends at its closing parenthesis
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            end = i
            break
    return _Instr(name, shape, opcode, re.findall(r"%([\w.\-]+)", args[:end]), line)


def _computations(hlo_text: str) -> tuple[dict[str, list[_Instr]], str | None]:
    comps, current, entry = {}, None, None
    for line in hlo_text.splitlines():
        m = profile._COMPUTATION.match(line)
        if m:
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None:
            ins = _parse_instr(line)
            if ins is not None:
                comps[current].append(ins)
    return comps, entry


def _called(line: str) -> str | None:
    """The computation a fusion (or call) instruction runs."""
    m = re.search(r"calls=%?([\w.\-]+)", line)
    return m.group(1) if m else None


def _elements(shape: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) for _, dims in _ARRAY.findall(shape))


def _fusion_traffic(body: list[_Instr], out_shape: str, operand_shapes: list[str]) -> tuple[float, str | None]:
    """(bytes a fusion moves, 'slice' | 'update' | None). A fusion computes only the elements it writes, so
    each parameter counts for the share of its elements that the outputs need, followed back through the
    fused ops: elementwise ops need the same share of their operands, a slice its part, a
    dynamic-update-slice nothing of its target (written in place, for the update's bytes), anything else
    (broadcasts, reductions, dots) all of them."""
    by_name = {ins.name: ins for ins in body}
    need: dict[str, float] = collections.defaultdict(float)  # share of an instruction's elements needed
    written = 0.0
    root = body[-1] if body else None
    for ins in body:
        if "ROOT " in ins.line.split("=", 1)[0]:
            root = ins
    outputs = [by_name[o] for o in root.operands] if root is not None and root.opcode == "tuple" else [root]
    for out in outputs:
        if out is None:
            continue
        need[out.name] = 1.0
        update = out.opcode == "dynamic-update-slice" and len(out.operands) > 1
        written += shape_bytes(by_name[out.operands[1]].shape) if update else shape_bytes(out.shape)
    for ins in reversed(body):
        share = need.get(ins.name, 0.0)
        if share == 0.0 or ins.opcode in ("parameter", "constant"):
            continue
        n_out = _elements(ins.shape)
        for pos, src in enumerate(ins.operands):
            operand = by_name.get(src)
            if operand is None:
                continue
            n_in = _elements(operand.shape)
            if ins.opcode in ("slice", "dynamic-slice") and pos == 0:
                want = share * n_out / max(n_in, 1)
            elif ins.opcode == "dynamic-update-slice":
                want = 0.0 if pos == 0 else 1.0
            elif ins.opcode == "tuple" or (n_in == n_out and ins.opcode not in ("reduce", "dot", "convolution")):
                want = share
            else:
                want = 1.0
            need[src] = min(1.0, max(need[src], want))
    params = {}
    for ins in body:
        if ins.opcode == "parameter":
            params[int(re.match(r"\s*(\d+)", ins.line.split("parameter(", 1)[1]).group(1))] = ins.name
    total = written + sum(need.get(params.get(i, ""), 0.0) * shape_bytes(s) for i, s in enumerate(operand_shapes))
    opcodes = {ins.opcode for ins in body}
    kind = None
    if "dynamic-slice" in opcodes and opcodes <= _MOVING | {"dynamic-slice"}:
        kind = "slice"
    elif "dynamic-update-slice" in opcodes and opcodes <= _MOVING | {"dynamic-update-slice", "dynamic-slice"}:
        kind = "update"
    return total, kind


def _dot_flops(out_shape: str, lhs_shape: str, contracting: list[int]) -> float:
    lhs = _dims(lhs_shape)
    return 2.0 * math.prod(_dims(out_shape)) * math.prod(lhs[c] for c in contracting if c < len(lhs))


def _flops(ins: _Instr, shapes: dict[str, str], comps: dict) -> float:
    line = ins.line
    if ins.opcode == "custom-call":
        m = profile._CUSTOM_CALL.search(line)
        target = m.group(1) if m else ""
        if "gemm" in target or "matmul" in target:
            m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
            contracting = [int(c.strip('" ')) for c in m.group(1).split(",") if c.strip('" ')] if m else []
            return _dot_flops(ins.shape, shapes.get(ins.operands[0], ""), contracting)
        if "fmha" in target:
            m = re.search(r'"intermediate_tensor_shape":\s*\{[^}]*?"dimensions":\s*\[([^\]]*)\]', line)
            if not m:
                return 0.0
            b, h, lq, lk = (int(x.strip('" ')) for x in m.group(1).split(","))
            head = math.prod(_dims(shapes.get(ins.operands[0], ""))) // max(b * h * lq, 1)
            return 4.0 * b * h * lq * lk * head * (2.5 if "Backward" in target else 1.0)
        if "conv" in target.lower():
            m = re.search(r"dim_labels=\w+_(\w+)->", line)
            filt = _dims(shapes.get(ins.operands[1], "")) if len(ins.operands) > 1 else []
            if not m or len(m.group(1)) != len(filt):
                return 0.0
            per_out = math.prod(filt) // filt[m.group(1).index("o")]
            return 2.0 * math.prod(_dims(ins.shape)) * per_out
        return 0.0
    if ins.opcode == "dot":
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        return _dot_flops(ins.shape, shapes.get(ins.operands[0], ""), [int(c) for c in m.group(1).split(",") if c])
    if ins.opcode == "fusion":
        body = comps.get(_called(line), [])
        inner = {i.name: i.shape for i in body}
        return sum(_flops(i, inner, comps) for i in body if i.opcode == "dot")
    return 0.0


def _scope(line: str) -> str:
    """The JAX op a kernel came from, without jit(...) / transform wrappers and loop plumbing."""
    m = re.search(r'op_name="([^"]*)"', line)
    if not m:
        return ""
    parts = [p for p in m.group(1).split("/") if not p.startswith("jit(") and p not in profile._PLUMBING]
    return "/".join(parts)


def _launches(hlo_text: str) -> list[tuple[str, str, int, float, float]]:
    """(kind, JAX op, launches per call, bytes, flops) of every kernel instruction of the program."""
    comps, entry = _computations(hlo_text)
    kinds = profile.op_kinds(hlo_text)
    out = []

    def walk(comp: str, times: int) -> None:
        shapes = {ins.name: ins.shape for ins in comps.get(comp, [])}
        for ins in comps.get(comp, []):
            if ins.opcode == "while":
                body = re.search(r"body=%?([\w.\-]+)", ins.line)
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.line)
                walk(body.group(1), times * (int(trips.group(1)) if trips else 1))
                continue
            if ins.opcode in ("call", "conditional"):
                for called in re.findall(r"(?:to_apply|calls|branch_computations)=\{?%?([\w.\-]+)", ins.line):
                    walk(called, times)
                continue
            if ins.opcode in _FREE:
                continue
            kind = kinds.get(ins.name, ("other", ""))[0]
            operand_shapes = [shapes.get(o, "") for o in ins.operands]
            if ins.opcode == "fusion":
                body = comps.get(_called(ins.line), [])
                nbytes, moving = _fusion_traffic(body, ins.shape, operand_shapes)
                kind = moving or kind
            else:
                nbytes = shape_bytes(ins.shape) + sum(shape_bytes(s) for s in operand_shapes)
            out.append((kind, _scope(ins.line), times, nbytes, _flops(ins, shapes, comps)))

    if entry is not None:
        walk(entry, 1)
    return out


def kernels(hlo_text: str, *, bandwidth: float | None = None, peak_flops: float | None = None) -> list[dict]:
    """Every kernel of the program, aggregated by (kind, JAX op): launches, bytes and flops per call, and
    with `bandwidth` and `peak_flops` its roofline estimate_s (each kernel's, summed). Costliest first."""
    rows: dict[tuple[str, str], dict] = {}
    for kind, op, times, nbytes, flops in _launches(hlo_text):
        r = rows.setdefault((kind, op), {"kind": kind, "op": op, "launches": 0, "bytes": 0.0, "flops": 0.0})
        r["launches"] += times
        r["bytes"] += times * nbytes
        r["flops"] += times * flops
        if bandwidth and peak_flops:
            r["estimate_s"] = r.get("estimate_s", 0.0) + times * max(nbytes / bandwidth, flops / peak_flops)
    order = "estimate_s" if bandwidth and peak_flops else "bytes"
    return sorted(rows.values(), key=lambda r: -r[order])


def summarize(hlo_text: str, *, bandwidth: float, peak_flops: float, top: int = 8) -> dict:
    """Per call: kernels (launches), hbm_bytes, flops, estimate_s (the roofline sum), by_kind {kind: {kernels,
    bytes, flops, estimate_s}} and the `top` costliest JAX ops by their estimate."""
    rows = kernels(hlo_text, bandwidth=bandwidth, peak_flops=peak_flops)
    by_kind: dict[str, dict] = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"kernels": 0, "bytes": 0.0, "flops": 0.0, "estimate_s": 0.0})
        k["kernels"] += r["launches"]
        k["bytes"] += r["bytes"]
        k["flops"] += r["flops"]
        k["estimate_s"] += r["estimate_s"]
    return {
        "kernels": sum(r["launches"] for r in rows),
        "hbm_bytes": sum(r["bytes"] for r in rows),
        "flops": sum(r["flops"] for r in rows),
        "estimate_s": sum(r["estimate_s"] for r in rows),
        "bandwidth": bandwidth,
        "peak_flops": peak_flops,
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["estimate_s"])),
        "top": rows[:top],
    }


def format_summary(s: dict) -> str:
    """Two lines: the totals with the split by kind, then the costliest ops."""
    kinds = ", ".join(f"{k} {1e3 * v['estimate_s']:.1f} ms ({v['kernels']} launches)" for k, v in s["by_kind"].items())
    ops = "; ".join(f"{r['kind']} {r['op'] or '?'} {1e3 * r['estimate_s']:.1f} ms" for r in s["top"][:5])
    return (
        f"per call by XLA's HLO: {s['kernels']} kernel launches, {s['hbm_bytes'] / 1e9:.1f} GB HBM traffic, "
        f"{s['flops'] / 1e12:.1f} TFLOP; roofline estimate {1e3 * s['estimate_s']:.1f} ms (no launch cost, "
        f"{s['bandwidth'] / 1e12:.2f} TB/s, {s['peak_flops'] / 1e12:.0f} TFLOP/s): {kinds}\n"
        f"  costliest ops: {ops}"
    )
