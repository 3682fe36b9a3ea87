"""Two local processes (jax.distributed on localhost, gloo CPU collectives, 2 devices each) train
the stand-in with FSDP over the 4 global devices, checkpoint at step 3 and resume to step 6."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from infinity_jax.checkpoint import Checkpointer
from tests.train_helpers import STEPS, compile_cache, reference_run, xla_flags  # noqa: F401 (fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_checkpoint_and_resume(reference_run, tmp_path, compile_cache):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"), JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.train_helpers",
                str(tmp_path),
                "--steps",
                str(STEPS),
                "--until",
                "3",
                "--every",
                "0",
                "--rules",
                "fsdp",
                "--fsdp",
                "2",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=150)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and "DONE done" in out, f"process {i} failed:\n{out[-4000:]}"

    rows = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for out in outs]
    for i, r in enumerate(rows):
        assert [x["step"] for x in r] == list(range(1, STEPS + 1)), i
        assert [x["start"] for x in r] == [0, 0, 0, 3, 3, 3], i  # the second call resumed from step 3
        assert all(x["process"] == i for x in r)
    ref = [row["loss"] for row in reference_run.history]
    np.testing.assert_allclose([x["loss"] for x in rows[0]], ref, rtol=2e-6)
    np.testing.assert_array_equal([x["loss"] for x in rows[0]], [x["loss"] for x in rows[1]])

    ckdir = tmp_path / "checkpoints"
    with Checkpointer(ckdir) as ck:
        assert ck.all_steps() == [3, 6]
    for step in (3, 6):
        for i in range(2):  # each process saved its own data-iterator position
            saved = json.loads((ckdir / str(step) / "data" / f"process_{i}-of-2.json").read_text())
            assert saved == {"json": {"index": step}}
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, STEPS + 1))  # process 0 only
