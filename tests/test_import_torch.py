"""`infinity-jax import-torch`: official-named state dicts (written by our exporter from random params of a
tiny model and VAE) -> a checkpoint folder; exact params, the same samples, an exact round trip through
export-torch, strict and clear errors, an atomic --out."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

from infinity_jax import commands, fileio, sample
from infinity_jax.convert import export, import_torch, torch_io
from infinity_jax.convert import infinity as conv_gpt
from infinity_jax.convert import vae as conv_vae
from infinity_jax.model.transformer import InfinityConfig, abstract_params
from infinity_jax.runs import load_weights
from infinity_jax.tokenizer import vae as vae_lib

pytest.importorskip("torch")
FAST = {"xla_backend_optimization_level": 0}  # LLVM -O0: the same numbers, CPU compiles ~2x faster
SCHEDULE = "1x1,2x2"  # 32x32 images from the tiny VAE (stride 16)


def _random(tree, seed: int) -> dict:
    """Every leaf of an abstract param tree as fp32 normal noise (no zero-initialised heads)."""
    rng = np.random.default_rng(seed)
    flat = fileio.flatten(nn.unbox(tree))
    return fileio.unflatten({k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in flat.items()})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random tiny transformer + VAE params, as our .npz and as official-named .pth (our exporter)."""
    d = tmp_path_factory.mktemp("official")
    cfg = conv_gpt.load_config("tiny")
    params = _random(abstract_params(InfinityConfig.from_dict(cfg.model)), 0)
    vcfg = conv_vae.load_config("tiny")
    vae_params = _random(vae_lib.abstract_params(vae_lib.from_config(vcfg)), 1)
    fileio.save_params(params, str(d / "gpt.npz"))
    fileio.save_params(vae_params, str(d / "vae.npz"))
    torch_io.save_state_dict(conv_gpt.params_to_torch(params, cfg), str(d / "gpt.pth"))
    torch_io.save_state_dict(conv_vae.params_to_torch(vae_params, vcfg), str(d / "vae.pth"))
    return {"dir": d, "cfg": cfg, "params": params, "vae_params": vae_params}


def _import(files, out, *extra):
    d = files["dir"]
    return commands.main(
        [
            "import-torch",
            "--transformer",
            str(d / "gpt.pth"),
            "--vae",
            str(d / "vae.pth"),
            "--config",
            "infinity:tiny",
            "--vae-config",
            "tiny",
            "--schedule",
            SCHEDULE,
            "--text-encoder",
            "tiny-byt5",
            "--step",
            "7",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "tiny"
    assert _import(files, out) == 0
    return out


def _assert_trees_equal(a, b):
    fa, fb = fileio.flatten(a), fileio.flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype == np.float32, k
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_imported_folder_restores_the_exact_params_and_a_complete_config(files, imported):
    assert sorted(os.listdir(imported)) == ["checkpoints", "vae_config.json", "vae_params.npz"]
    assert os.listdir(imported / "checkpoints") == ["7"]
    assert not [n for n in os.listdir(imported.parent) if n.startswith(".")]  # no temporary folder left
    assert os.stat(imported).st_mode & 0o777 == fileio.default_mode(folder=True)  # not mkdtemp's 0700
    assert os.stat(imported / "vae_params.npz").st_mode & 0o777 == fileio.default_mode()
    params, config = load_weights(str(imported), "transformer")
    _assert_trees_equal(params, files["params"])
    _assert_trees_equal(fileio.load_params(str(imported / "vae_params.npz")), files["vae_params"])
    assert config.model.depth == 2 and config.schedule == SCHEDULE and config.text.preset == "tiny-byt5"
    assert config.vae.params == str(imported / "vae_params.npz")  # resolved against the folder
    assert config.source.transformer == str(files["dir"] / "gpt.pth")


def test_summary_names_keys_params_dtype_and_step(files, tmp_path, capsys):
    assert _import(files, tmp_path / "again") == 0
    out = capsys.readouterr().out
    n_keys = len(conv_gpt.expected_state_dict_shapes(files["cfg"]))
    n_params = sum(np.size(v) for v in fileio.flatten(files["params"]).values())
    assert f"transformer: {files['dir'] / 'gpt.pth'}: {n_keys} keys, {n_params:,} params, float32 -> float32" in out
    assert "vae: " in out and "(step 7, config infinity:tiny, schedule 1x1,2x2" in out


def _sample(argv, out):
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
            "--cfg",
            "3",
            "--no-progress",
            "--out",
            str(out),
        ]
    )


def test_sampling_the_folder_with_no_model_flags_equals_sampling_the_original_params(
    files, imported, tmp_path, monkeypatch
):
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    d = files["dir"]
    assert _sample(["--checkpoint", str(imported)], tmp_path / "imported") == 0
    assert (
        _sample(
            [
                "--config",
                "tiny",
                "--checkpoint",
                str(d / "gpt.npz"),
                "--vae",
                str(d / "vae.npz"),
                "--vae-config",
                "tiny",
                "--text-encoder",
                "tiny-byt5",
                "--schedule",
                SCHEDULE,
            ],
            tmp_path / "original",
        )
        == 0
    )
    a = json.loads((tmp_path / "imported" / "samples.json").read_text())
    b = json.loads((tmp_path / "original" / "samples.json").read_text())
    assert a["schedule"] == b["schedule"] == [[1, 1, 1], [1, 2, 2]] and len(a["samples"]) == 2
    for ra, rb in zip(a["samples"], b["samples"]):
        ia, ib = (np.asarray(Image.open(tmp_path / w / r["file"])) for w, r in (("imported", ra), ("original", rb)))
        assert ia.shape == (32, 32, 3) and ia.std() > 0
        np.testing.assert_array_equal(ia, ib)


def test_export_torch_of_the_imported_folder_reproduces_the_state_dicts_exactly(files, imported, tmp_path):
    export.export_run(str(imported), str(tmp_path / "gpt.pth"), vae_out=str(tmp_path / "vae.pth"))
    for name in ("gpt.pth", "vae.pth"):
        want, got = (torch_io.load_state_dict(str(p / name)) for p in (files["dir"], tmp_path))
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype, k
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_bf16_state_dicts_load_as_fp32_params(files, tmp_path):
    torch_io.save_state_dict(
        conv_gpt.params_to_torch(files["params"], files["cfg"], dtype="bfloat16"),
        str(tmp_path / "gpt_bf16.safetensors"),
    )
    assert (
        commands.main(
            [
                "import-torch",
                "--transformer",
                str(tmp_path / "gpt_bf16.safetensors"),
                "--config",
                "tiny",
                "--out",
                str(tmp_path / "bf16"),
            ]
        )
        == 0
    )
    params, config = load_weights(str(tmp_path / "bf16"), "transformer")
    import ml_dtypes

    rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in fileio.flatten(files["params"]).items()}
    _assert_trees_equal(params, fileio.unflatten(rounded))
    assert "vae" not in config and config.schedule == "1M"  # defaults: no VAE (sample asks for --vae), 1M


def _bad_state_dict(files, tmp_path, change):
    sd = torch_io.load_state_dict(str(files["dir"] / "gpt.pth"))
    change(sd)
    torch_io.save_state_dict(sd, str(tmp_path / "bad.pth"))
    return str(tmp_path / "bad.pth")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("head.weight"), "missing keys (1): head.weight"),
        (lambda sd: sd.update({"extra.weight": np.zeros(3, np.float32)}), "unexpected keys (1): extra.weight"),
    ],
)
def test_a_missing_or_extra_key_fails_naming_it(files, tmp_path, capsys, change, message):
    bad = _bad_state_dict(files, tmp_path, change)
    assert commands.main(["import-torch", "--transformer", bad, "--config", "tiny", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "infinity-jax import-torch: error: --transformer" in err and message in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "o") and not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_config_mismatch_names_the_shape_differences(files, tmp_path, capsys):
    assert (
        commands.main(
            [
                "import-torch",
                "--transformer",
                str(files["dir"] / "gpt.pth"),
                "--config",
                "layer12",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line: the sizes first, then the first few keys of each kind and how many
    assert (
        "does not fit --config 'layer12' (the state dict implies depth 2 (state dict) vs 12 (config), "
        "embed_dim 64 (state dict) vs 768 (config)" in err
    )
    assert "missing keys (210): block_chunks.0.module.1.ada_gss; " in err and "; ... 205 more | " in err
    assert (
        "shape mismatches (63): block_chunks.0.module.0.ada_gss: got (1, 1, 6, 64), expected (1, 1, 6, 768); " in err
        and err.endswith("; ... 58 more\n")
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--transformer", "/no/such.pth", "--config", "tiny"], "--transformer '/no/such.pth' does not exist"),
        (["--config", "no_such_size"], "infinity config 'no_such_size'"),
        (["--config", "tiny", "--schedule", "2M"], "--schedule '2M'"),
        (["--config", "tiny", "--vae-config", "d16"], "--vae-config 'd16' without --vae"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(files, tmp_path, capsys, argv, message):
    argv = (["--transformer", str(files["dir"] / "gpt.pth")] if "--transformer" not in argv else []) + argv
    assert commands.main(["import-torch", *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_vae_config_mismatch_and_existing_out(files, imported, tmp_path, capsys):
    d = files["dir"]
    argv = ["import-torch", "--transformer", str(d / "gpt.pth"), "--config", "tiny", "--vae", str(d / "vae.pth")]
    assert commands.main(argv + ["--vae-config", "d16", "--out", str(tmp_path / "o")]) == 2
    assert "codebook_dim=16" in capsys.readouterr().err
    assert commands.main(argv + ["--vae-config", "d32", "--out", str(tmp_path / "o")]) == 2
    assert "shape mismatches" in capsys.readouterr().err  # the released architecture is not the tiny one
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert commands.main(argv + ["--vae-config", "tiny", "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not empty: pass --overwrite" in capsys.readouterr().err
    assert commands.main(argv + ["--vae-config", "tiny", "--out", str(tmp_path / "full"), "--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path / "full")) == ["checkpoints", "vae_config.json", "vae_params.npz"]
    assert sorted(os.listdir(tmp_path)) == ["full"]  # failed imports leave nothing, not even a temporary folder


def test_config_names_and_vae_defaults():
    cfg = import_torch.load_model_config(_config_file() + ":2b")  # configs/infinity.py:2b
    assert cfg.model.depth == 32 and cfg.model.embed_dim == 2048
    assert import_torch.vae_config_spec(None, "w/infinity_vae_d32reg.pth", cfg) == "bsq_vae:d32reg"
    assert import_torch.vae_config_spec(None, "w/infinity_vae_d32_reg.pth", cfg) == "bsq_vae:d32reg"
    assert import_torch.vae_config_spec(None, "w/my_vae.pth", cfg) == "bsq_vae:d32"
    assert import_torch.vae_config_spec("d16", "w/infinity_vae_d32reg.pth", cfg) == "bsq_vae:d16"
    zoo = import_torch.load_model_config("zoo:layer12,vae=d16")  # a training config: its VAE is the default
    assert zoo.model.depth == 12 and import_torch.vae_config_spec(None, "w/my_vae.pth", zoo) == "bsq_vae:d16"


def _config_file() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "infinity.py")
