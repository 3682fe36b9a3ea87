"""export-torch / import-torch / convert infinity / convert vae on bad input: one line naming the bad value,
exit status 2, nothing written. Plus the export workflow's own cases: a run with a non-official
`model.extension` of ours is refused by name, --vae-out of a run on a random VAE writes nothing,
both files appear or neither, and a configs/shapes.py run comes back through import-torch with the
same override it was trained with.

Runs are orbax checkpoints of random params written directly (import_torch._write), not trained:
the commands read nothing else."""

from __future__ import annotations

import os

import numpy as np
import pytest
from flax import linen as nn

from infinity_jax import commands, config_util, fileio
from infinity_jax.convert import export, import_torch, torch_io
from infinity_jax.model.transformer import InfinityConfig, abstract_params
from infinity_jax.runs import load_weights
from infinity_jax.tokenizer import vae as vae_lib
from tests.conftest import load_fixture, state_dict

pytest.importorskip("torch")
NO_EXTENSION = "model.extension=''"


def _random(tree, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    flat = fileio.flatten(nn.unbox(tree))
    return fileio.unflatten({k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in flat.items()})


def _run(folder, overrides=(), vae_params: str | None = None, seed: int = 0):
    """A shapes:tiny run folder (random params, the config beside them), as `infinity-jax train` leaves it."""
    cfg = config_util.load_config("shapes:tiny", overrides)
    if vae_params is not None:
        cfg.vae.params = vae_params
    params = _random(abstract_params(InfinityConfig.from_dict(cfg.model)), seed)
    import_torch._write(str(folder), params, cfg, step=6)
    return params


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Official tiny state dicts (good and broken), our params files, junk files and four runs."""
    d = tmp_path_factory.mktemp("inputs")
    f = load_fixture("tiny")
    gpt, vae = state_dict(f, "gpt"), state_dict(f, "vae")
    torch_io.save_state_dict(gpt, str(d / "gpt.pth"))
    torch_io.save_state_dict(vae, str(d / "vae.pth"))
    torch_io.save_state_dict({k: v for k, v in gpt.items() if k != "head.weight"}, str(d / "gpt_missing.pth"))
    torch_io.save_state_dict(dict(gpt, **{"extra.weight": np.zeros(3, np.float32)}), str(d / "gpt_extra.pth"))
    torch_io.save_state_dict(dict(gpt, **{"head.bias": np.zeros(3, np.float32)}), str(d / "gpt_shape.pth"))
    torch_io.save_state_dict(
        {k: v for k, v in vae.items() if k != "encoder.conv_in.conv.bias"}, str(d / "vae_missing.pth")
    )
    torch_io.save_state_dict(
        dict(vae, **{"encoder.conv_in.conv.bias": np.zeros(3, np.float32)}), str(d / "vae_shape.pth")
    )
    from infinity_jax.convert import infinity as conv_gpt
    from infinity_jax.convert import vae as conv_vae

    fileio.save_params(conv_gpt.torch_to_params(gpt, "tiny"), str(d / "gpt.npz"))
    fileio.save_params(conv_vae.torch_to_params(vae, "tiny"), str(d / "vae.npz"))
    (d / "notes.txt").write_text("not weights")
    (d / "junk.pth").write_text("not a torch file")
    # runs: shapes:tiny as configs/shapes.py has it (extension abs_pos_embed), on a random VAE, on a VAE file
    # that is gone, on VAE weights of another architecture, and with real VAE weights (random numbers, but saved)
    from infinity_jax.runs import load_vae_config

    base = config_util.load_config("shapes:tiny")
    vcfg = load_vae_config(str(base.vae.config), base.vae.overrides)
    fileio.save_params(_random(vae_lib.abstract_params(vae_lib.from_config(vcfg)), 1), str(d / "shapes_vae.npz"))
    runs = {
        "abs": _run(d / "run_abs"),
        "random_vae": _run(d / "run_random_vae", [NO_EXTENSION]),
        "gone_vae": _run(d / "run_gone_vae", [NO_EXTENSION], str(d / "gone.npz")),
        "other_vae": _run(d / "run_other_vae", [NO_EXTENSION], str(d / "vae.npz")),
        "ok": _run(d / "run_ok", [NO_EXTENSION], str(d / "shapes_vae.npz"), seed=2),
    }
    return {"dir": d, "runs": runs, "vae_params": fileio.load_params(str(d / "shapes_vae.npz"))}


def _files(root) -> dict:
    return {
        os.path.relpath(os.path.join(p, n), root): open(os.path.join(p, n), "rb").read()
        for p, _, names in os.walk(root)
        for n in names
    }


def _assert_one_line_error(capsys, command: str, message: str):
    out, err = capsys.readouterr()
    assert out == "", out
    assert err.startswith(f"infinity-jax {command}: error: "), err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


# ------------------------------------------------------------- the export workflow (issue 29, item 3)
def test_export_of_an_extension_run_is_one_line_naming_the_option_and_the_fix(inputs, tmp_path, capsys):
    run = inputs["dir"] / "run_abs"
    assert commands.main(["export-torch", "--checkpoint", str(run), "--out", str(tmp_path / "gpt.pth")]) == 2
    _assert_one_line_error(
        capsys, "export-torch", f"--checkpoint '{run}' was trained with model.extension='abs_pos_embed'"
    )
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"train with --config\.model\.extension='' to export"):
        export.export_run(str(run), str(tmp_path / "gpt.pth"))  # library callers: a UsageError (a ValueError)


@pytest.mark.parametrize(
    "run, message",
    [
        (
            "run_random_vae",
            "'{dir}/run_random_vae' trained on a random VAE (its config's vae.params is ''), which is not saved",
        ),
        ("run_gone_vae", "the run's VAE weights '{dir}/gone.npz' (its config's vae.params) do not exist"),
    ],
)
def test_export_with_vae_out_and_no_saved_vae_writes_neither_file(inputs, tmp_path, capsys, run, message):
    argv = [
        "export-torch",
        "--checkpoint",
        str(inputs["dir"] / run),
        "--out",
        str(tmp_path / "gpt.pth"),
        "--vae-out",
        str(tmp_path / "vae.pth"),
    ]
    assert commands.main(argv) == 2
    _assert_one_line_error(capsys, "export-torch", "--vae-out: " + message.format(dir=inputs["dir"]))
    assert os.listdir(tmp_path) == []  # before: gpt.pth written, then a traceback


def test_export_writes_both_files_or_neither(inputs, tmp_path, monkeypatch, capsys):
    run = str(inputs["dir"] / "run_ok")
    out, vae_out = tmp_path / "gpt.safetensors", tmp_path / "vae.pth"
    real_replace = os.replace

    def failing_replace(src, dst):  # the second rename fails (a full disk, a vanished folder)
        if os.fspath(dst) == str(vae_out):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        export.export_run(run, str(out), vae_out=str(vae_out))
    assert os.listdir(tmp_path) == []  # the transformer file was taken back, no temporary files left
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "gpt.pth").write_bytes(b"old")  # --overwrite: the old file comes back on failure
    with pytest.raises(OSError, match="No space left"):
        export.export_run(run, str(tmp_path / "keep" / "gpt.pth"), vae_out=str(vae_out), overwrite=True)
    assert _files(tmp_path) == {"keep/gpt.pth": b"old"}
    monkeypatch.setattr(os, "replace", real_replace)

    assert commands.main(["export-torch", "--checkpoint", run, "--out", str(out), "--vae-out", str(vae_out)]) == 0
    assert "export-torch: vae: " in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["gpt.safetensors", "keep", "vae.pth"]
    from infinity_jax.convert import vae as conv_vae
    from infinity_jax.runs import load_vae_config

    base = config_util.load_config("shapes:tiny")
    back = conv_vae.torch_to_params(
        torch_io.load_state_dict(str(vae_out)), load_vae_config(str(base.vae.config), base.vae.overrides)
    )
    for k, v in fileio.flatten(inputs["vae_params"]).items():
        np.testing.assert_array_equal(fileio.flatten(back)[k], v, err_msg=k)


def test_a_shapes_run_comes_back_through_import_torch_with_its_training_override(inputs, tmp_path, capsys):
    """import-torch takes --config.KEY=VALUE like train: the run trained with no extension (so it exports)
    imports with the same override; without it the config is refused by name (one line)."""
    run = str(inputs["dir"] / "run_ok")
    gpt, vae = str(tmp_path / "gpt.pth"), str(tmp_path / "vae.pth")
    assert export.export_run(run, gpt, vae_out=vae)["transformer"]["keys"] > 0
    capsys.readouterr()
    argv = ["import-torch", "--transformer", gpt, "--vae", vae, "--config", "configs/shapes.py:tiny"]
    assert commands.main(argv + ["--out", str(tmp_path / "no")]) == 2
    _assert_one_line_error(
        capsys, "import-torch", "--config 'configs/shapes.py:tiny' has model.extension='abs_pos_embed'"
    )
    assert commands.main(argv + [f"--config.{NO_EXTENSION}", "--out", str(tmp_path / "back")]) == 0
    assert "config configs/shapes.py:tiny --config.model.extension=''" in capsys.readouterr().out
    params, config = load_weights(str(tmp_path / "back"), "transformer")
    want = fileio.flatten(inputs["runs"]["ok"])
    assert sorted(fileio.flatten(params)) == sorted(want)  # scan_layers kept: stacked blocks
    for k, v in fileio.flatten(params).items():
        np.testing.assert_array_equal(np.asarray(v), want[k], err_msg=k)
    assert config.model.extension == "" and list(config.source.overrides) == [NO_EXTENSION]
    # the config's own VAE (bsq_vae:shapes with its overrides) was used for the VAE file
    back = fileio.load_params(str(tmp_path / "back" / import_torch.VAE_PARAMS))
    for k, v in fileio.flatten(inputs["vae_params"]).items():
        np.testing.assert_array_equal(fileio.flatten(back)[k], v, err_msg=k)
    assert not os.path.exists(tmp_path / "no")


# ------------------------------------------------------------- every bad input: one line, exit 2, nothing written
EXPORT = ["export-torch", "--checkpoint"]
IMPORT = ["import-torch", "--config", "tiny", "--transformer"]
CONV = ["convert", "infinity", "--config", "tiny", "--in"]
CONV_BACK = ["convert", "infinity", "--to-torch", "--config", "tiny", "--in"]
VAE = ["convert", "vae", "--config", "tiny", "--in"]
VAE_BACK = ["convert", "vae", "--to-torch", "--config", "tiny", "--in"]
BAD = [  # argv ({in}: the inputs, {out}: this test's empty folder, where a file or folder named 'exists' is made
    # first), the message it must print
    (EXPORT + ["{out}/nowhere", "--out", "{out}/gpt.pth"], "transformer checkpoint '{out}/nowhere' does not exist"),
    (EXPORT + ["{in}/gpt.npz", "--out", "{out}/gpt.pth"], "--checkpoint '{in}/gpt.npz' is a file: expected a training"),
    (EXPORT + ["{in}", "--out", "{out}/gpt.pth"], "--checkpoint '{in}': no complete checkpoint in"),
    (EXPORT + ["{in}/run_ok", "--out", "{out}/gpt.txt"], "--out '{out}/gpt.txt': expected a .pth, .safetensors"),
    (EXPORT + ["{in}/run_ok", "--out", "{out}/exists.pth"], "--out '{out}/exists.pth' exists: pass --overwrite"),
    (
        EXPORT + ["{in}/run_ok", "--out", "{out}/gpt.pth", "--vae-out", "{out}/exists.pth"],
        "--vae-out '{out}/exists.pth' exists: pass --overwrite",
    ),
    (EXPORT + ["{in}/run_ok", "--out", "{out}/gpt.pth", "--vae-out", "{out}/gpt.pth"], "is also --out"),
    (EXPORT + ["{in}/run_ok", "--out", "{out}/gpt.pth", "--dtype", "int8"], "--dtype 'int8': expected a floating"),
    (
        EXPORT + ["{in}/run_abs", "--out", "{out}/gpt.pth", "--vae-out", "{out}/vae.pth"],
        "model.extension='abs_pos_embed'",
    ),
    (EXPORT + ["{in}/run_random_vae", "--out", "{out}/gpt.pth", "--vae-out", "{out}/vae.pth"], "a random VAE"),
    (
        EXPORT + ["{in}/run_other_vae", "--out", "{out}/gpt.pth", "--vae-out", "{out}/vae.pth"],
        "--vae-out: the run's VAE (vae.config 'bsq_vae:shapes', vae.params '{in}/vae.npz'): BSQ-VAE params (config "
        "'shapes'): the state dict does not match the model: missing keys (",
    ),
    (IMPORT + ["{out}/no.pth", "--out", "{out}/m"], "--transformer '{out}/no.pth' does not exist"),
    (IMPORT + ["{in}/notes.txt", "--out", "{out}/m"], "state dict '{in}/notes.txt': unknown extension '.txt'"),
    (IMPORT + ["{in}/junk.pth", "--out", "{out}/m"], "state dict '{in}/junk.pth' is not a torch checkpoint"),
    (IMPORT + ["{in}/gpt.pth", "--key", "trainer", "--out", "{out}/m"], "no key 'trainer'"),
    (IMPORT + ["{in}/gpt_missing.pth", "--out", "{out}/m"], "missing keys (1): head.weight"),
    (IMPORT + ["{in}/gpt_extra.pth", "--out", "{out}/m"], "unexpected keys (1): extra.weight"),
    (IMPORT + ["{in}/gpt_shape.pth", "--out", "{out}/m"], "shape mismatches (1): head.bias: got (3,), expected (64,)"),
    (IMPORT + ["{in}/gpt.pth", "--out", "{out}/exists.pth"], "--out '{out}/exists.pth' is a file"),
    (IMPORT + ["{in}/gpt.pth", "--out", "{out}/exists"], "--out '{out}/exists' exists and is not empty"),
    (
        IMPORT + ["{in}/gpt.pth", "--config", "configs/shapes.py:tiny", "--out", "{out}/m"],
        "model.extension='abs_pos_embed'",
    ),
    (
        IMPORT + ["{in}/gpt.pth", "--config.model.extension=abs_pos_embed", "--out", "{out}/m"],
        "--config 'tiny' has model.extension='abs_pos_embed', ours (model/extensions.py)",
    ),
    (
        IMPORT + ["{in}/gpt.pth", "--config.model.extension=place", "--out", "{out}/m"],
        "extension='place': expected '' (the official model) or one of ('abs_pos_embed',)",
    ),
    (IMPORT + ["{in}/gpt.pth", "--config.model.nope=1", "--out", "{out}/m"], "no field 'nope' in model"),
    (IMPORT + ["{in}/gpt.pth", "--config.model.num_heads=3", "--out", "{out}/m"], "not divisible by num_heads=3"),
    (IMPORT + ["{in}/gpt.pth", "--vae", "{out}/no.pth", "--out", "{out}/m"], "--vae '{out}/no.pth' does not exist"),
    (
        IMPORT + ["{in}/gpt.pth", "--vae", "{in}/vae_missing.pth", "--vae-config", "tiny", "--out", "{out}/m"],
        "missing keys (1): encoder.conv_in.conv.bias",
    ),
    (CONV + ["{out}/no.pth", "--out", "{out}/p.npz"], "--in '{out}/no.pth' does not exist"),
    (CONV + ["{in}/notes.txt", "--out", "{out}/p.npz"], "--in '{in}/notes.txt': unknown extension '.txt'"),
    (CONV + ["{in}/junk.pth", "--out", "{out}/p.npz"], "is not a torch checkpoint"),
    (CONV + ["{in}/gpt_missing.pth", "--out", "{out}/p.npz"], "missing keys (1): head.weight"),
    (CONV + ["{in}/gpt_extra.pth", "--out", "{out}/p.npz"], "unexpected keys (1): extra.weight"),
    (CONV + ["{in}/gpt_shape.pth", "--out", "{out}/p.npz"], "shape mismatches (1): head.bias"),
    (CONV + ["{in}/gpt.pth", "--out", "{out}/exists.pth"], "--out '{out}/exists.pth': expected a .npz or .msgpack"),
    (CONV + ["{in}/gpt.pth", "--out", "{out}/exists.npz"], "--out '{out}/exists.npz' exists: pass --overwrite"),
    (CONV + ["{in}/gpt.pth", "--out", "{out}/p.npz", "--dtype", "bfloat16"], "applies to --to-torch only"),
    (CONV + ["{in}/gpt.pth", "--out", "{out}/p.npz", "--config", "nope"], "infinity config 'nope': expected one of"),
    (
        CONV + ["{in}/gpt.pth", "--out", "{out}/p.npz", "--config", "configs/shapes.py:tiny"],
        "model.extension='abs_pos_embed'",
    ),
    (CONV_BACK + ["{in}/gpt.pth", "--out", "{out}/sd.pth"], "--in '{in}/gpt.pth': expected our params"),
    (CONV_BACK + ["{in}/gpt.npz", "--out", "{out}/sd.pth", "--dtype", "int8"], "--dtype 'int8'"),
    (CONV_BACK + ["{in}/vae.npz", "--out", "{out}/sd.pth"], "our Infinity params: the state dict does not match"),
    (VAE + ["{out}/no.pth", "--out", "{out}/p.npz"], "--in '{out}/no.pth' does not exist"),
    (VAE + ["{in}/notes.txt", "--out", "{out}/p.npz"], "unknown extension '.txt'"),
    (VAE + ["{in}/junk.pth", "--out", "{out}/p.npz"], "is not a torch checkpoint"),
    (VAE + ["{in}/vae_missing.pth", "--out", "{out}/p.npz"], "missing keys (1): encoder.conv_in.conv.bias"),
    (VAE + ["{in}/vae_shape.pth", "--out", "{out}/p.npz"], "shape mismatches (1): encoder.conv_in.conv.bias"),
    (VAE + ["{in}/gpt.pth", "--out", "{out}/p.npz"], "missing keys ("),
    (VAE + ["{in}/vae.pth", "--out", "{out}/exists.npz"], "--out '{out}/exists.npz' exists: pass --overwrite"),
    (VAE + ["{in}/vae.pth", "--out", "{out}/p.npz", "--config", "nope"], "bsq_vae config 'nope': expected one of"),
    (VAE_BACK + ["{in}/gpt.npz", "--out", "{out}/sd.pth"], "BSQ-VAE params (config 'tiny')"),
    (VAE_BACK + ["{in}/vae.npz", "--out", "{out}/sd.txt"], "--out '{out}/sd.txt': expected a .pth"),
]


@pytest.mark.parametrize(
    "argv, message", BAD, ids=[f"{i:02d}-{'-'.join(commands.resolve(a)[0])}" for i, (a, _) in enumerate(BAD)]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(inputs, tmp_path, capsys, argv, message):
    fill = {"in": str(inputs["dir"]), "out": str(tmp_path)}
    for name in ("exists.pth", "exists.npz"):
        (tmp_path / name).write_bytes(b"keep")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("keep")
    before, inputs_before = _files(tmp_path), sorted(os.listdir(inputs["dir"]))
    assert commands.main([a.format(**fill) for a in argv]) == 2
    _assert_one_line_error(capsys, " ".join(commands.resolve(argv)[0]), message.format(**fill))  # e.g. convert vae
    assert _files(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["exists", "exists.npz", "exists.pth"]
    assert sorted(os.listdir(inputs["dir"])) == inputs_before  # no temporary files beside the inputs either
