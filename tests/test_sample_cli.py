"""`infinity-jax sample` as a command (issue 29): an --out folder that is never silently mixed with old files
(refused unless --overwrite, then replaced whole and atomically), sampling settings from the run config's
`sample` section, --step and step folders, and errors that say what a wrong --checkpoint is.

Runs are tiny (configs/infinity.py:tiny, the tiny VAE, 32x32 images, two scales): a sampling call compiles
in a few seconds with LLVM -O0."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from infinity_jax import commands, config_util, fileio, generate, run_config, runs, sample
from infinity_jax.checkpoint import Checkpointer
from infinity_jax.commands import sample as sample_command
from infinity_jax.convert import import_torch
from infinity_jax.convert import vae as conv_vae
from infinity_jax.errors import UsageError
from infinity_jax.model.transformer import InfinityConfig, abstract_params
from infinity_jax.tokenizer import vae as vae_lib
from infinity_jax.train.state import TrainState

FAST = {"xla_backend_optimization_level": 0}  # LLVM -O0: the same numbers, CPU compiles ~2x faster
SCHEDULE = "1x1,2x2"  # 32x32 images from the tiny VAE (stride 16)
# what each saved step's config records in its `sample` section (step 5 is the latest)
TUNED = {
    3: {"cfg": 2.0, "tau": 0.5, "top_k": 900, "top_p": 0.9},
    5: {"every": 0, "cfg": 1.5, "tau": 0.25, "top_k": 1, "top_p": 0.8, "prompts": ["a red cube"]},
}


def _random(tree, seed: int) -> dict:
    """Every leaf of an abstract param tree as fp32 normal noise."""
    rng = np.random.default_rng(seed)
    return fileio.unflatten(
        {k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in fileio.flatten(nn.unbox(tree)).items()}
    )


def _save(folder, step: int, params, config: dict) -> None:
    """One orbax step as the training loop lays it out (params only, as import-torch writes them)."""
    state = TrainState(
        step=np.int32(step), params=params, opt_state={}, rng=np.asarray(jax.random.key_data(jax.random.key(0)))
    )
    with Checkpointer(os.path.join(folder, "checkpoints"), keep=5, async_save=False) as ck:
        ck.save(state, None, config, wait=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A transformer run with steps 3 and 5 (other params, other `sample` sections), its VAE beside it (named
    relative to the folder, as import-torch does), plus the step-5 params and the VAE as .npz files."""
    d = tmp_path_factory.mktemp("runs")
    cfg = run_config.load("tiny", module="infinity")
    vcfg = conv_vae.load_config("tiny")
    run = d / "run"
    run.mkdir()
    fileio.save_params(_random(vae_lib.abstract_params(vae_lib.from_config(vcfg)), 1), str(run / "vae_params.npz"))
    (run / "vae_config.json").write_text(config_util.to_json(vcfg))
    abstract = abstract_params(InfinityConfig.from_dict(cfg.model))
    for step, seed in ((3, 3), (5, 5)):
        config = {
            "model": cfg.model.to_dict(),
            "schedule": SCHEDULE,
            "data": {"h_div_w": 1.0},
            "vae": {"config": "vae_config.json", "overrides": [], "params": "vae_params.npz"},
            "text": import_torch.text_section("tiny-byt5", cfg.model),
            "sample": TUNED[step],
        }
        params = _random(abstract, seed)
        _save(run, step, params, config)
    fileio.save_params(params, str(d / "gpt.npz"))
    os.symlink(run / "vae_params.npz", d / "vae.npz")
    return run


def _sample(argv, out, *extra):
    return commands.main(
        [
            "sample",
            *argv,
            "--prompt",
            "a red cube",
            "--prompt",
            "two blue spheres",
            "--seed",
            "3",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ]
    )


def _stale(folder):
    """An older sampling's folder: same-named images, its grid, an evaluator's scores."""
    folder.mkdir()
    for name in ("0000_a_red_cube.png", "0007_old_prompt.png", "grid.png"):
        (folder / name).write_bytes(b"old")
    (folder / "samples.json").write_text('{"samples": []}')
    (folder / "scores.json").write_text("{}")
    return sorted(os.listdir(folder))


def _siblings(folder):
    return sorted(n for n in os.listdir(folder.parent) if n.startswith("."))


# ---------------------------------------------------------------- --out
def test_a_non_empty_out_is_refused_and_a_crash_under_overwrite_leaves_it_whole(run_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    before = _stale(out)
    assert _sample(["--checkpoint", str(run_dir)], out) == 2
    assert (
        f"sample: error: --out '{out}' exists and is not empty: pass --overwrite to replace it"
        in capsys.readouterr().err
    )
    assert sorted(os.listdir(out)) == before and (out / "grid.png").read_bytes() == b"old"

    def crash(*args, **kwargs):  # dies mid-run, after the temporary folder exists
        raise RuntimeError("killed")

    monkeypatch.setattr(sample.Sampler, "__call__", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _sample(["--checkpoint", str(run_dir)], out, "--overwrite")
    assert sorted(os.listdir(out)) == before and not _siblings(out)  # untouched, no temporary folder left


def test_overwrite_replaces_the_folder_whole(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    out = tmp_path / "out"
    _stale(out)
    assert _sample(["--checkpoint", str(run_dir)], out, "--overwrite") == 0
    summary = json.loads((out / "samples.json").read_text())
    files = [r["file"] for r in summary["samples"]]
    assert files == ["0000_a_red_cube.png", "0001_two_blue_spheres.png"]
    assert sorted(os.listdir(out)) == sorted(files + ["grid.png", "samples.json"])  # no stale image or scores
    assert (out / "0000_a_red_cube.png").read_bytes()[:4] == b"\x89PNG" and not _siblings(out)
    assert os.stat(out).st_mode & 0o777 == fileio.default_mode(folder=True)


def test_out_that_is_a_file_the_working_directory_or_holds_an_input_is_refused(run_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    assert _sample(["--checkpoint", str(run_dir)], tmp_path / "file") == 2
    assert f"--out '{tmp_path / 'file'}' is a file: expected a folder (new, or empty)" in capsys.readouterr().err
    assert _sample(["--checkpoint", str(run_dir)], run_dir.parent, "--overwrite") == 2
    assert f"holds --checkpoint '{run_dir}', which replacing the folder would delete" in capsys.readouterr().err
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert _sample(["--checkpoint", str(run_dir)], ".", "--overwrite") == 2
    assert "holds the working directory" in capsys.readouterr().err and (work / "notes.txt").exists()


def test_the_library_entry_point_returns_what_samples_json_holds(run_dir, tmp_path, monkeypatch, capsys):
    """generate.sample_to_folder (what the demo calls) is the command without its flags: the same folder and
    summary; bad input raises UsageError (printing nothing), a non-empty out without overwrite included."""
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    out = tmp_path / "lib"
    options = generate.SampleOptions(
        checkpoint=str(run_dir), out=str(out), prompts=["a red cube"], seed=3, progress=False
    )
    summary = generate.sample_to_folder(options)
    assert summary == json.loads((out / "samples.json").read_text())
    assert sorted(os.listdir(out)) == ["0000_a_red_cube.png", "samples.json"]  # one image: no grid
    assert summary["step"] == 5 and summary["samples"][0]["seed"] == 3
    capsys.readouterr()
    with pytest.raises(UsageError, match="exists and is not empty: pass --overwrite to replace it"):
        generate.sample_to_folder(options)
    with pytest.raises(UsageError, match="no prompts"):
        generate.sample_to_folder(generate.SampleOptions(checkpoint=str(run_dir), out=str(tmp_path / "none")))
    assert "error" not in capsys.readouterr().err


# ---------------------------------------------------------------- sampling settings
def test_sampling_defaults_come_from_the_run_config_and_flags_win(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    assert _sample(["--checkpoint", str(run_dir)], tmp_path / "tuned") == 0
    s = json.loads((tmp_path / "tuned" / "samples.json").read_text())
    assert s["step"] == 5 and s["cfg"] == [1.5, 1.5] and s["tau"] == pytest.approx([0.25, 0.25])
    assert (s["top_k"], s["top_p"]) == (1, 0.8) and set(s["settings_from"].values()) == {"run config"}
    assert "cfg 1.5 (run config), tau 0.25 (run config), top_k 1 (run config)" in capsys.readouterr().err

    # flags win; a config without a `sample` section (or with part of one) falls back to the official defaults
    def parse(argv):
        return sample_command.options(sample_command._parser().parse_args(argv))

    args = parse(["--checkpoint", "x", "--out", "y", "--tau", "0.7", "--top-p", "0"])
    values, source = generate.sampling_settings(args, ml_collections.ConfigDict({"sample": {"cfg": 2.0}}))
    assert values == {"cfg": 2.0, "tau": "0.7", "top_k": 900, "top_p": 0.0}
    assert source == {"cfg": "run config", "tau": "flag", "top_k": "default", "top_p": "flag"}
    values, source = generate.sampling_settings(parse(["--checkpoint", "x", "--out", "y"]), None)
    assert values == generate.SAMPLING_DEFAULTS and set(source.values()) == {"default"}
    assert (float(values["cfg"]), float(values["tau"]), values["top_k"], values["top_p"]) == (
        sample.DEFAULT_CFG,
        sample.DEFAULT_TAU,
        sample.DEFAULT_TOP_K,
        sample.DEFAULT_TOP_P,
    )
    # --help's copy of the official defaults (written out so that --help imports no jax) is the same
    assert {k: float(v) for k, v in sample_command.HELP_DEFAULTS.items()} == values
    with pytest.raises(UsageError, match=r"sample.top_k='many': expected an integer"):
        generate.sampling_settings(args, ml_collections.ConfigDict({"sample": {"top_k": "many"}}))


def test_the_flags_defaults_are_the_library_options_defaults():
    """`infinity-jax sample` with only the required flags samples as SampleOptions with only the required fields."""
    args = sample_command._parser().parse_args(["--checkpoint", "x", "--out", "y"])
    assert sample_command.options(args) == generate.SampleOptions(checkpoint="x", out="y")
    args = sample_command._parser().parse_args(
        ["--checkpoint", "x", "--out", "y", "--no-ema", "--no-progress", "--no-grid", "--prompt", "a", "--prompt", "b"]
    )
    got = sample_command.options(args)
    assert (got.ema, got.progress, got.grid, got.prompts) == (False, False, False, ["a", "b"])


def test_help_shows_every_default():
    text = " ".join(sample_command._parser().format_help().split())
    for want in (
        "(default: the run config's sample.cfg, else 3)",
        "sample.tau, else 1)",
        "sample.top_k, else 900)",
        "sample.top_p, else 0.97)",
        "image i gets seed + i (default: 0)",
        "prompts per program call (default: 4)",
        "--step STEP",
        "default: the latest",
        "--overwrite",
    ):
        assert want in text, want


# ---------------------------------------------------------------- --step and what --checkpoint is
def test_step_samples_an_older_checkpoint_with_its_own_config(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    assert _sample(["--checkpoint", str(run_dir), "--step", "3"], tmp_path / "s3") == 0
    s = json.loads((tmp_path / "s3" / "samples.json").read_text())
    assert s["step"] == 3 and s["cfg"] == [2.0, 2.0] and s["top_p"] == 0.9
    assert f"loaded params of step 3 from {run_dir / 'checkpoints'}" in capsys.readouterr().err
    # a step folder is that step (its params and config); the checkpoints folder is the run
    params, config = runs.load_weights(str(run_dir / "checkpoints" / "3"), "transformer")
    want, _ = runs.load_weights(str(run_dir), "transformer", step=3)
    latest, _ = runs.load_weights(str(run_dir), "transformer")
    assert config.sample.cfg == 2.0 and config.vae.params == str(run_dir / "vae_params.npz")
    np.testing.assert_array_equal(params["head"]["kernel"], want["head"]["kernel"])
    assert not np.array_equal(params["head"]["kernel"], latest["head"]["kernel"])
    assert runs.find_checkpoints(str(run_dir / "checkpoints" / "3")) == (str(run_dir / "checkpoints"), 3, str(run_dir))
    assert runs.find_checkpoints(str(run_dir / "checkpoints"), 5) == (str(run_dir / "checkpoints"), 5, str(run_dir))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--step", "4"], "--step 4: {ck} holds the complete steps [3, 5]: expected one of them"),
        (
            ["--checkpoint", "{ck}/3", "--step", "5"],
            "--step 5, but transformer checkpoint '{ck}/3' is the folder of step 3: "
            "expected the run folder with --step, or the step folder alone",
        ),
        (
            ["--checkpoint", "{gpt}", "--config", "tiny", "--step", "5"],
            "--step 5: transformer checkpoint '{gpt}' is a file, which holds one set of params",
        ),
    ],
    ids=["missing-step", "step-folder-with-another-step", "step-of-a-file"],
)
def test_step_errors_say_what_is_on_disk(run_dir, tmp_path, capsys, argv, message):
    ck, gpt = run_dir / "checkpoints", run_dir.parent / "gpt.npz"
    argv = [a.format(ck=ck, gpt=gpt) for a in argv]
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", str(run_dir)] + argv
    assert _sample(argv, tmp_path / "out") == 2
    assert message.format(ck=ck, gpt=gpt) in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_wrong_checkpoint_is_named_with_what_it_is_and_what_was_expected(run_dir, tmp_path, capsys):
    d = run_dir.parent
    tok = tmp_path / "tok"  # a tokenizer run: checkpoints of VAE params, a config with vae and loss, no model
    _save(tok, 2, {"encoder": {"w": np.ones(2, np.float32)}}, {"vae": {"codebook_dim": 8}, "loss": {}, "train": {}})
    fileio.save_params(fileio.load_params(str(d / "vae.npz")), str(tmp_path / "vae.msgpack"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    cases = [
        (
            [str(tok)],
            f"transformer checkpoint '{tok}' is a tokenizer run (`infinity-jax train-tokenizer`) whose config "
            "has no `model` section (sections: loss, train, vae): expected a transformer run",
        ),
        (
            [str(d / "vae.npz")],
            f"--checkpoint '{d / 'vae.npz'}' holds BSQ-VAE params (decoder, encoder), not a "
            "transformer's: pass it as --vae",
        ),
        ([str(d / "vae.npz"), "--config", "tiny"], "holds BSQ-VAE params (decoder, encoder), not a transformer's"),
        (
            [str(tmp_path / "vae.msgpack"), "--config", "tiny"],
            f"--checkpoint '{tmp_path / 'vae.msgpack'}' holds BSQ-VAE params (decoder, encoder)",
        ),
        (
            [str(d / "gpt.npz")],
            f"--checkpoint '{d / 'gpt.npz'}' is a params file, which names no model config: pass --config",
        ),
        (
            [str(tmp_path / "other")],
            f"transformer checkpoint '{tmp_path / 'other'}' is a folder without checkpoints "
            "(it holds notes.txt): expected a training run folder",
        ),
        (
            [str(run_dir / "vae_config.json")],
            f"unknown file type '.json'; expected a folder, .npz/.msgpack or "
            f".pth/.pt/.bin/.safetensors; the run folder beside it is '{run_dir}'",
        ),
    ]
    for argv, message in cases:
        assert (
            _sample(
                [
                    "--checkpoint",
                    *argv,
                    "--vae",
                    str(d / "vae.npz"),
                    "--vae-config",
                    "tiny",
                    "--text-encoder",
                    "tiny-byt5",
                    "--schedule",
                    SCHEDULE,
                ],
                tmp_path / "out",
            )
            == 2
        ), argv
        assert message in _error(capsys), argv
    assert not (tmp_path / "out").exists()


def _error(capsys) -> str:
    """The one error line the command printed (stderr may also hold progress lines)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("infinity-jax sample: error:")]
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- compilation cache
CACHED_SAMPLE = """
import sys
from jax._src import monitoring
from infinity_jax import commands
events = []
monitoring.register_event_listener(lambda event, **kw: events.append(event))
assert commands.main(["sample", "--checkpoint", sys.argv[1], "--prompt", "a red cube", "--no-progress",
                      "--out", sys.argv[2]]) == 0
print("cache hits:", events.count("/jax/compilation_cache/cache_hits"))
"""


def test_a_second_sample_run_loads_its_program_from_the_compilation_cache(run_dir, tmp_path):
    """The command keeps its compiled program in $INFINITY_JAX_COMPILE_CACHE (infinity_jax.compile_cache):
    the first process writes it (jax not yet imported when the command starts: through the environment),
    a second one sampling the same run loads it (a cache hit) instead of compiling it again."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = dict(os.environ, INFINITY_JAX_COMPILE_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    argv = ["sample", "--checkpoint", str(run_dir), "--prompt", "a red cube", "--no-progress", "--out"]
    first = [sys.executable, "-m", "infinity_jax", *argv, str(tmp_path / "out0")]
    second = [sys.executable, "-c", CACHED_SAMPLE, str(run_dir), str(tmp_path / "out1")]
    done = subprocess.run(first, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and any(cache.iterdir()), done.stderr[-3000:]
    done = subprocess.run(second, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split("cache hits:")[1]) >= 1, done.stdout


def test_the_compilation_cache_setting(tmp_path, monkeypatch):
    from jax._src import compilation_cache as jax_cache

    from infinity_jax import compile_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv(compile_cache.ENV, "off")
        assert compile_cache.configure() is None and jax.config.jax_compilation_cache_dir is None
        monkeypatch.delenv(compile_cache.ENV)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert compile_cache.configure() == str(tmp_path / "xdg" / "infinity_jax" / "xla")
        # a directory jax already has (set by the caller, or $JAX_COMPILATION_CACHE_DIR) is kept
        assert compile_cache.configure(str(tmp_path / "other")) == str(tmp_path / "xdg" / "infinity_jax" / "xla")
        jax.config.update("jax_compilation_cache_dir", None)
        (tmp_path / "file").write_text("")
        with pytest.raises(UsageError, match="INFINITY_JAX_COMPILE_CACHE='.*file': expected a directory"):
            compile_cache.configure(str(tmp_path / "file"))
        assert compile_cache.configure(str(tmp_path / "file" / "below")) is None  # cannot be made: no cache
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax_cache.reset_cache()
