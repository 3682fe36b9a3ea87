"""`infinity-jax train` itself under preemption: the real command (`python -m infinity_jax train --config
configs/shapes.py:tiny`: grain data pipeline with its iterator state in the checkpoints, frozen random BSQ-VAE and
byte-level T5, the data workers of the config) killed with SIGKILL mid-step, during a checkpoint write and at
start-up, stopped by SIGTERM (exit status 75), and as two JAX processes stopped and restarted; each time a rerun of
the same command ends with exactly the metrics (every per-step loss, grad norm, lr, bit accuracy) and final
losses of an uninterrupted run.

The kill moment is picked by watching the run's files from the test (metrics.jsonl rows, checkpoints/<step> and
orbax's checkpoints/<step>.orbax-checkpoint-tmp): once they show the wanted moment the process is frozen with
SIGSTOP, the files are read again, and only if they still show that moment is it killed (else SIGCONT and wait for
the next chance). So each test kills exactly in the situation it names, whatever the machine's speed; only the step
it happens at may vary (e.g. 4 or 5), and the assertions follow what was on disk when it was killed.

8 steps of batch 8 on 32 examples (two epochs), checkpoints at 3, 6 and 8 (keep 2, synchronous as the tiny config
has them), a row per step; the sample grids are off (sample.every=0: they read the state, never change it, and
cost a sampler compile per run). One XLA cache for the module's processes: only the first run compiles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.train_helpers import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 8, 3  # checkpoints at steps 3, 6 and 8
CHECKPOINTS = [6, 8]  # what a finished run keeps (checkpoint.keep=2)
RUN_TIMEOUT_S = 240  # one run of the command, on a loaded 2-core machine
# per-row metrics that are timings, not results (the first row of each call also has compile_time_s)
TIMINGS = {"step_time_s", "images_per_s", "tokens_per_s", "compile_time_s", "mfu", "mfu_flops_from_model"}
DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# ------------------------------------------------------------------ running the command
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny shapes dataset and an XLA cache shared by the module's processes."""
    from infinity_jax.data import sources

    root = tmp_path_factory.mktemp("preemption")
    data = sources.prepare("shapes", str(root / "data"), num_examples=32, image_size=32, progress=False)
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(
        XLA_FLAGS=xla_flags(),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return {"data": data, "env": env}


def command(setup, workdir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "infinity_jax",
        "train",
        "--config",
        "configs/shapes.py:tiny",
        "--workdir",
        str(workdir),
        f"--config.data.path={setup['data']!r}",
        f"--config.train.total_steps={STEPS}",
        f"--config.checkpoint.every={EVERY}",
        "--config.sample.every=0",
    ]


class Run:
    """One launch of the command as `n` processes (n > 1: jax.distributed on localhost, gloo CPU collectives,
    one CPU device each); their output goes to files (a pipe nobody reads could stall them)."""

    _launches = 0

    def __init__(self, setup, workdir, n: int = 1):
        Run._launches += 1
        self.workdir, self.procs, self.logs = str(workdir), [], []
        port = _free_port()
        for i in range(n):
            env = dict(setup["env"])
            if n > 1:
                env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
            log = os.path.join(os.path.dirname(self.workdir), f"{os.path.basename(self.workdir)}.{Run._launches}.{i}")
            out, err = open(log + ".out", "w"), open(log + ".err", "w")
            self.procs.append(subprocess.Popen(command(setup, workdir), cwd=REPO, env=env, stdout=out, stderr=err))
            out.close()
            err.close()
            self.logs.append(log)

    def signal(self, sig):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)

    def wait(self, timeout=RUN_TIMEOUT_S) -> list[int]:
        deadline = time.time() + timeout
        try:
            for p in self.procs:
                p.wait(max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the command ran past {timeout} s\n{self.tail()}")
        return [p.returncode for p in self.procs]

    def kill(self):
        self.signal(signal.SIGKILL)
        for p in self.procs:
            p.wait(30)

    def stdout(self, i=0) -> str:
        with open(self.logs[i] + ".out") as f:
            return f.read()

    def stderr(self, i=0) -> str:
        with open(self.logs[i] + ".err") as f:
            return f.read()

    def summary(self, i=0) -> dict:
        """The JSON line the command prints at the end (every process prints it)."""
        (line,) = [x for x in self.stdout(i).splitlines() if x.startswith("{")]
        return json.loads(line)

    def tail(self) -> str:
        return "\n".join(
            f"--- process {i} (rc {p.returncode}):\n{self.stderr(i)[-3000:]}{self.stdout(i)[-1000:]}"
            for i, p in enumerate(self.procs)
        )

    def finish(self) -> dict:
        """Waits for a run that should complete; its final.json."""
        rcs = self.wait()
        assert rcs == [0] * len(self.procs), self.tail()
        with open(os.path.join(self.workdir, "final.json")) as f:
            return json.load(f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Disk:
    """What a run has on disk: its logged steps (complete metrics.jsonl lines), complete checkpoints, and
    orbax's temporary folders (a save in progress, or left by a killed one)."""

    metrics_file: bool
    logged: list[int]
    done: list[int]
    tmp: list[str]

    @property
    def last_logged(self) -> int:
        return self.logged[-1] if self.logged else 0

    @property
    def last_checkpoint(self) -> int:
        return self.done[-1] if self.done else 0

    def saving(self) -> list[int]:
        """Steps being saved: a temporary folder and no complete checkpoint of that step."""
        steps = [int(t.split(".")[0]) for t in self.tmp if t.split(".")[0].isdigit()]
        return [s for s in steps if s not in self.done]


def disk(workdir) -> Disk:
    path = os.path.join(workdir, "metrics.jsonl")
    logged = []
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        for line in text.split("\n")[:-1]:  # complete lines only
            if line.strip():
                logged.append(json.loads(line)["step"])
    try:
        names = os.listdir(os.path.join(workdir, "checkpoints"))
    except FileNotFoundError:
        names = []
    return Disk(
        os.path.exists(path),
        logged,
        sorted(int(n) for n in names if n.isdigit()),
        sorted(n for n in names if not n.isdigit()),
    )


def freeze_when(run: Run, want, what: str, timeout=RUN_TIMEOUT_S) -> Disk:
    """Polls the run's files until want(Disk); then SIGSTOPs its processes and returns the files as they are
    once stopped if want() still holds of them (else lets them go on and waits for the next chance)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in run.procs):
            run.kill()
            pytest.fail(f"the run ended before {what}: {disk(run.workdir)}\n{run.tail()}")
        if want(disk(run.workdir)):
            run.signal(signal.SIGSTOP)
            time.sleep(0.05)  # the signal is asynchronous: let every thread stop
            now = disk(run.workdir)
            if want(now):
                return now
            run.signal(signal.SIGCONT)
        time.sleep(0.003)
    run.kill()
    pytest.fail(f"no {what} within {timeout} s: {disk(run.workdir)}\n{run.tail()}")


def kill_9(run: Run):
    run.signal(signal.SIGKILL)  # (also ends a SIGSTOPped process)
    assert run.wait(60) == [-signal.SIGKILL] * len(run.procs)


def mid_step(d: Disk) -> bool:
    """A step after 3 logged past the last complete checkpoint (so one written by the run), no save under way."""
    return d.last_logged > max(d.last_checkpoint, 3) and not d.tmp


# ------------------------------------------------------------------ comparing with the uninterrupted run
def rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def results(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMINGS}


def assert_same_as(workdir, final: dict, reference: dict, start_step: int):
    """Every step logged once with the reference run's values, to the last bit; final.json's losses the same."""
    got, want = rows(workdir), reference["rows"]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert {"loss", "grad_norm", "lr", "bit_acc"} <= set(got[-1])
    for g, w in zip(got, want):
        assert results(g) == results(w), f"step {g['step']}"
    ref = reference["final"]
    assert final["step"] == STEPS and final["stopped"] == "done" and final["start_step"] == start_step
    for key in ("train_loss", "val_loss", "val_loss_other_text", "tokens_total"):
        assert final[key] == ref[key], key
    d = disk(workdir)
    assert d.done == CHECKPOINTS and not d.tmp, d  # a killed save's temporary folder is gone too


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The command run uninterrupted, one process."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    final = Run(setup, workdir).finish()
    out = {"rows": rows(workdir), "final": final}
    assert [r["step"] for r in out["rows"]] == list(range(1, STEPS + 1)) and final["start_step"] == 0
    assert disk(workdir).done == CHECKPOINTS
    losses = [r["loss"] for r in out["rows"]]
    assert 0.3 < losses[-1] < losses[0] < 1.0  # bit cross-entropy near log 2, going down
    return out


# ------------------------------------------------------------------ the tests
@pytest.mark.slow
def test_kill_9_mid_step_then_rerun(setup, reference, tmp_path):
    """SIGKILL after step >= 4 is logged and before the next checkpoint: the rerun restores the last one (step 3,
    the grain iterator's state with it), drops the rows of the steps it redoes and logs each once."""
    workdir = tmp_path / "run"
    run = Run(setup, workdir)
    at_kill = freeze_when(run, mid_step, "step logged past its last checkpoint")
    kill_9(run)
    print("killed at", at_kill)
    assert at_kill.last_logged > at_kill.last_checkpoint >= 3, at_kill
    final = Run(setup, workdir).finish()
    assert_same_as(workdir, final, reference, start_step=at_kill.last_checkpoint)


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_rerun(setup, reference, tmp_path):
    """SIGKILL while orbax writes the step-6 checkpoint (or step 8's, if 6 was missed): its temporary folder stays,
    the rerun resumes from the checkpoint before it and removes the folder."""
    workdir = tmp_path / "run"
    run = Run(setup, workdir)
    at_kill = freeze_when(run, lambda d: any(s >= 6 for s in d.saving()), "checkpoint write of step 6 or 8")
    kill_9(run)
    print("killed at", at_kill)
    (step,) = at_kill.saving()
    after = disk(workdir)
    assert after.done == at_kill.done and step not in after.done and step > after.last_checkpoint, after
    assert any(t.startswith(f"{step}.") for t in after.tmp), after  # the half-written checkpoint
    final = Run(setup, workdir).finish()
    assert_same_as(workdir, final, reference, start_step=at_kill.last_checkpoint)


@pytest.mark.slow
def test_kill_9_at_start_up_then_rerun(setup, reference, tmp_path):
    """SIGKILL once the run has set up (checkpoint folder and metrics file made) but before its first step
    (compiling it): the rerun starts from step 0 over what the killed one left."""
    workdir = tmp_path / "run"
    run = Run(setup, workdir)
    at_kill = freeze_when(run, lambda d: d.metrics_file and not d.logged, "start-up")
    kill_9(run)
    print("killed at", at_kill)
    assert at_kill.logged == [] and at_kill.done == [] and at_kill.tmp == [], at_kill
    assert os.path.isdir(workdir / "checkpoints")
    final = Run(setup, workdir).finish()
    assert_same_as(workdir, final, reference, start_step=0)


@pytest.mark.slow
def test_sigterm_exits_75_with_a_checkpoint_at_the_stop_step_then_rerun(setup, reference, tmp_path):
    """SIGTERM once step 4 is logged: the run saves the step it stops at (waiting for the write), writes no
    final.json, exits 75 and says how to resume; the rerun starts there."""
    workdir = tmp_path / "run"
    run = Run(setup, workdir)
    freeze_when(run, lambda d: d.last_logged >= 4, "step 4")
    run.signal(signal.SIGTERM)
    run.signal(signal.SIGCONT)
    assert run.wait() == [75], run.tail()
    summary = run.summary()
    stop = summary["step"]
    print("SIGTERM: stopped at", stop, disk(workdir))
    assert summary["stopped"] == "preempted" and 4 <= stop < STEPS, summary
    assert f"stopped by SIGTERM at step {stop} of {STEPS}" in run.stderr()
    d = disk(workdir)
    assert d.last_checkpoint == stop and not d.tmp and d.last_logged == stop, d  # saved (waited for) at the stop
    assert not os.path.exists(workdir / "final.json")  # not a finished run
    final = Run(setup, workdir).finish()
    assert_same_as(workdir, final, reference, start_step=stop)


@pytest.mark.slow
def test_two_processes_stopped_and_restarted_as_processes(setup, tmp_path):
    """Two JAX processes (one CPU device each, gloo collectives, each reading its own shard of the data): SIGTERM
    to both -> both stop at the same step, save it (each its own iterator state) and exit 75; the two restarted,
    then SIGKILLed mid-step; restarted again -> the uninterrupted two-process run's metrics, exactly."""
    ref_dir = tmp_path / "reference"
    ref = {"final": Run(setup, ref_dir, n=2).finish(), "rows": rows(ref_dir)}
    assert ref["final"]["start_step"] == 0 and [r["step"] for r in ref["rows"]] == list(range(1, STEPS + 1))
    assert disk(ref_dir).done == CHECKPOINTS

    workdir = tmp_path / "run"
    run = Run(setup, workdir, n=2)
    freeze_when(run, lambda d: d.last_logged >= 1, "step 1")  # stops at a step without a checkpoint of its own
    run.signal(signal.SIGTERM)
    run.signal(signal.SIGCONT)
    assert run.wait() == [75, 75], run.tail()
    stop = run.summary(0)["step"]
    print("SIGTERM: stopped at", stop, disk(workdir))
    assert run.summary(0)["stopped"] == run.summary(1)["stopped"] == "preempted", run.tail()
    assert run.summary(1)["step"] == stop and 1 <= stop <= 5, run.tail()  # room for the kill below
    for i in range(2):
        assert f"stopped by SIGTERM at step {stop} of {STEPS}" in run.stderr(i), run.tail()
    d = disk(workdir)
    assert d.last_checkpoint == stop and not d.tmp and d.last_logged == stop, d
    data_states = os.listdir(workdir / "checkpoints" / str(stop) / "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_states), data_states

    run = Run(setup, workdir, n=2)  # resumes at `stop`; both killed after a step past their last checkpoint (>= 3)
    at_kill = freeze_when(run, mid_step, "a step logged past the last checkpoint")
    kill_9(run)
    print("killed at", at_kill)
    assert at_kill.last_logged > at_kill.last_checkpoint >= 3, at_kill

    final = Run(setup, workdir, n=2).finish()
    assert_same_as(workdir, final, ref, start_step=at_kill.last_checkpoint)
