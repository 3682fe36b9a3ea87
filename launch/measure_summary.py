"""The figures of a `launch/gpu_measure.sh` run, a few lines per stage, from its JSON files.

    python3 launch/measure_summary.py OUT_DIR

gpu_measure.sh prints this last, so the end of its output (all a remote call may bring back) holds every
figure: attention kernels' error and time, the sampler's latency, memory and utilisation, the training
step's time and MFU, and each profile's busy share and op kinds. Needs only the standard library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _profile(p: dict | None) -> str:
    if not p:
        return ""
    if "error" in p:
        return f"\n    profile failed: {p['error'][:200]}"
    kinds = ", ".join(
        f"{k} {100 * v['share']:.0f}%" for k, v in sorted(p["by_kind"].items(), key=lambda kv: -kv[1]["share"])
    )
    scopes = ", ".join(f"{s['scope'] or '-'} {100 * s['share']:.0f}%" for s in p["by_scope"][:4])
    scales = ", ".join(
        f"{r['scale']} {1e3 * r['seconds']:.1f}" + (f" ({_pct(r['utilisation'])})" if r.get("utilisation") else "")
        for r in p.get("by_scale", [])
    )
    return (
        f"\n    profile: busy {100 * p['busy_fraction']:.0f}% of {1e3 * p['window_s']:.1f} ms, {p['ops']} ops; {kinds}"
        f"\n    scopes: {scopes}" + (f"\n    per scale, ms (utilisation): {scales}" if scales else "")
    )


def stage_lines(name: str, rows: list[dict]) -> list[str]:
    """One line per row of a stage's JSON (its kind read from its fields), profiles indented below."""
    out = []
    for r in rows:
        if "impl" in r:  # bench attention
            if "skip" in r:
                out.append(f"{name}: {r['case']} {r['impl']} skipped: {r['skip']}")
                continue
            bwd = "-" if r.get("fwd_bwd_ms") is None else f"{r['fwd_bwd_ms']:.2f}"
            out.append(
                f"{name}: {r['case']} {r['impl']:<8} err {r['max_err']:.1e}  fwd {r['fwd_ms']:.2f} ms  fwd+bwd {bwd} ms"
            )
        elif "median_s" in r:  # bench sample
            out.append(
                f"{name}: {r['config']} {r['pn']} batch {r['batch']}: median {r['median_s']:.3f} s (min "
                f"{r['min_s']:.3f}), {r['images_per_s']:.2f} img/s, compile {r['compile_s']:.1f} s, peak "
                f"{_gib(r['peak_bytes'])} ({r['mem_source']}; program {_gib(r.get('program_bytes'))}), utilisation "
                f"{_pct(r['utilisation'])}" + _profile(r.get("profile"))
            )
        elif "step_s" in r:  # bench train
            by = r.get("matmul_flops_by_dtypes", {})
            dtypes = by["error"][:100] if "error" in by else ", ".join(f"{k} {100 * v:.1f}%" for k, v in by.items())
            out.append(
                f"{name}: {r['config']} {r['image']} batch {r['batch']}: step {r['step_s']:.3f} s (min "
                f"{r['min_step_s']:.3f}), MFU {_pct(r.get('mfu'))}, {r['tflop_per_step']:.2f} TFLOP/step, compile "
                f"{r['compile_s']:.1f} s, matmuls {dtypes}" + _profile(r.get("profile"))
            )
        else:
            out.append(f"{name}: {json.dumps(r)[:300]}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    lines = []
    for path in sorted(out_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            lines.append(f"{path.stem}: unreadable ({e})")
            continue
        lines += stage_lines(path.stem, rows if isinstance(rows, list) else [rows])
    print("\n".join(["== figures"] + (lines or ["(no stage wrote its JSON)"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
