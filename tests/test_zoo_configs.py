"""The model zoo and mesh presets: every named config builds (shapes only), matches the official
parameter counts, and every mesh preset divides its model's params and fits the memory estimate."""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from infinity_jax import config_util, parallel, run_config, schedules
from infinity_jax.configs import bsq_vae, mesh_presets, zoo
from infinity_jax.configs import infinity as infinity_configs
from infinity_jax.data.pipeline import DataConfig
from infinity_jax.model import transformer as T
from infinity_jax.text.t5 import T5Config
from infinity_jax.train.step import StepOptions


def abstract(model_cfg: T.InfinityConfig):
    """Boxed ShapeDtypeStructs of the params (jax.eval_shape of the init; nothing allocated).
    remat, dtype and drop path do not change shapes: one trace per architecture. Traced with
    scan_layers: one block is traced and its params stacked on a leading (replicated) 'layers'
    axis -- the same per-block shapes and total, ~10x faster for 58 blocks; the per-block tree
    (the configs' default) is traced for layer12 in the vocabulary test."""
    return _abstract(
        dataclasses.replace(model_cfg, remat="none", dtype="float32", drop_path_rate=0.0, scan_layers=True)
    )


@functools.lru_cache(maxsize=None)
def _abstract(model_cfg: T.InfinityConfig):
    return T.abstract_params(model_cfg)


def n_params(model_cfg: T.InfinityConfig) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract(model_cfg)))))


def check_buildable(cfg) -> T.InfinityConfig:
    """Everything `infinity-jax train` derives from a config before touching files, shapes only."""
    m = T.InfinityConfig.from_dict(cfg.model)
    vcfg = config_util.load_config(cfg.vae.config, cfg.vae.overrides)
    m.check_tokenizer(vcfg.codebook_dim, vcfg.patch_size)  # as runs.build_vae: d (or d / 4 at patch 8)
    # the transformer's last scale: the tokenizer's grid, halved under apply_spatial_patchify
    latent = cfg.data.image_size // (vcfg.patch_size * (2 if m.apply_spatial_patchify else 1))
    sched = schedules.validate(schedules.official_schedule(cfg.data.h_div_w, cfg.schedule), (latent, latent))
    assert len(sched) == schedules.PIXEL_BUDGETS[cfg.schedule]
    data = {k: v for k, v in cfg.data.to_dict().items() if k != "h_div_w"}
    DataConfig.from_dict({**data, "batch_size": 1})
    StepOptions.from_config(cfg.step)
    assert T5Config.preset(cfg.text.preset, **cfg.text.model.to_dict()).d_model == m.text_channels
    return m


@pytest.mark.parametrize("name", zoo.MODELS)
def test_every_official_model_is_a_buildable_zoo_config_with_the_official_param_count(name):
    cfg = config_util.load_config(f"zoo:{name}")
    m = check_buildable(cfg)
    assert n_params(m) == infinity_configs.OFFICIAL_PARAMS[name]  # the released recipe (8b: d56, patchify)
    assert (cfg.schedule, cfg.data.image_size, cfg.model.dtype) == ("0.06M", 256, "bfloat16")
    vae = "infinity_vae_d56_f8_14_patchify.pth" if name == "infinity_8b" else "infinity_vae_d32.pth"
    assert cfg.vae.params == f"weights/{vae}"


def test_tokenizer_vocabularies_set_the_bit_width_everywhere():
    base_cfg = T.InfinityConfig.from_dict(config_util.load_config("zoo:layer12").model)
    base = n_params(base_cfg)
    assert not base_cfg.scan_layers and T.count_params(base_cfg) == base  # the per-block tree: same count
    for vae in zoo.VAES:
        if vae in zoo.PATCHIFY_VAES:  # the released 8B's only: test_released_8b_reads_the_d56_tokenizer
            with pytest.raises(ValueError, match=f"vae='{vae}' with infinity_layer12: a patch-8 tokenizer"):
                zoo.get_config(f"layer12,vae={vae}")
            continue
        cfg = config_util.load_config(f"zoo:layer12,vae={vae}")
        d = bsq_vae.get_config(vae).codebook_dim
        m = check_buildable(cfg)
        assert m.codebook_dim == d and cfg.vae.config == f"bsq_vae:{vae}"
        # only the bit embedding (d -> C, with bias) and the bit head (C -> 2d, with bias) depend on d
        assert n_params(m) - base == (d - 32) * m.embed_dim + (d - 32) * 2 * (m.embed_dim + 1)


def test_released_8b_reads_the_d56_tokenizer_at_every_pixel_budget():
    """zoo:8b is the released 8B: the d56 tokenizer (14 bits at patch 8) read 2x2 per token, codebook_dim 56;
    a token still covers 16 px, so 0.25M is 512 px (VAE grid 64, last scale 32) and 1M is 1024 px."""
    for pn, (scales, side) in {"0.06M": (7, 256), "0.25M": (10, 512), "1M": (13, 1024)}.items():
        cfg = config_util.load_config(f"zoo:8b,pn={pn}")
        m = check_buildable(cfg)
        assert (m.codebook_dim, m.apply_spatial_patchify, cfg.vae.config) == (56, 1, "bsq_vae:d56")
        assert cfg.vae.params == "weights/infinity_vae_d56_f8_14_patchify.pth"
        assert (cfg.data.image_size, schedules.PIXEL_BUDGETS[cfg.schedule]) == (side, scales)
        assert schedules.official_schedule(1.0, pn)[-1][1] * 16 == side  # 2 x 8 px per token
    assert zoo.get_config("8b").model.to_dict() == zoo.get_config("8b,vae=d56").model.to_dict()
    d32 = check_buildable(config_util.load_config("zoo:8b,vae=d32"))  # the 8B size on a patch-16 tokenizer
    assert (d32.codebook_dim, d32.apply_spatial_patchify) == (32, 0)
    assert n_params(d32) == infinity_configs.OFFICIAL_PARAMS_8B_D32
    with pytest.raises(ValueError, match="vae='d56' with infinity_2b: .*infinity_8b only"):
        zoo.get_config("2b,vae=d56")


def test_pixel_budgets_set_schedule_and_image_size():
    for pn, (scales, side) in {"0.06M": (7, 256), "0.25M": (10, 512), "0.60M": (12, 768), "1M": (13, 1024)}.items():
        cfg = config_util.load_config(f"zoo:2b,pn={pn}")
        check_buildable(cfg)
        assert (cfg.data.image_size, cfg.data.pn, schedules.PIXEL_BUDGETS[cfg.schedule]) == (side, pn, scales)


def test_bad_zoo_arguments_name_the_choices():
    with pytest.raises(ValueError, match="infinity_2b"):
        zoo.get_config("infinity_3b")
    with pytest.raises(ValueError, match="d16"):
        zoo.get_config("2b,vae=d48")
    with pytest.raises(ValueError, match="0.25M"):
        zoo.get_config("2b,pn=2M")
    with pytest.raises(ValueError, match="h100x8-fsdp"):
        zoo.get_config("2b,mesh=v7-8")
    with pytest.raises(ValueError, match="unknown keys"):
        zoo.get_config("2b,batch=4")


def sharded_dims_divide(abstract_params, rules: str, axis_sizes: dict[str, int]) -> list[str]:
    """Params whose sharded dims do not divide by their mesh axes' sizes (computed, no devices)."""
    specs = nn.get_partition_spec(abstract_params)
    table = parallel.logical_rules(rules)
    bad = []
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    flat_specs = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
    shapes = jax.tree.leaves(nn.unbox(abstract_params))
    for (path, spec), leaf in zip(flat_specs, shapes):
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), table)
        for dim, axes in zip(leaf.shape, tuple(mesh_spec) + (None,) * len(leaf.shape)):
            axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            if dim % math.prod(axis_sizes[a] for a in axes):
                bad.append(f"{jax.tree_util.keystr(path)} {leaf.shape} over {axes}")
    return bad


@pytest.mark.parametrize("name", mesh_presets.NAMES)
def test_mesh_preset_shards_its_model_evenly_and_fits_the_memory_estimate(name):
    p = mesh_presets.PRESETS[name]
    cfg = config_util.load_config(f"zoo:{p.model},pn={p.pn},mesh={name}")
    m = check_buildable(cfg)
    assert (cfg.parallel.rules, cfg.parallel.data, cfg.parallel.fsdp, cfg.parallel.tensor) == (
        p.rules,
        p.data,
        p.fsdp,
        p.tensor,
    )
    assert cfg.train.global_batch == p.per_device_batch * p.data * p.fsdp and m.remat == "full"
    bad = sharded_dims_divide(abstract(m), p.rules, {"data": p.data, "fsdp": p.fsdp, "tensor": p.tensor})
    assert not bad, bad[:5]
    if p.rules == "fsdp_tp":
        assert m.num_heads % p.tensor == 0
    shape = dict(
        params=n_params(m),
        depth=m.depth,
        embed_dim=m.embed_dim,
        tokens=schedules.num_tokens(schedules.official_schedule(1.0, p.pn)),
        bits=m.codebook_dim,
    )
    if name == "h100x8-dp":  # the helper behind `python -m infinity_jax.run_config` agrees (one extra trace)
        assert run_config.model_shape(p.model, p.pn) == shape
    ok, est = mesh_presets.fits(p, **shape)
    assert ok, f"{name}: estimated {est:.1f} GiB"
    assert p.per_device_batch == mesh_presets.suggested_batch(p, **shape)  # the docstring's rule
    assert mesh_presets.table_row(p, **shape).rstrip() + "\n" in mesh_presets.__doc__  # and its table


def test_h100_presets_build_real_meshes_and_shardings_on_8_devices():
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    for name in ("h100x8-dp", "h100x8-fsdp", "h100x8-tp"):
        p = mesh_presets.PRESETS[name]
        cfg = config_util.load_config(f"zoo:{p.model},mesh={name}")
        mesh = parallel.make_mesh(cfg.parallel.data, cfg.parallel.fsdp, cfg.parallel.tensor, jax.devices()[:8])
        params = abstract(T.InfinityConfig.from_dict(cfg.model))
        shardings = parallel.param_shardings(params, mesh, cfg.parallel.rules)
        per_device = sum(
            int(np.prod(s.shard_shape(x.shape)))
            for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(nn.unbox(params)))
        )
        total = n_params(T.InfinityConfig.from_dict(cfg.model))
        shards = {"dp": 1, "fsdp": 8, "fsdp_tp": 8}[p.rules]
        # nearly every weight is split: per-device params within 2 % of total / shards (norms, biases replicate)
        assert total / shards <= per_device <= total / shards * 1.02 + 1e5, (name, per_device, total)
