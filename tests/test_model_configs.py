"""Model configs: every official size, with the official parameter counts from shapes only."""

from __future__ import annotations

import os

import pytest

from infinity_jax.configs import infinity as configs
from infinity_jax.model.transformer import InfinityConfig, count_params


def test_every_official_size_is_a_named_config():
    # (depth, width, heads) of the official factory functions / tools/run_infinity.py
    want = {
        "infinity_2b": (32, 2048, 16),
        "infinity_8b": (40, 3584, 28),
        "infinity_20b": (58, 4608, 36),
        "infinity_layer12": (12, 768, 8),
        "infinity_layer16": (16, 1152, 12),
        "infinity_layer24": (24, 1536, 16),
        "infinity_layer32": (32, 2080, 20),
        "infinity_layer40": (40, 2688, 24),
        "infinity_layer48": (48, 3360, 28),
    }
    for name, (depth, width, heads) in want.items():
        m = InfinityConfig.from_dict(configs.get_config(name).model)
        assert (m.depth, m.embed_dim, m.num_heads) == (depth, width, heads)
        # the released 8B reads the d56 tokenizer (14 bits at patch 8) 2x2 per token; every other size d 32
        want_d = (56, 1) if name == "infinity_8b" else (32, 0)
        assert (m.codebook_dim, m.apply_spatial_patchify) == want_d
        assert m.text_channels == 2048 and m.shared_aln and m.cos_attn
        assert m.rope2d_normalized_by_hw == 2 and m.lvl_embed_first_block_only
        assert m.block_chunks == {"infinity_20b": 1, "infinity_2b": 8, "infinity_8b": 8}.get(name, 4)


def test_2b_parameter_count_equals_official():
    # 2,204,564,032 = sum(p.numel() for p in Infinity(...).parameters()) of the official class built on the
    # 'meta' device with the released 2B arguments (infinity_2b: depth 32, width 2048, 16 heads, block_chunks 8,
    # text_channels 2048, text_maxlen 512, shared_aln, d 32, use_bit_label, rope2d mode 2), torch 2.13 CPU,
    # official tree sha256 95d98ef9...198c. Counted from our shapes with jax.eval_shape: nothing is allocated.
    assert count_params(InfinityConfig.from_dict(configs.get_config("infinity_2b").model)) == 2_204_564_032
    assert configs.get_config("infinity_2b").official_params == 2_204_564_032


def test_8b_parameter_count_equals_official_at_the_released_recipe():
    # 8,375,791,824 = sum(p.numel() for p in Infinity(...).parameters()) of the official class (commit 4c27bbb)
    # built on the 'meta' device with tools/run_infinity.py's infinity_8b arguments (depth 40, width 3584, 28
    # heads, block_chunks 8) and the released recipe (text 2048 x 512, shared_aln, use_bit_label, rope2d mode 2,
    # apply_spatial_patchify=1) with a stand-in vae_local of embed_dim 14 (the d56 tokenizer): word_embed
    # (3584, 56), head (112, 3584). The same build at embed_dim 32 without patchify: 8,375,533,728.
    m = InfinityConfig.from_dict(configs.get_config("infinity_8b").model)
    assert (m.codebook_dim, m.apply_spatial_patchify, m.vae_codebook_dim) == (56, 1, 14)
    assert count_params(m) == configs.OFFICIAL_PARAMS["infinity_8b"] == 8_375_791_824
    assert configs.get_config("8b").official_params == 8_375_791_824
    import dataclasses

    d32 = dataclasses.replace(m, codebook_dim=32, apply_spatial_patchify=0)
    assert count_params(d32) == configs.OFFICIAL_PARAMS_8B_D32 == 8_375_533_728


def test_tiny_parameter_count_equals_fixture():
    assert count_params(InfinityConfig.from_dict(configs.get_config("tiny").model)) == 272_836


def test_execution_options_and_bad_names():
    m = configs.get_config("infinity_2b,scan,remat=attn,dtype=bfloat16").model
    assert m.scan_layers and m.remat == "attn" and m.dtype == "bfloat16"
    with pytest.raises(ValueError, match="infinity_2b"):
        configs.get_config("infinity_3b")
    with pytest.raises(ValueError, match="unknown Infinity model options"):
        InfinityConfig.from_dict({"depth": 2, "widht": 3})


def test_params_counts_every_config_users_sweep():
    """`infinity-jax params` loads specs with config_util, as train does: configs/shapes.py (with sweep
    arguments) and configs/zoo.py count too, from an installed console script (python -P: the working
    directory is not on sys.path; configs come from the installed package infinity_jax.configs)."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys; from infinity_jax.commands import main\n"
        "sys.path[:] = [p for p in sys.path if p not in ('', sys.argv[1])]  # as an installed console script\n"
        "sys.exit(main(sys.argv[2:]))"
    )
    specs = [
        "configs/shapes.py",
        "configs/shapes.py:layers=4,width=256,heads=8",
        "configs/zoo.py:layer12",
        "tiny",
        "8b",
        "zoo:8b,vae=d32",
    ]
    argv = ["params", *(a for s in specs for a in ("--config", s))]
    done = subprocess.run(
        [sys.executable, "-P", "-c", code, repo, *argv], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert list(rows) == specs
    assert rows["configs/shapes.py"][:3] == ["3", "128", "4"]
    assert rows["configs/shapes.py:layers=4,width=256,heads=8"][:3] == ["4", "256", "8"]
    assert rows["configs/zoo.py:layer12"][:4] == ["12", "768", "8", "125,185,696"]  # the official layer12
    assert rows["tiny"][3:5] == ["272,836", "272,836"] and rows["tiny"][5] == "bsq_vae:tiny"
    # the released 8B beside its tokenizer: 81,624,209 = sum(p.numel() for p in vae.parameters()) of the official
    # vae_model(codebook_dim=14, patch_size=8, ch_mult [1, 2, 4, 4]) (commit 4c27bbb); d32's: 110,118,051
    assert rows["8b"][3:] == ["8,375,791,824", "8,375,791,824", "bsq_vae:d56", "81,624,209"]
    assert rows["zoo:8b,vae=d32"][3:] == ["8,375,533,728", "-", "bsq_vae:d32", "110,118,051"]
    assert rows["configs/zoo.py:layer12"][5:] == ["bsq_vae:d32", "110,118,051"]


def test_spatial_patchify_model_reads_a_quarter_of_its_bits_from_a_patch_8_tokenizer():
    """Official apply_spatial_patchify=1 (the released 8B with the d56 tokenizer: 14 bits at patch 8, 56
    per token); a tokenizer that does not fit is one error naming both sides (runs.build_vae, the sampler)."""
    import dataclasses

    import ml_collections

    from infinity_jax import runs
    from infinity_jax.configs import bsq_vae

    m8 = InfinityConfig.from_dict(configs.get_config("infinity_8b").model)
    m8 = dataclasses.replace(m8, codebook_dim=56, apply_spatial_patchify=1)
    d56 = bsq_vae.get_config("d56")
    assert (d56.codebook_dim, d56.patch_size, d56.ch_mult) == (14, 8, (1, 2, 4, 4))
    assert d56.checkpoint == "infinity_vae_d56_f8_14_patchify.pth" and m8.vae_codebook_dim == 14
    m8.check_tokenizer(d56.codebook_dim, d56.patch_size)
    with pytest.raises(ValueError, match=r"codebook_dim=32 does not match model.codebook_dim=56, apply_spatial_pat"):
        m8.check_tokenizer(32, 8)
    with pytest.raises(ValueError, match="patch_size=16 does not match .*expected 8"):
        m8.check_tokenizer(14, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        dataclasses.replace(m8, codebook_dim=30)
    with pytest.raises(ValueError, match="apply_spatial_patchify=2"):
        dataclasses.replace(m8, apply_spatial_patchify=2)
    model = dict(configs.get_config("tiny").model.to_dict(), codebook_dim=32, apply_spatial_patchify=1)
    cfg = ml_collections.ConfigDict(dict(model=model, vae=dict(config="bsq_vae:tiny", params=""), seed=0))
    with pytest.raises(ValueError, match=r"VAE \(from 'bsq_vae:tiny'\) codebook_dim=32 does not match"):
        runs.build_vae(cfg)
    cfg.vae.config = "bsq_vae:tiny_patchify"
    assert runs.build_vae(cfg)[1].codebook_dim == 8
