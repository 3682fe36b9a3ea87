"""The training loop on 8 simulated CPU devices with a stand-in model (tests/train_helpers.py):
sharding by config, resume/kill/preemption, NaN stop, metrics files, hooks, throughput maths."""

import json
import os
import shutil
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
from infinity_jax.errors import UsageError
from infinity_jax.train import distributed, loop, metrics, optim
from tests import tb_events
from tests.train_helpers import (  # noqa: F401 (fixtures)
    EMBED,
    MLP,
    STEPS,
    VOCAB,
    TokenData,
    compile_cache,
    make_fns,
    reference_run,
    run,
    tiny_config,
    xla_flags,
)

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
    out["dp"] = run(
        tmp_path_factory.mktemp("dp"), every=2, tokens_per_example=8, hooks=[loop.Hook(hook, every=2, name="probe")]
    )
    out["dp"].hook_calls = calls
    out["fsdp"] = run(tmp_path_factory.mktemp("fsdp"), rules="fsdp", fsdp=4, grad_accum=2)
    out["fsdp_tp"] = run(
        tmp_path_factory.mktemp("fsdp_tp"),
        rules="fsdp_tp",
        fsdp=2,
        tensor=2,
        ema=0.9,
        loss_fn=_loss_with_frozen,
        frozen=FROZEN,
    )
    return out


# frozen arrays (as a VAE or text encoder would be): sharded by their logical names, never trained
FROZEN = {
    "gain": np.ones((VOCAB,), np.float32),
    "proj": nn.LogicallyPartitioned(np.arange(EMBED * MLP, dtype=np.float32).reshape(EMBED, MLP), ("embed", "mlp")),
}


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
        np.testing.assert_allclose(
            [r["grad_norm"] for r in res.history],
            [r["grad_norm"] for r in reference_run.history],
            rtol=1e-5,
            err_msg=name,
        )


@needs8
def test_params_and_optimizer_state_are_sharded_as_the_rules_say(sharded_runs):
    def specs(res):
        st = res.state
        adam = st.opt_state[1][0]  # chain(clip, adamw) -> adamw = (ScaleByAdamState, ...)
        return st.params, adam.mu, adam.nu, st.ema_params

    want = {  # param -> (dp, fsdp, fsdp_tp) spec; logical names in train_helpers.StandIn
        ("qkv", "kernel"): (P(None, None), P("fsdp", None), P("fsdp", "tensor")),  # (embed, heads)
        ("fc2", "kernel"): (P(None, None), P(None, "fsdp"), P("tensor", "fsdp")),  # (mlp, embed)
        ("fc1", "bias"): (P(None), P(None), P("tensor")),  # (mlp,)
        ("embedding",): (P(None, None), P(None, "fsdp"), P(None, "fsdp")),  # (vocab, embed)
        ("ln", "scale"): (P(None), P(None), P(None)),  # (norm,)
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
    events = tb_events.read_events(os.path.join(tb_dir, event_file))
    tb_loss = [(s, v["loss"]) for s, v in events if "loss" in v]
    assert [s for s, _ in tb_loss] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([v for _, v in tb_loss], losses(res), rtol=1e-7)  # float32 in the event


@needs8
def test_kill_9_mid_save_keeps_last_complete_step_and_resume_is_exact(sharded_runs, tmp_path, compile_cache):
    """A worker (same config as the dp run) is killed inside its step-4 save; the restart
    restores step 2 and reproduces the uninterrupted run's losses at steps 3..6 bit for bit."""
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.train_helpers",
            str(tmp_path),
            "--steps",
            str(STEPS),
            "--every",
            "2",
            "--hang-at-save",
            "4",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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


@needs8
def test_a_restart_keeps_one_metrics_row_per_step_the_lr_schedule_and_the_last_train_loss(sharded_runs, tmp_path):
    """A run that logged steps 5-6 but lost their checkpoint (killed before it completed) restarts at step 4: it
    says so (start_step), redoes 5-6 with the uninterrupted run's lr and losses, and metrics.jsonl holds each step
    once. Rerunning the finished run runs nothing and still reports its last train loss."""
    first = run(tmp_path, every=2)  # checkpoints at 4 and 6 (keep 2)
    assert first.start_step == 0 and first.train_loss == first.history[-1]["loss"]  # log_every 1: a 1-step window
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    res = run(tmp_path, every=2)
    assert res.start_step == 4 and [r["step"] for r in res.history] == [5, 6]
    ref = sharded_runs["dp"].history  # the same config, uninterrupted
    rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # 5 and 6 once, not twice
    for key in ("lr", "loss"):
        assert [r[key] for r in rows] == [r[key] for r in ref], key  # steps 1-4 from the first call, 5-6 redone
        assert [r[key] for r in res.history] == [r[key] for r in ref[4:]], key
    assert "compile_time_s" in rows[0] and "compile_time_s" in rows[4]  # in each call's first row, not a row of its own
    again = run(tmp_path, every=2)  # finished: nothing to run, the summary keeps the last loss
    assert again.start_step == 6 and again.history == [] and again.train_loss == res.train_loss == rows[-1]["loss"]
    assert metrics.read_jsonl(str(tmp_path / "metrics.jsonl")) == rows


@needs8
def test_resuming_with_another_lr_schedule_or_model_shape_is_refused_unless_rescheduled(sharded_runs, tmp_path):
    """A larger train.total_steps would bend the lr schedule of a resumed run (back up, for a finished one): refused
    in one line unless train.reschedule=True, which recomputes it for the new total. Params of another shape:
    refused naming the first one, by preflight (what the commands call before their slow set-up) as by the loop."""
    run(tmp_path, every=3)  # finished at step 6, checkpoints 3 and 6
    init_params, loss_fn = make_fns()

    def train(cfg, init=init_params):
        return loop.run_training(cfg, str(tmp_path), init_params=init, loss_fn=loss_fn, data=TokenData(16))

    cfg = tiny_config(8, every=3)
    with pytest.raises(
        UsageError,
        match=r"^train.total_steps=8, but the run in .* \(checkpoint at step 6\) has 6: "
        r"its lr schedule would change mid-run; .*--config.train.reschedule=True",
    ):
        train(cfg)
    cfg.optim.base_lr = 0.1
    with pytest.raises(UsageError, match=r"new train.total_steps, optim.base_lr, add"):
        loop.preflight(cfg, str(tmp_path), init_params)

    def wider(rng):  # one param of another shape (as after a model config change)
        params = dict(init_params(rng))
        params["head"] = dict(params["head"], bias=nn.LogicallyPartitioned(jax.numpy.zeros(VOCAB + 1), ("vocab",)))
        return params

    shape_error = r"checkpoints/6: 'params/head/bias' has shape \(32,\) there, the config's model gives \(33,\)"
    with pytest.raises(UsageError, match=shape_error):
        loop.preflight(tiny_config(STEPS, every=3), str(tmp_path), wider)
    with pytest.raises(UsageError, match=shape_error):
        train(tiny_config(STEPS, every=3), wider)

    cfg = tiny_config(8, every=3)
    cfg.train.reschedule = True
    res = train(cfg)
    assert res.start_step == 6 and [r["step"] for r in res.history] == [7, 8]
    lr8 = optim.lr_schedule(0.05 * 16 / 256, 8, 1, "lin0", warmup_init=0.005, final_frac=0.3)
    np.testing.assert_allclose([r["lr"] for r in res.history], [float(lr8(6)), float(lr8(7))], rtol=1e-6)
    assert res.history[0]["lr"] > sharded_runs["dp"].history[-1]["lr"]  # stretched: up from where 6 steps ended
    assert loop.preflight(cfg, str(tmp_path), init_params) == 8  # the checkpoint records the new schedule


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.total_steps", 0, "train.total_steps=0: expected an integer >= 1"),
        ("train.global_batch", 0, "train.global_batch=0: expected an integer >= 1"),
        (
            "train.grad_accum",
            3,
            "train.global_batch=16: expected a multiple of process_count (1) x train.grad_accum (3)",
        ),
        ("train.global_batch", 12, "train.global_batch=12: expected a multiple of the mesh's data x fsdp = 8 devices"),
        (
            "train.compute_dtype",
            "fp16",
            "train.compute_dtype='fp16': expected one of ('float32', 'bfloat16', 'float16')",
        ),
        ("train.log_every", 0, "train.log_every=0: expected an integer >= 1"),
        ("train.time_limit_s", -1.0, "train.time_limit_s=-1.0: expected a number >= 0.0"),
        ("optim.schedule", "step", "optim.schedule='step': expected one of ('lin0', 'lin00', 'cos', 'const')"),
        ("optim.warmup_steps", -2, "optim.warmup_steps=-2: expected an integer >= -1"),
        ("optim.b2", 1.0, "optim.b2=1.0: expected a number >= 0.0 and < 1.0"),
        ("optim.base_lr", float("nan"), "optim.base_lr=nan: expected a number >= 0.0"),
        ("parallel.rules", "xyz", "parallel.rules='xyz': expected one of ['dp', 'fsdp', 'fsdp_tp']"),
        ("parallel.fsdp", 3, "parallel.fsdp=3 x parallel.tensor=1: expected a divisor of the 8 devices"),
        ("parallel.data", 2, "parallel.data=2 x fsdp=1 x tensor=1 = 2: expected the 8 devices"),
        ("checkpoint.keep", 0, "checkpoint.keep=0: expected an integer >= 1"),
    ],
)
@needs8
def test_bad_training_settings_are_one_line_usage_errors_before_anything_is_built(tmp_path, key, value, message):
    cfg = tiny_config(STEPS)
    section, name = key.split(".")
    cfg[section][name] = value

    def init_params(rng):
        pytest.fail("built the model with a bad config")

    with pytest.raises(UsageError) as err:
        loop.run_training(cfg, str(tmp_path), init_params=init_params, loss_fn=make_fns()[1], data=TokenData(16))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value) and not os.listdir(tmp_path)  # nothing written either


def test_metrics_writer_keeps_the_rows_up_to_the_start_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in range(1, 5)) + '{"step": 5, "lo')
    w = metrics.MetricsWriter(str(tmp_path), enabled=True, tensorboard=False, start_step=3)
    assert w.last("loss") == 3.0 and w.last("lr") is None
    w.write(4, {"loss": 0.5})
    w.close()
    assert [(r["step"], r["loss"]) for r in metrics.read_jsonl(str(path))] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 0.5)]
    metrics.MetricsWriter(str(tmp_path), enabled=True, tensorboard=False, start_step=0).close()  # a fresh run
    assert path.read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # rewritten in place (no temporary left)


def test_throughput_and_mfu_arithmetic():
    out = metrics.throughput(
        0.5, 256, tokens_per_example=521, flops_per_step=1e15, num_devices=8, peak_per_device=989e12
    )
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
    assert metrics.peak_flops_per_device("NVIDIA H200", "float32") == 67e12  # the sampler bench's f32 rows
    assert metrics.peak_flops_per_device("NVIDIA H200", "float16") is None


def test_single_process_initialize_is_a_no_op(monkeypatch):
    for var in (
        "JAX_COORDINATOR_ADDRESS",
        "SLURM_NTASKS",
        "SLURM_NPROCS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
        "MEGASCALE_COORDINATOR_ADDRESS",
    ):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize_distributed() is False
    assert distributed.process_batch_slice(16) == (0, 16)
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize_distributed("127.0.0.1:1234", num_processes=2)
