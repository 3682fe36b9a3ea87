"""Shared test helpers: the parity fixtures made by tests/fixtures/make_fixtures.py; XLA flags that compile
faster (tests/train_helpers.py: FAST_COMPILE)."""

from __future__ import annotations

import json
import os

from tests.train_helpers import xla_flags

os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", ""))  # before jax starts its backend
# commands run in-process and in subprocesses write no compilation cache into the home folder (its
# tests set their own: test_compile_cache.py, train_helpers.compile_cache)
os.environ.setdefault("INFINITY_JAX_COMPILE_CACHE", "off")

import jax  # noqa: E402
import numpy as np
import pytest

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_default_matmul_precision", "highest")  # parity bounds assume true fp32 matmuls

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures")
FIXTURES = ("tiny", "tiny-wide")


def load_fixture(name: str) -> dict:
    """All arrays of tests/fixtures/<name>.npz (weights cast to float32) plus 'meta' (the settings dict)."""
    with np.load(os.path.join(FIXTURE_DIR, f"{name}.npz")) as f:
        data = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in f.items()}
    data["meta"] = json.loads(str(data.pop("meta/json")))
    return data


@pytest.fixture(scope="session", params=FIXTURES)
def reference(request):
    """Each parity fixture in turn (session-cached)."""
    return load_fixture(request.param)


def state_dict(fixture: dict, prefix: str) -> dict:
    """The official state dict stored under `prefix/` (e.g. 'vae', 'gpt'), without the output keys."""
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in fixture.items() if k.startswith(p) and not k.startswith(p + "out/")}


def pytest_sessionfinish(session, exitstatus):
    """Under CI (CI set, as .ci/run runs) a skipped test fails the session: a missing test dependency
    (torch, transformers) must not turn 40 tests into a green 'N skipped'. Reasons print via -rs."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI", "").lower() not in ("", "0", "false") and skipped and exitstatus == 0:
        print(f"\nCI: {skipped} test(s) skipped; every test must run in CI (reasons above)")
        session.exitstatus = 1
