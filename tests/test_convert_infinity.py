"""Official Infinity state dict <-> our params: exact both ways, strict, bf16 checkpoints load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from infinity_jax import fileio
from infinity_jax.convert import infinity as conv
from infinity_jax.convert.torch_io import as_numpy, load_state_dict, save_state_dict
from infinity_jax.model import transformer as T
from tests.conftest import load_fixture, state_dict


@pytest.fixture(scope="module")
def official():
    f = load_fixture("tiny")
    s, meta = f["meta"]["settings"], f["meta"]
    cfg = T.InfinityConfig(
        depth=s["depth"],
        embed_dim=s["embed_dim"],
        num_heads=s["num_heads"],
        block_chunks=s["block_chunks"],
        codebook_dim=s["d"],
        text_channels=meta["text_channels"],
    )
    return cfg, state_dict(f, "gpt")


def assert_same_state_dict(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_is_bit_identical(official, scan):
    cfg, sd = official
    cfg = dataclasses.replace(cfg, scan_layers=scan)
    params = conv.torch_to_params(sd, cfg)
    back = conv.params_to_torch(params, cfg)
    assert_same_state_dict(back, sd)  # zero_k_bias buffers included
    assert any(k.endswith("zero_k_bias") for k in back)
    if scan:
        assert fileio.flatten(params)["blocks/sa/mat_qkv"].shape == (cfg.depth, 64, 3, 64)


def test_param_tree_mirrors_official_names(official):
    cfg, sd = official
    flat = fileio.flatten(conv.torch_to_params(sd, cfg))
    np.testing.assert_array_equal(flat["blocks_1/sa/proj/kernel"], sd["block_chunks.1.module.0.sa.proj.weight"].T)
    np.testing.assert_array_equal(
        flat["blocks_0/sa/mat_qkv"][:, 1], sd["block_chunks.0.module.0.sa.mat_qkv.weight"][64:128].T
    )
    np.testing.assert_array_equal(flat["text_proj_for_ca_2/bias"], sd["text_proj_for_ca.2.bias"])
    np.testing.assert_array_equal(flat["lvl_embed/embedding"], sd["lvl_embed.weight"])
    one_chunk = dataclasses.replace(cfg, block_chunks=1)
    assert "blocks.1.ffn.fc2.weight" in conv.expected_state_dict_shapes(one_chunk)


def test_mismatched_keys_and_shapes_are_listed_in_one_error(official):
    cfg, sd = official
    bad = dict(sd)
    del bad["head.bias"], bad["block_chunks.0.module.0.sa.zero_k_bias"]
    bad["head.extra"] = np.zeros(3, np.float32)
    bad["word_embed.weight"] = np.zeros((64, 16), np.float32)
    with pytest.raises(ValueError) as e:
        conv.torch_to_params(bad, cfg)
    msg = str(e.value)
    for part in (
        "missing keys (2)",
        "head.bias",
        "block_chunks.0.module.0.sa.zero_k_bias",
        "unexpected keys (1)",
        "head.extra",
        "word_embed.weight: got (64, 16), expected (64, 32)",
    ):
        assert part in msg


def test_nonzero_zero_k_bias_is_refused(official):
    cfg, sd = official
    bad = dict(sd)
    bad["block_chunks.1.module.0.ca.zero_k_bias"] = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="block_chunks.1.module.0.ca.zero_k_bias"):
        conv.torch_to_params(bad, cfg)


def test_bf16_checkpoint_loads_and_exports(official, tmp_path):
    pytest.importorskip("torch")
    import ml_dtypes

    cfg, sd = official
    sd16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    path = str(tmp_path / "gpt_bf16.pth")
    save_state_dict(sd16, path)
    params = conv.torch_to_params(load_state_dict(path), cfg)
    flat = fileio.flatten(params)
    assert all(v.dtype == np.float32 for v in flat.values())
    np.testing.assert_array_equal(flat["head/kernel"], sd16["head.weight"].astype(np.float32).T)
    back = conv.params_to_torch(params, cfg, dtype="bfloat16")
    assert_same_state_dict(back, sd16)
    out = str(tmp_path / "back.pth")
    save_state_dict(back, out)
    assert_same_state_dict(load_state_dict(out), sd16)


def test_torch_tensors_convert_like_numpy_arrays_bf16_included(official):
    """A state dict of torch tensors (as a caller holding a torch model has it) converts exactly as its numpy
    arrays do: torch_io.as_numpy keeps bf16 values (numpy has no bf16 of its own)."""
    torch = pytest.importorskip("torch")
    import ml_dtypes

    cfg, sd = official
    sd16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    tensors16 = {k: t.to(torch.bfloat16) for k, t in tensors.items()}
    assert as_numpy(tensors16["head.weight"]).dtype == ml_dtypes.bfloat16
    for given, want in ((tensors, sd), (tensors16, sd16)):
        got, ref = (fileio.flatten(conv.torch_to_params(x, cfg)) for x in (given, want))
        assert sorted(got) == sorted(ref)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
