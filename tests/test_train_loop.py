"""The training loop on 8 simulated CPU devices with a stand-in model (tests/train_helpers.py):
sharding by config, resume/kill/preemption, NaN stop, metrics files, hooks, throughput maths."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from infinity_jax.checkpoint import Checkpointer
from infinity_jax.train import distributed, loop, metrics
from tests.train_helpers import EMBED, MLP, STEPS, VOCAB, TokenData, make_fns, run, xla_flags
from tests.train_helpers import compile_cache, reference_run  # noqa: F401 (fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def losses(result):
    return np.array([row["loss"] for row in result.history])


@pytest.fixture(scope="module")
def sharded_runs(compile_cache, tmp_path_factory):
    """dp (8-way data), fsdp (data 2 x fsdp 4, 2 micro-batches of gradient accumulation) and
    fsdp_tp (2 x 2 x 2, with EMA) runs. The dp run checkpoints every 2 steps, logs tokens/s and
    runs a hook: it is the uninterrupted run the resume tests compare against."""
    calls = []

    def hook(step, state, writer):
        calls.append(step)
        return {"hook_value": float(step) * 10}

    out = {}
    out["dp"] = run(tmp_path_factory.mktemp("dp"), every=2, tokens_per_example=8,
                    hooks=[loop.Hook(hook, every=2, name="probe")])
    out["dp"].hook_calls = calls
    out["fsdp"] = run(tmp_path_factory.mktemp("fsdp"), rules="fsdp", fsdp=4, grad_accum=2)
    out["fsdp_tp"] = run(tmp_path_factory.mktemp("fsdp_tp"), rules="fsdp_tp", fsdp=2, tensor=2, ema=0.9,
                         loss_fn=_loss_with_frozen, frozen=FROZEN)
    return out


# frozen arrays (as a VAE or text encoder would be): sharded by their logical names, never trained
FROZEN = {"gain": np.ones((VOCAB,), np.float32),
          "proj": nn.LogicallyPartitioned(np.arange(EMBED * MLP, dtype=np.float32).reshape(EMBED, MLP),
                                          ("embed", "mlp"))}


def _loss_with_frozen(params, batch, rng, frozen):
    loss, m = make_fns()[1](params, batch, rng)
    return loss * frozen["gain"].mean() + 0.0 * frozen["proj"].sum(), m  # == loss


@needs8
def test_dp_fsdp_and_fsdp_tp_follow_the_single_device_loss_curve(reference_run, sharded_runs):
    """Also: the fsdp run's 2 micro-batches per update give the same updates as one big batch."""
    ref = losses(reference_run)
    assert len(ref) == STEPS and ref[-1] < ref[0]
    for name, res in sharded_runs.items():
        np.testing.assert_allclose(losses(res), ref, rtol=2e-6, err_msg=name)
        np.testing.assert_allclose([r["grad_norm"] for r in res.history],
                                   [r["grad_norm"] for r in reference_run.history], rtol=1e-5, err_msg=name)


@needs8
def test_params_and_optimizer_state_are_sharded_as_the_rules_say(sharded_runs):
    def specs(res):
        st = res.state
        adam = st.opt_state[1][0]  # chain(clip, adamw) -> adamw = (ScaleByAdamState, ...)
        return st.params, adam.mu, adam.nu, st.ema_params

    want = {  # param -> (dp, fsdp, fsdp_tp) spec; logical names in train_helpers.StandIn
        ("qkv", "kernel"): (P(None, None), P("fsdp", None), P("fsdp", "tensor")),      # (embed, heads)
        ("fc2", "kernel"): (P(None, None), P(None, "fsdp"), P("tensor", "fsdp")),      # (mlp, embed)
        ("fc1", "bias"): (P(None), P(None), P("tensor")),                              # (mlp,)
        ("embedding",): (P(None, None), P(None, "fsdp"), P(None, "fsdp")),             # (vocab, embed)
        ("ln", "scale"): (P(None), P(None), P(None)),                                  # (norm,)
    }
    for i, name in enumerate(("dp", "fsdp", "fsdp_tp")):
        trees = [t for t in specs(sharded_runs[name]) if t is not None]
        assert len(trees) == (4 if name == "fsdp_tp" else 3)  # EMA only in the fsdp_tp run
        for path, spec in want.items():
            for tree in trees:
                leaf = tree
                for k in path:
                    leaf = leaf[k]
                assert leaf.sharding.spec == spec[i], (name, path, leaf.sharding.spec)
    st = sharded_runs["fsdp_tp"].state
    assert st.params["qkv"]["kernel"].addressable_shards[0].data.shape == (8, 24)  # (16, 48) / (fsdp 2, tensor 2)
    assert st.step.sharding.spec == P() and int(st.step) == STEPS
    assert st.frozen["proj"].sharding.spec == P("fsdp", "tensor") and st.frozen["gain"].sharding.spec == P()
    np.testing.assert_array_equal(st.frozen["proj"], FROZEN["proj"].value)  # untouched by the updates
    assert sharded_runs["dp"].state.frozen is None


@needs8
def test_metrics_jsonl_tensorboard_and_hooks(sharded_runs, reference_run):
    res = sharded_runs["dp"]
    assert res.hook_calls == [2, 4, 6]
    rows = [r for r in metrics.read_jsonl(os.path.join(res.workdir, "metrics.jsonl")) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    np.testing.assert_array_equal([r["loss"] for r in rows], losses(res))
    for key in ("grad_norm", "lr", "loss_first_half", "step_time_s", "images_per_s", "tokens_per_s"):
        assert all(np.isfinite(r[key]) for r in rows), key
    r = rows[2]
    assert r["tokens_per_s"] == pytest.approx(r["images_per_s"] * 8)
    assert r["images_per_s"] == pytest.approx(16 / r["step_time_s"])
    # lr: warm-up step 0 -> 0.005 x peak, then the peak (0.05 * 16 / 256), then linear decay
    peak = 0.05 * 16 / 256
    assert rows[0]["lr"] == pytest.approx(0.005 * peak) and rows[1]["lr"] == pytest.approx(peak)
    assert "mfu" not in r  # CPU: peak FLOP/s unknown
    hooked = [r for r in metrics.read_jsonl(os.path.join(res.workdir, "metrics.jsonl")) if "hook_value" in r]
    assert [(r["step"], r["hook_value"]) for r in hooked] == [(2, 20.0), (4, 40.0), (6, 60.0)]
    tb_dir = os.path.join(res.workdir, "tb")
    (event_file,) = os.listdir(tb_dir)
    events = metrics.read_events(os.path.join(tb_dir, event_file))
    tb_loss = [(s, v["loss"]) for s, v in events if "loss" in v]
    assert [s for s, _ in tb_loss] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([v for _, v in tb_loss], losses(res), rtol=1e-7)  # float32 in the event


@needs8
def test_kill_9_mid_save_keeps_last_complete_step_and_resume_is_exact(sharded_runs, tmp_path, compile_cache):
    """A worker (same config as the dp run) is killed inside its step-4 save; the restart
    restores step 2 and reproduces the uninterrupted run's losses at steps 3..6 bit for bit."""
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "tests.train_helpers", str(tmp_path), "--steps", str(STEPS),
                             "--every", "2", "--hang-at-save", "4"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = tmp_path / "MID_SAVE"
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        proc.kill()
        pytest.fail(f"worker never reached the step-4 save:\n{proc.communicate()[0][-3000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    ckdir = tmp_path / "checkpoints"
    leftovers = [p.name for p in ckdir.iterdir() if p.name.startswith("4")]
    assert leftovers and all("tmp" in n for n in leftovers), leftovers  # a half-written step 4
    with Checkpointer(ckdir) as ck:
        assert ck.latest_step() == 2

    res = run(tmp_path, every=2)
    assert res.start_step == 2 and [r["step"] for r in res.history] == [3, 4, 5, 6]
    np.testing.assert_array_equal(losses(res), losses(sharded_runs["dp"])[2:])
    with Checkpointer(ckdir) as ck:
        assert ck.all_steps() == [4, 6]  # keep = 2; the stale temporary folder is gone
    assert not [p for p in ckdir.iterdir() if "tmp" in p.name]


@needs8
def test_sigterm_saves_and_returns_then_resume_is_exact(sharded_runs, tmp_path):
    def preempt(step, state, writer):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    res = run(tmp_path, every=100, hooks=[loop.Hook(preempt, every=1)])
    assert signal.getsignal(signal.SIGTERM) is before  # the loop's handler is removed again
    assert res.stopped == "preempted" and res.history[-1]["step"] == 4  # noticed at the next step boundary
    with Checkpointer(tmp_path / "checkpoints") as ck:
        assert ck.all_steps() == [4]
    assert json.loads((tmp_path / "checkpoints/4/data/process_0-of-1.json").read_text()) == {"json": {"index": 4}}
    res2 = run(tmp_path, every=100)
    assert res2.start_step == 4 and res2.stopped == "done"
    np.testing.assert_array_equal(losses(res2), losses(sharded_runs["dp"])[4:])


def test_time_limit_stops_saved_as_a_finished_run_and_resume_continues_exactly(sharded_runs, tmp_path):
    res = run(tmp_path, every=100, time_limit_s=1e-6)
    assert res.stopped == "time_limit" and res.stopped in loop.FINISHED
    assert res.history[-1]["step"] == 1  # the first logging step past the limit (log_every 1)
    with Checkpointer(tmp_path / "checkpoints") as ck:
        assert ck.all_steps() == [1]
    res2 = run(tmp_path, every=100)  # no limit: resumes and runs to total_steps
    assert res2.start_step == 1 and res2.stopped == "done"
    np.testing.assert_array_equal(losses(res2), losses(sharded_runs["dp"])[1:])


class _Poisoned(TokenData):
    """Batch 2 (step 3) has an out-of-range target: its cross-entropy is NaN (same program as clean data)."""

    def __next__(self):
        i = self.index
        batch = super().__next__()
        if i == 2:
            batch["targets"][0, 0] = 10_000
        return batch


def test_nan_loss_stops_at_its_step_and_saves_nothing_after_the_last_good_checkpoint(compile_cache, tmp_path):
    with pytest.raises(loop.NonFiniteLossError, match="at step 3") as err:
        run(tmp_path, n_devices=1, every=2, data=_Poisoned(16))
    assert err.value.step == 3 and err.value.last_checkpoint == 2
    with Checkpointer(tmp_path / "checkpoints") as ck:
        assert ck.all_steps() == [2]


def test_throughput_and_mfu_arithmetic():
    out = metrics.throughput(0.5, 256, tokens_per_example=521, flops_per_step=1e15, num_devices=8,
                             peak_per_device=989e12)
    assert out["images_per_s"] == 512 and out["tokens_per_s"] == 512 * 521
    assert out["mfu"] == pytest.approx(1e15 / 0.5 / (8 * 989e12))
    assert metrics.peak_flops_per_device("TPU v5 lite") == 197e12
    assert metrics.peak_flops_per_device("TPU v5") == 459e12
    assert metrics.peak_flops_per_device("TPU v4") == 275e12
    assert metrics.peak_flops_per_device("TPU v6 lite") == 918e12
    assert metrics.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert metrics.peak_flops_per_device("NVIDIA H200") == 989e12
    assert metrics.peak_flops_per_device("NVIDIA A100-SXM4-80GB") == 312e12
    assert metrics.peak_flops_per_device("cpu") is None


def test_event_file_crc_and_roundtrip(tmp_path):
    assert metrics.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    w = metrics.EventWriter(str(tmp_path))
    w.scalars(7, {"loss": 1.5, "lr": 3e-4})
    w.close()
    assert metrics.read_events(w.path) == [(7, {"loss": 1.5, "lr": pytest.approx(3e-4)})]


def test_single_process_initialize_is_a_no_op(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_NPROCS", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize_distributed() is False
    assert distributed.process_batch_slice(16) == (0, 16)
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize_distributed("127.0.0.1:1234", num_processes=2)
