"""`infinity-jax train` end to end on a tiny shapes dataset: data -> frozen VAE + T5 -> transformer
-> checkpoints, metrics and final.json; rerunning resumes instead of starting over."""

import json
import os

import jax
import pytest

from infinity_jax import commands, config_util, runs
from infinity_jax.commands import training_args
from infinity_jax.data import sources
from infinity_jax.train import trainer


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    sources.prepare("shapes", str(out), num_examples=32, image_size=32)
    return str(out)


def test_train_command_trains_resumes_and_reports(shapes_data, tmp_path, monkeypatch, capsys):
    # no extension: the export below needs the official architecture
    overrides = [f"data.path={shapes_data!r}", "train.total_steps=4", "checkpoint.every=2", "model.extension=''"]
    cfg = config_util.load_config("shapes:tiny", overrides)
    # the command itself, with a relative --workdir (orbax refuses relative paths: the command absolutises it)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", "shapes:tiny", "--workdir", "run"] + [f"--config.{o}" for o in overrides]
    assert commands.main(argv) == 0
    run = tmp_path / "run"
    with open(run / "final.json") as f:
        final = json.load(f)
    assert final["step"] == 4 and final["start_step"] == 0 and final["stopped"] == "done"
    assert 0.3 < final["val_loss"] < 1.0 and 0.3 < final["train_loss"] < 1.0  # bit CE near log 2 at the start
    assert 0.3 < final["val_loss_other_text"] < 1.0 and final["val_loss_other_text"] != final["val_loss"]
    assert final["params"] > 0 and final["flops_total"] > 0 and final["tokens_total"] == 85 * 8 * 4  # scales 1,2,4,8
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    logged = {k for r in rows for k in r}
    assert {"loss", "bit_acc", "bit_acc/s00", "bit_acc/s03", "grad_norm", "lr", "images_per_s"} <= logged
    assert sorted(os.listdir(run / "checkpoints"))[-1] == "4"
    assert sorted(os.listdir(run / "samples")) == ["step_0000002.png", "step_0000004.png"]  # sample.every=2
    # export-torch: the run's transformer as the official state dict (same keys/shapes, exact values)
    import numpy as np

    from infinity_jax.convert import export, torch_io
    from infinity_jax.convert import infinity as conv

    summary = export.export_run(str(run), str(run / "gpt.npz"))
    sd = torch_io.load_state_dict(str(run / "gpt.npz"))
    expected = conv.expected_state_dict_shapes(cfg)
    assert summary["transformer"]["keys"] == len(sd) == len(expected)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v) for k, v in expected.items()}
    from infinity_jax.runs import load_weights

    params, _ = load_weights(str(run), "transformer")
    back = conv.torch_to_params(sd, cfg)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="random VAE"):
        export.export_run(str(run), str(run / "g2.npz"), vae_out=str(run / "vae.npz"))
    # the same command again resumes at step 4, has nothing left to do, and keeps the summary's train loss
    again = trainer.run(cfg, str(run))
    assert again["start_step"] == again["step"] == 4 and again["train_loss"] == final["train_loss"]
    with open(run / "final.json") as f:
        assert json.load(f)["train_loss"] == final["train_loss"]
    assert [json.loads(line) for line in open(run / "metrics.jsonl")] == rows
    # resuming it with another lr schedule (more steps) or another model shape: one line each, before any set-up
    argv = ["train", "--config", "shapes:tiny", "--workdir", "run"] + [f"--config.{o}" for o in overrides]
    capsys.readouterr()
    for extra, message in (
        (["--config.train.total_steps=6"], "train.total_steps=6, but the run in"),
        (["--config.model.embed_dim=32"], "checkpoints/4: 'params/"),
    ):
        assert commands.main(argv + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("infinity-jax train: error: ") and message in err and err.count("\n") == 1, err


def test_mismatched_vae_bits_raise_a_clear_error(shapes_data, tmp_path):
    cfg = config_util.load_config("shapes:tiny", [f"data.path={shapes_data!r}", "model.codebook_dim=24"])
    with pytest.raises(ValueError, match="codebook_dim"):
        trainer.run(cfg, str(tmp_path))


def test_workdir_is_made_absolute_at_the_command_line_urls_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--config", "shapes:tiny", "--workdir", "runs/a", "--config.seed=1"]
    args, rest = training_args.parse_args(argv, "p", "doc")
    assert args.workdir == str(tmp_path / "runs" / "a") and rest == ["--config.seed=1"]
    args, _ = training_args.parse_args(["--config", "shapes:tiny", "--workdir", "gs://bucket/run"], "p", "doc")
    assert args.workdir == "gs://bucket/run"


def test_a_run_stopped_by_sigterm_exits_75_not_0(tmp_path, capsys):
    """The loop saves and returns stopped='preempted' on SIGTERM (test_train_loop.py); the commands then
    exit EX_TEMPFAIL and say how to resume, so a retry loop or scheduler does not take it for finished."""
    argv = ["--config", "shapes:tiny", "--workdir", str(tmp_path)]
    preempted = lambda cfg, workdir: {"step": 4, "stopped": "preempted"}  # noqa: E731
    assert training_args.run_command(argv, "infinity-jax train", "doc", preempted) == runs.EXIT_PREEMPTED == 75
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at step 4 of 6" in err and "rerun the same command to resume" in err
    done = lambda cfg, workdir: {"step": 6, "stopped": "done"}  # noqa: E731
    assert training_args.run_command(argv, "infinity-jax train", "doc", done) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "configs/no_such.py"], "config 'configs/no_such.py' not found"),
        (["--config", "shapes:tiny", "--config.train.nokey=3"], "no field 'nokey' in train"),
        (["--config", "shapes:tiny", "--config.train.total_steps=abc"], "train.total_steps is int"),
    ],
)
def test_a_bad_config_or_override_is_a_usage_error_not_a_traceback(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(trainer, "run", lambda cfg, workdir: pytest.fail("ran with a bad config"))
    for command in ("train", "train-tokenizer"):
        assert commands.main([command] + argv + ["--workdir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"infinity-jax {command}: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.global_batch=0", "train.global_batch=0: expected an integer >= 1"),
        ("parallel.rules='xyz'", "parallel.rules='xyz': expected one of ['dp', 'fsdp', 'fsdp_tp']"),
        ("train.grad_accum=3", "train.global_batch=8: expected a multiple of process_count (1) x train.grad_accum (3)"),
    ],
)
def test_bad_training_settings_are_one_line_before_any_set_up(tmp_path, capsys, monkeypatch, override, message):
    """Checked before the VAE, text encoder or data are built (they took ~12 s to a traceback before)."""
    monkeypatch.setattr(trainer, "build_vae", lambda cfg: pytest.fail("built the VAE with a bad config"))
    for command in ("train", "train-tokenizer"):
        config = "shapes:tiny" if command == "train" else "tokenizer_shapes:tiny"
        argv = [command, "--config", config, "--workdir", str(tmp_path), f"--config.{override}"]
        assert commands.main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"infinity-jax {command}: error: {message}\n", err
    assert not os.listdir(tmp_path)


def test_shapes_batch_argument_keeps_the_peak_lr():
    default, b16 = config_util.load_config("shapes"), config_util.load_config("shapes:batch=16,layers=4")
    assert (default.train.global_batch, b16.train.global_batch, b16.model.depth) == (32, 16, 4)
    for c in (default, b16):  # peak lr = base_lr * global_batch / 256; the same held-out examples
        assert c.optim.base_lr * c.train.global_batch / 256 == pytest.approx(3e-3)
        assert c.eval.val_batches * c.train.global_batch == 256
    with pytest.raises(ValueError, match="shapes batch=0: expected a positive"):
        config_util.load_config("shapes:batch=0")
