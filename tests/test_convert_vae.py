"""Official BSQ-VAE state dict <-> our params (infinity_jax/convert/vae.py): exact, strict, bf16, CLI."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from infinity_jax import fileio
from infinity_jax.configs import bsq_vae
from infinity_jax.convert import common
from infinity_jax.convert import vae as convert
from infinity_jax.convert.torch_io import load_state_dict, save_state_dict
from tests.conftest import load_fixture, state_dict


@pytest.fixture(scope="module")
def official():
    """The fixture's official state dict (float32 weights, int64 mask buffers)."""
    return state_dict(load_fixture("tiny"), "vae")


@pytest.fixture(scope="module")
def cfg():
    return bsq_vae.get_config("tiny")


def assert_same_state_dict(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k  # bit-identical


def test_round_trip_is_bit_identical(official, cfg):
    params = convert.torch_to_params(official, cfg)
    assert fileio.flatten(params)["encoder/down_0/block_1/conv1/conv/kernel"].shape == (3, 3, 32, 32)
    assert all(v.dtype == np.float32 for v in fileio.flatten(params).values())
    back = convert.params_to_torch(params, cfg)
    assert_same_state_dict(back, official)
    again = convert.torch_to_params(back, cfg)
    flat, flat2 = fileio.flatten(params), fileio.flatten(again)
    assert flat.keys() == flat2.keys() and all(np.array_equal(flat[k], flat2[k]) for k in flat)


def test_conv_kernels_are_transposed_to_hwio(official, cfg):
    params = fileio.flatten(convert.torch_to_params(official, cfg))
    w = official["decoder.conv_out.conv.weight"]  # (O=3, I=32, 3, 3)
    k = params["decoder/conv_out/conv/kernel"]  # (3, 3, I=32, O=3)
    assert k.shape == (3, 3, 32, 3)
    assert k[0, 2, 5, 1] == w[1, 5, 0, 2]
    assert np.array_equal(params["encoder/norm_out/norm/scale"], official["encoder.norm_out.norm.weight"])


def test_strict_load_lists_every_bad_key(official, cfg):
    sd = dict(official)
    del sd["encoder.down.2.block.1.conv2.conv.bias"]
    del sd["quantize.lfq.mask"]
    sd["decoder.up.9.block.0.conv1.conv.weight"] = np.zeros((1,), np.float32)
    sd["decoder.conv_in.conv.weight"] = np.zeros((32, 16, 3, 3), np.float32)
    with pytest.raises(ValueError) as e:
        convert.torch_to_params(sd, cfg)
    msg = str(e.value)
    for part in (
        "missing keys (2)",
        "encoder.down.2.block.1.conv2.conv.bias",
        "quantize.lfq.mask",
        "unexpected keys (1)",
        "decoder.up.9.block.0.conv1.conv.weight",
        "shape mismatches (1)",
        "decoder.conv_in.conv.weight: got (32, 16, 3, 3), expected (32, 32, 3, 3)",
    ):
        assert part in msg, (part, msg)


def test_params_with_bad_paths_are_refused(official, cfg):
    flat = fileio.flatten(convert.torch_to_params(official, cfg))
    del flat["decoder/up_3/block_2/norm2/norm/bias"]
    flat["decoder/up_3/extra/kernel"] = np.zeros(1, np.float32)
    with pytest.raises(
        ValueError,
        match=r"(?s)missing keys \(1\).*decoder/up_3/block_2/norm2/norm/bias"
        r".*unexpected keys \(1\).*decoder/up_3/extra/kernel",
    ):
        convert.params_to_torch(fileio.unflatten(flat), cfg)


def test_wrong_quantizer_mask_is_refused(official, cfg):
    sd = dict(official)
    sd["quantizer.lfq.mask"] = sd["quantizer.lfq.mask"][::-1].copy()
    with pytest.raises(ValueError, match="quantizer.lfq.mask .*expected the powers of two"):
        convert.torch_to_params(sd, cfg)


def test_bf16_state_dict_loads_and_exports_back_exactly(official, cfg):
    bf16 = {k: (v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v) for k, v in official.items()}
    params = fileio.flatten(convert.torch_to_params(bf16, cfg))
    k = params["encoder/conv_in/conv/kernel"]
    assert k.dtype == np.float32
    assert np.array_equal(k, common.conv_to_flax(bf16["encoder.conv_in.conv.weight"].astype(np.float32)))
    back = convert.params_to_torch(fileio.unflatten(params), cfg, dtype="bfloat16")
    assert_same_state_dict(back, bf16)


def test_old_style_key_names_load(official, cfg):
    # what the official loader also accepts: `x.weight` for `x.conv.weight` / `x.norm.weight`
    old = {k.replace(".conv.weight", ".weight").replace(".norm.weight", ".weight"): v for k, v in official.items()}
    assert "encoder.conv_in.weight" in old and "encoder.norm_out.weight" in old
    ref = fileio.flatten(convert.torch_to_params(official, cfg))
    got = fileio.flatten(convert.torch_to_params(old, cfg))
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_released_state_dict_layout_matches_official():
    # 270 keys and 110,118,115 values: the official d32 AutoEncoder's state_dict() (parameters plus
    # the 32-value mask buffer twice), counted once with the official code on the meta device.
    shapes = convert.expected_state_dict_shapes("d32")
    assert len(shapes) == 270
    assert sum(int(np.prod(s)) for s in shapes.values()) == 110_118_115
    assert shapes["encoder.down.1.block.0.nin_shortcut.conv.weight"] == (256, 128, 1, 1)
    assert shapes["decoder.up.4.upsample.conv.conv.weight"] == (512, 512, 3, 3)
    assert "decoder.up.0.upsample.conv.conv.weight" not in shapes  # level 0 has no upsample
    assert "encoder.down.4.downsample.conv.conv.weight" not in shapes
    assert shapes["encoder.conv_out.conv.weight"] == (32, 512, 3, 3)


def test_d64_mask_wraps_like_torch():
    torch = pytest.importorskip("torch")
    mask = convert.quantizer_mask(64)
    assert mask.dtype == np.int64 and mask[0] == np.iinfo(np.int64).min and mask[-1] == 1
    assert np.array_equal(mask, (2 ** torch.arange(63, -1, -1)).numpy())
    assert np.array_equal(convert.quantizer_mask(16), 2 ** np.arange(15, -1, -1))


def test_cli_converts_both_ways(official, tmp_path):
    torch = pytest.importorskip("torch")
    from infinity_jax import commands

    def convert(*argv):
        return commands.main(["convert", "vae", "--config", "tiny", *map(str, argv)])

    src = tmp_path / "vae.pth"  # the official checkpoint layout: {'vae': state_dict}
    torch.save({"vae": {k: torch.from_numpy(np.array(v)) for k, v in official.items()}}, src)
    ours = tmp_path / "params.npz"
    assert convert("--in", src, "--out", ours) == 0
    params = fileio.load_params(str(ours))
    assert params["encoder"]["conv_in"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    out = tmp_path / "back.pth"
    assert convert("--to-torch", "--in", ours, "--out", out) == 0
    assert_same_state_dict(load_state_dict(str(out)), official)
    # msgpack params and an npz state dict work too
    msg, npz = tmp_path / "params.msgpack", tmp_path / "back.npz"
    save_state_dict(official, str(tmp_path / "flat.npz"))
    assert convert("--in", tmp_path / "flat.npz", "--out", msg) == 0
    assert convert("--to-torch", "--in", msg, "--out", npz) == 0
    assert_same_state_dict(load_state_dict(str(npz)), official)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["vae.pth", "params.npz", "back.pth", "flat.npz", "params.msgpack", "back.npz"]
    )  # no temp files left
