"""The released 8B's path (official apply_spatial_patchify=1) through the commands, on the tiny-patchify
fixture's official state dicts (depth 2, width 64, d 32 read as 2x2 blocks of the patch-8 tiny_patchify
VAE's 8 bits): import-torch -> a run folder; `infinity-jax sample` of it gives the official sampler's
greedy image at the fixture's schedule; export-torch gives back the official state dicts key for key
and bit for bit; the sampler's image size under patchify; the 8B's tokenizer defaults and errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from infinity_jax import commands, generate, sample
from infinity_jax.convert import import_torch, torch_io
from infinity_jax.convert import infinity as conv_gpt
from infinity_jax.convert import vae as conv_vae
from tests.conftest import load_fixture, state_dict

pytest.importorskip("torch")
FAST = {"xla_backend_optimization_level": 0}
PATCHIFY = "--config.model.apply_spatial_patchify=1"  # configs/infinity.py tiny (d 32) as the 8B reads bits


class FixtureText:
    """Stands in for the text encoder: the fixture's padded text features, whatever the prompts."""

    def __init__(self, fix):
        self.feats, self.mask = fix["in/text_padded"], fix["in/text_mask"]
        self.width = self.feats.shape[-1]

    def encode_text(self, prompts):
        assert len(prompts) == len(self.feats)
        return self.feats, self.mask


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    d = tmp_path_factory.mktemp("official_patchify")
    fix = load_fixture("tiny-patchify")
    sds = {"gpt": state_dict(fix, "gpt"), "vae": state_dict(fix, "vae")}
    for name, sd in sds.items():
        torch_io.save_state_dict(sd, str(d / f"{name}.pth"))
    return {"dir": d, "fix": fix, **sds}


def _import(official, out, *extra):
    d = official["dir"]
    argv = ["import-torch", "--transformer", str(d / "gpt.pth"), "--vae", str(d / "vae.pth")]
    return commands.main([*argv, "--config", "tiny", *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported_patchify") / "run"
    assert _import(official, out, "--vae-config", "tiny_patchify", "--schedule", "0.06M", PATCHIFY) == 0
    return out


def _sample(run, out, *extra):
    argv = ["sample", "--checkpoint", str(run), "--prompt", "a", "--prompt", "b", "--greedy", "--cfg", "3"]
    return commands.main([*argv, "--tau", "1", "--batch-size", "2", "--no-progress", *extra, "--out", str(out)])


def test_sampling_the_imported_folder_gives_the_official_greedy_image(official, imported, tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    monkeypatch.setattr(generate, "_text_encoder", lambda *a, **k: FixtureText(official["fix"]))
    assert _sample(imported, tmp_path / "s", "--h-div-w", "0.5") == 0  # the run's 0.06M at the fixture's 1:2
    summary = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert summary["image_hw"] == official["fix"]["meta"]["image_hw"] == [176, 352]  # 16 x the last scale 11x22
    ours = np.asarray(Image.open(tmp_path / "s" / summary["samples"][0]["file"]).convert("RGB")).astype(int)
    ref = official["fix"]["sample/image_uint8_bgr"][0][..., ::-1].astype(int)  # the top rows of image 0
    diff = np.abs(ours[: ref.shape[0]] - ref)
    assert ours.shape == (176, 352, 3) and diff.max() <= 1 and (diff > 0).mean() < 1e-2


def test_export_of_the_imported_folder_is_the_official_state_dicts_key_for_key(official, imported, tmp_path):
    argv = ["export-torch", "--checkpoint", str(imported), "--out", str(tmp_path / "gpt.pth")]
    assert commands.main([*argv, "--vae-out", str(tmp_path / "vae.pth")]) == 0
    for name in ("gpt", "vae"):
        want, got = official[name], torch_io.load_state_dict(str(tmp_path / f"{name}.pth"))
        assert sorted(got) == sorted(want), name  # strict: no key missing or extra
        for k in want:
            assert np.asarray(got[k]).dtype == (np.int64 if k.endswith("lfq.mask") else np.float32), k
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    zero_k = [k for k in official["gpt"] if k.endswith("zero_k_bias")]
    assert len(zero_k) == 5  # the all-zero buffers the official state dict carries are written too
    assert official["gpt"]["word_embed.weight"].shape == (64, 32) and official["gpt"]["head.weight"].shape == (64, 64)


def test_sampler_image_size_is_16_pixels_per_token_under_patchify(imported, tmp_path, monkeypatch, official):
    """A token covers 2x2 positions of the patch-8 VAE: image = 16 x the transformer's last scale, for a
    custom schedule and for a pixel budget."""
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    monkeypatch.setattr(generate, "_text_encoder", lambda *a, **k: FixtureText(official["fix"]))
    assert _sample(imported, tmp_path / "c", "--schedule", "1x1,2x3") == 0
    summary = json.loads((tmp_path / "c" / "samples.json").read_text())
    assert summary["image_hw"] == [32, 48]
    image = Image.open(tmp_path / "c" / summary["samples"][1]["file"])
    assert image.size == (48, 32)


def test_tokenizer_defaults_and_mismatches_name_both_sides(official, tmp_path, capsys, monkeypatch):
    assert _import(official, tmp_path / "o", "--vae-config", "d32", PATCHIFY) == 2  # 32 bits for a d/4 = 8 model
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--vae-config 'bsq_vae:d32' codebook_dim=32 does not match " in err
    assert "model.codebook_dim=32, apply_spatial_patchify=1: expected 8" in err
    assert _import(official, tmp_path / "o", "--vae-config", "tiny") == 2  # the patch-16 tiny VAE: 32 bits
    assert "shape mismatches" in capsys.readouterr().err  # same bits, but not the patch-8 weights
    assert not os.path.exists(tmp_path / "o")
    # the 8B: the released d56 tokenizer by its file name, and by the model (codebook_dim 56, patchify)
    cfg8 = import_torch.load_model_config("8b")
    assert (cfg8.model.codebook_dim, cfg8.model.apply_spatial_patchify) == (56, 1)
    assert import_torch.vae_config_spec(None, "w/infinity_vae_d56_f8_14_patchify.pth", cfg8) == "bsq_vae:d56"
    assert import_torch.vae_config_spec(None, "w/my_vae.pth", cfg8) == "bsq_vae:d56"
    assert conv_vae.released_for(56, 1) == "d56" and conv_vae.released_for(32) == "d32"
    assert conv_vae.released_for(32, 1) is None and conv_vae.released_for(56) is None
    # the sampler: a tokenizer that does not fit the model is one error naming both
    gpt = str(official["dir"] / "gpt.pth")
    argv = ["sample", "--checkpoint", gpt, "--config", "tiny", "--vae", str(official["dir"] / "vae.pth")]
    assert commands.main([*argv, "--vae-config", "tiny_patchify", "--prompt", "a", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--vae-config 'tiny_patchify' codebook_dim=8 does not match model.codebook_dim=32" in err
    # --config 8b: the d56 tokenizer by default, a d32 one refused naming both
    m8 = generate._model_config(generate.SampleOptions(checkpoint=gpt, out="o", config="8b"), None)
    opts = generate.SampleOptions(checkpoint=gpt, out="o", vae=str(official["dir"] / "vae.pth"), vae_config="d32")
    with pytest.raises(ValueError, match=r"'d32' codebook_dim=32 does not match model.codebook_dim=56, apply_spatial"):
        generate._vae(opts, None, m8)
    monkeypatch.setattr(generate.runs, "load_weights", lambda path, kind, cfg: (cfg, None))
    vcfg, _ = generate._vae(generate.SampleOptions(checkpoint=gpt, out="o", vae="vae.pth"), None, m8)
    assert (vcfg.name, vcfg.codebook_dim, vcfg.patch_size) == ("d56", 14, 8)


def test_8b_state_dict_keys_and_shapes_equal_the_official_class():
    """sha256 of json.dumps(sorted((key, list(shape)))) over Infinity(...).state_dict() of the official class
    (commit 4c27bbb) built on the 'meta' device with tools/run_infinity.py's infinity_8b arguments, the
    released recipe and apply_spatial_patchify=1 with a stand-in vae_local of embed_dim 14: 862 keys (zero_k_bias
    buffers included), 8,376,082,128 values; word_embed (3584, 56), head (112, 3584)."""
    import hashlib

    shapes = conv_gpt.expected_state_dict_shapes(conv_gpt.load_config("8b"))
    items = sorted((k, [int(n) for n in v]) for k, v in shapes.items())
    assert len(items) == 862 and sum(int(np.prod(v)) for _, v in items) == 8_376_082_128
    assert dict(items)["word_embed.weight"] == [3584, 56] and dict(items)["head.weight"] == [112, 3584]
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
    assert digest == "42497a235f4b290c3c84e00c886ed4d36a711ae8e9b2121fbd3248d513eee7a8"
