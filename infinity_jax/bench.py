"""`infinity-jax bench <what> [args]`: benchmarks that print a table.

Each benchmark is a function `main(argv) -> int` registered below as "module:function" and
imported only when it runs; add one with one line.
"""
from __future__ import annotations

import importlib
import sys

from infinity_jax.errors import UsageError

BENCHMARKS: dict[str, str] = {
    "attention": "infinity_jax.attention_bench:main",  # each attention kernel: error vs reference, fwd/bwd ms
    "data": "infinity_jax.data.bench:main",  # input pipeline images/s (decode + resize + crop)
    "sample": "infinity_jax.sample_bench:main",  # sampler compile s, latency, images/s, peak memory, MFU
    "train": "infinity_jax.train.bench:main",  # training step time, images/s, tokens/s, MFU
}


def main(argv: list[str]) -> int:
    usage = f"usage: infinity-jax bench <{'|'.join(sorted(BENCHMARKS))}> [args]  (-h for each)"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{__doc__.splitlines()[0]}", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {argv[0]!r}: expected one of {', '.join(sorted(BENCHMARKS))}")
    module, func = BENCHMARKS[argv[0]].split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


def write_json(path: str, rows: list[dict]) -> None:
    """A benchmark's rows as JSON (its --json file), written atomically."""
    import json
    from infinity_jax.convert.common import atomic_write
    atomic_write(path, lambda f: f.write(json.dumps(rows, indent=1).encode()))
