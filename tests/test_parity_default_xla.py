"""The parity claims under the compiler users run: the rest of the suite compiles with LLVM -O0 and
XLA's older loop emitters (tests/train_helpers.py FAST_COMPILE, for time), so here the parity tests
against the official fixtures (quantizer, VAE, transformer, sampler) run again in a process with
XLA's defaults (INFINITY_TEST_XLA=default)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = ["tests/test_bsq.py", "tests/test_vae.py", "tests/test_transformer.py", "tests/test_sample.py"]
SELECT = "(official or reference) and not abs_pos"


@pytest.mark.slow
def test_parity_tests_pass_under_xla_defaults():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(INFINITY_TEST_XLA="default", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-m", "not slow", "-k", SELECT, *PARITY],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = "\n".join(r.stdout.splitlines()[-15:])
    assert r.returncode == 0, tail
    counts = r.stdout.strip().splitlines()[-1]
    assert " passed" in counts and "skipped" not in counts and "deselected" in counts, counts
    n = int(counts.split(" passed")[0].split()[-1])
    assert n >= 20, counts  # the parity tests really ran (not a selection that matched nothing)
