"""Where a benchmark's device time goes: a profiler trace of its program, summed per HLO op.

`bench sample|train --profile DIR` records a few calls with jax.profiler (Perfetto trace under DIR, the
xprof files beside it) and prints this summary, which needs no TensorBoard: the device ops' time by
kind (matmul, attention, convolution, collective, copy, the other fusions), the busiest ops with the
JAX op they came from, and how much of the recorded window the device was busy at all (a sampler
whose small scales leave it idle between launches shows it there).

An op's kind comes from the compiled program's HLO (`compiled.as_text()`): a fusion that calls a dot
is a matmul, a custom call to cuDNN's fused attention or a Pallas/Mosaic kernel is attention, and so
on; ops the HLO does not name fall back to their kernel's name. Time is self time: an op's events
less the events nested in them on the same thread (the CPU runtime nests a loop's body in the loop).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import re
from pathlib import Path

import jax

KINDS = ("matmul", "attention", "convolution", "collective", "copy", "fusion", "control", "other")
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"(?<![\w.%\-])([a-z][a-z0-9\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_TRANSFORM = re.compile(r"^[\w.]*\(.*\)$")  # jvp(Infinity), transpose(jvp(...)), vmap(), jit(_uniform)
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')
_SCALE = re.compile(r"^scale\d+_(\d+x\d+)$")  # the sampler's per-scale scopes (sample.generate_tokens)
_PLUMBING = {"while", "body", "cond", "closed_call", "checkpoint", "rematted_computation", "branch"}


@contextlib.contextmanager
def trace(out_dir: str | Path):
    """jax.profiler.trace into out_dir, with the Perfetto JSON `summarize` reads."""
    with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
        yield


def record(out_dir: str | Path, run, calls: int, hlo_texts) -> dict:
    """Calls `run()` `calls` times under the profiler and summarizes the trace (`summarize`; `hlo_texts`: a
    callable giving the programs' HLO texts). A profiler that fails gives {'error': why} instead, so a
    benchmark keeps the timings it already has (an accelerator lease is too short to lose them)."""
    try:
        with trace(out_dir):
            for _ in range(calls):
                run()
        return summarize(latest_trace(out_dir), hlo_texts(), calls=calls)
    except Exception as e:  # noqa: BLE001 - the profile is a bonus on top of the measured row
        return {"error": f"{type(e).__name__}: {e}"}


def latest_trace(out_dir: str | Path) -> Path:
    """The newest Perfetto trace jax.profiler wrote under out_dir."""
    found = sorted(Path(out_dir).glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{out_dir}: no perfetto_trace.json.gz (was it recorded with `trace`?)")
    return found[-1]


def _by_name(name: str) -> str:
    """A kind from a kernel's or op's own name, for ops the HLO does not describe."""
    n = name.lower()
    for kind, words in (
        ("attention", ("fmha", "flash", "sdpa", "splash", "attention")),
        ("matmul", ("gemm", "matmul", "cublas", "dot")),
        ("convolution", ("conv",)),
        ("collective", ("nccl", *_COLLECTIVES)),
        ("copy", ("memcpy", "memset", "copy", "transpose")),
        ("control", ("while", "conditional")),
        ("fusion", ("fusion",)),
    ):
        if any(w in n for w in words):
            return kind
    return "other"


def op_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (kind, JAX op name)} for every instruction of a compiled program's HLO text."""
    instrs, contents, current = {}, collections.defaultdict(set), None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(1)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, rest = m.groups()
        op = _OPCODE.search(rest)
        opcode = op.group(1) if op else ""
        contents[current].add(opcode)
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        target = _CUSTOM_CALL.search(rest)
        jax_op = re.search(r'op_name="([^"]*)"', rest)
        instrs[name] = (opcode, calls and calls.group(1), target and target.group(1), jax_op and jax_op.group(1), rest)
    out = {}
    for name, (opcode, calls, target, jax_op, rest) in instrs.items():
        inner = contents.get(calls, set()) if calls else set()
        if opcode == "custom-call":
            t = target or ""
            kind = "attention" if ("tpu_custom_call" in t or "mosaic" in t.lower()) else _by_name(t)
            kind = "other" if kind == "fusion" else kind
        elif opcode in ("dot", "convolution") or (opcode == "fusion" and inner & {"dot", "convolution"}):
            kind = "convolution" if "convolution" in inner | {opcode} else "matmul"
        elif opcode == "fusion" and ("__triton_gemm" in rest or "__cudnn$fusion" in rest):
            kind = "matmul"
        elif any(opcode.startswith(c) for c in _COLLECTIVES) or inner & set(_COLLECTIVES):
            kind = "collective"
        elif opcode in ("copy", "copy-start", "copy-done", "transpose"):
            kind = "copy"
        elif opcode in ("while", "conditional", "call"):
            kind = "control"
        elif opcode == "fusion":
            kind = "fusion"
        else:
            kind = "other"
        out[name] = (kind, jax_op or "")
    return out


def custom_calls(hlo_text: str) -> dict[str, int]:
    """The custom-call targets of a compiled program's HLO text and how often each appears (a call in a
    scanned block's loop body counts once): the fused kernels the compiler kept, e.g. cuDNN's
    '__cudnn$fmhaSoftmax' / '...Backward' on GPU, Mosaic's 'tpu_custom_call' on TPU."""
    return dict(sorted(collections.Counter(_CUSTOM_CALL.findall(hlo_text)).items()))


_DERIVED_LINES = (  # xprof's lines that span programs, steps or scopes, or repeat the ops' own events
    "XLA Modules",
    "Async XLA Ops",
    "Steps",
    "Framework",
    "TensorFlow",
    "Source code",
    "Launch Stats",
    "Host Offload",
    "Sparse Core",
    "_counters_",
)


def scope(jax_op: str) -> str:
    """Where in the model a JAX op is, for the per-scope table: the module path below the last Flax method
    (e.g. 'Infinity._blocks/blocks/sa', 'BSQVAE.decode/decoder/up_0'), layer indices and loop/remat
    plumbing dropped, 'bwd ' in front for the backward pass; '' for an op outside any scope."""
    if not jax_op:
        return ""
    jax_op = jax_op.split(";")[0]
    parts = jax_op.split("/")
    backward = any(p.startswith("transpose(") for p in parts)
    kept = [re.sub(r"_\d+$", "", p) if p.startswith("blocks_") else p for p in parts[1:]]
    kept = [p for p in kept if p not in _PLUMBING and not _TRANSFORM.match(p)][:-1]  # the last: the primitive
    methods = [i for i, p in enumerate(kept) if "." in p]
    kept = kept[methods[-1] : methods[-1] + 3] if methods else kept[:1]
    return ("bwd " if backward else "") + "/".join(kept)


def _device_events(events: list[dict]) -> list[dict]:
    """The trace's device-op events. On a GPU/TPU process: its "XLA Ops" line where the profiler derived
    one (an event per op), else its kernel streams, never the lines that span whole programs or steps.
    Without one (the CPU): the runtime's events that name an HLO op."""
    meta = [e for e in events if e.get("ph") == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in meta if e.get("name") == "thread_name"}
    devices = {p for p, n in procs.items() if n.startswith("/device:") and "CPU" not in n}
    ops = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if not devices:
        return [e for e in ops if "hlo_op" in e.get("args", {}) and not e["name"].startswith("end:")]
    on_device = [e for e in ops if e["pid"] in devices]
    line = {id(e): threads.get((e["pid"], e.get("tid")), "") for e in on_device}
    for wanted in (lambda n: n == "XLA Ops", lambda n: n.startswith("Stream")):
        chosen = [e for e in on_device if wanted(line[id(e)])]
        if chosen:
            return chosen
    return [e for e in on_device if not line[id(e)].startswith(_DERIVED_LINES)]


def _self_times(events: list[dict]) -> list[float]:
    """Each event's duration less the events nested inside it on its thread (microseconds)."""
    self_t = [float(e["dur"]) for e in events]
    by_thread = collections.defaultdict(list)
    for i, e in enumerate(events):
        by_thread[(e["pid"], e.get("tid"))].append(i)
    for idx in by_thread.values():
        idx.sort(key=lambda i: (events[i]["ts"], -events[i]["dur"]))
        stack: list[int] = []
        for i in idx:
            start = events[i]["ts"]
            while stack and events[stack[-1]]["ts"] + events[stack[-1]]["dur"] <= start:
                stack.pop()
            if stack:
                self_t[stack[-1]] -= events[i]["dur"]
            stack.append(i)
    return [max(t, 0.0) for t in self_t]


def _busy(events: list[dict]) -> tuple[float, float]:
    """(window, busy) in microseconds: first start to last end, and the union of the events' intervals."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events)
    busy, end = 0.0, float("-inf")
    for s, t in spans:
        if t > end:
            busy += t - max(s, end)
            end = t
    return spans[-1][1] - spans[0][0], busy


def summarize(trace_path: str | Path, hlo_texts: list[str] = (), *, calls: int = 1, top: int = 12) -> dict:
    """The device time of a recorded trace (see the module docstring), per call of the program: {calls,
    ops, window_s, busy_s, busy_fraction, by_kind: {kind: {seconds, share, count}}, by_scope: [{scope,
    seconds, share}], by_scale: [{scale, seconds}] (the sampler's scales in order, then 'other'; empty
    for programs without them), top: [{op, kind, jax_op, count, seconds}]}; times are divided by `calls`,
    the program's calls in the trace."""
    with gzip.open(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    ops = _device_events(events)
    if not ops:
        raise ValueError(f"{trace_path}: no device ops in the trace")
    kinds: dict[str, tuple[str, str]] = {}
    for text in hlo_texts:
        for name, kind in op_kinds(text).items():
            kinds[name] = kind
            kinds.setdefault(name.replace(".", "_"), kind)  # a GPU kernel's own name: 'fusion.3' -> 'fusion_3'
    self_t = _self_times(ops)
    window, busy = _busy(ops)
    per_op: dict[str, list] = {}
    for e, t in zip(ops, self_t):
        name = e.get("args", {}).get("hlo_op") or e["name"]
        kind, jax_op = kinds.get(name) or (_by_name(f"{name} {e['name']}"), "")
        row = per_op.setdefault(name, [kind, jax_op, 0, 0.0])
        row[2] += 1
        row[3] += t
    total = sum(r[3] for r in per_op.values()) or 1.0
    scopes: dict[str, float] = collections.defaultdict(float)
    scales: dict[str, float] = collections.defaultdict(float)
    for _, jax_op, _, t in per_op.values():
        scopes[scope(jax_op) or "(top level: optimizer, loss, sampling)"] += t
        scales[next((p for p in jax_op.split("/") if _SCALE.match(p)), "other")] += t
    scale_order = sorted(scales, key=lambda k: (k == "other", k)) if set(scales) - {"other"} else []
    by_kind = {k: {"seconds": 0.0, "share": 0.0, "count": 0} for k in KINDS}
    for kind, _, count, t in per_op.values():
        by_kind[kind]["seconds"] += t / 1e6 / calls
        by_kind[kind]["share"] += t / total
        by_kind[kind]["count"] += count // calls
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1][3])[:top]
    return {
        "calls": calls,
        "ops": len(ops) // calls,
        "window_s": window / 1e6 / calls,
        "busy_s": busy / 1e6 / calls,
        "busy_fraction": busy / window if window else 1.0,
        "by_kind": {k: v for k, v in by_kind.items() if v["count"]},
        "by_scope": [
            {"scope": k, "seconds": t / 1e6 / calls, "share": t / total}
            for k, t in sorted(scopes.items(), key=lambda kv: -kv[1])[:top]
        ],
        # the sampler's time per scale (its named scopes), in schedule order, then what no scale holds (VAE)
        "by_scale": [
            {"scale": m.group(1) if (m := _SCALE.match(k)) else k, "seconds": scales[k] / 1e6 / calls}
            for k in scale_order
        ],
        "top": [
            {"op": n, "kind": k, "jax_op": j, "count": c // calls, "seconds": t / 1e6 / calls}
            for n, (k, j, c, t) in ranked
        ],
    }


def _util(row: dict) -> str:
    u = row.get("utilisation")
    return "" if u is None else f" ({100 * u:.0f}%)"


def format_summary(s: dict) -> str:
    """The summary as the benchmarks print it."""
    if "error" in s:
        return f"no profile: {s['error']}"
    lines = [
        f"profile, per call ({s['calls']} recorded): {s['ops']} device ops, busy {1e3 * s['busy_s']:.2f} ms "
        f"of a {1e3 * s['window_s']:.2f} ms window ({100 * s['busy_fraction']:.0f}%)",
        "  kind          ms/call   share   ops/call",
    ]
    for k, v in sorted(s["by_kind"].items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(f"  {k:<12} {1e3 * v['seconds']:>8.2f} {100 * v['share']:>6.1f}%  {v['count']:>9}")
    if s.get("by_scale"):
        per = ", ".join(f"{r['scale']} {1e3 * r['seconds']:.2f}{_util(r)}" for r in s["by_scale"])
        lines.append(f"  per scale, ms/call (utilisation): {per}")
    lines.append("  scope                                         ms/call   share")
    for r in s["by_scope"]:
        lines.append(f"  {r['scope'][:44]:<44} {1e3 * r['seconds']:>8.2f} {100 * r['share']:>6.1f}%")
    lines.append("  busiest ops                ms/call  count  kind         JAX op")
    for r in s["top"]:
        jax_op = r["jax_op"].split("/", 1)[-1]
        jax_op = jax_op if len(jax_op) <= 70 else "..." + jax_op[-67:]
        lines.append(f"  {r['op'][:24]:<24} {1e3 * r['seconds']:>8.2f} {r['count']:>6}  {r['kind']:<11}  {jax_op}")
    return "\n".join(lines)
