"""`bench sample --memory` and `bench train --memory`: XLA's memory analysis of the compiled programs,
from abstract inputs (nothing runs, nothing big is allocated), and figures that add up."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from infinity_jax import commands, sample
from infinity_jax.benchmarks import sampler as sampler_lib
from infinity_jax.convert import infinity as conv_inf
from infinity_jax.model.transformer import InfinityConfig

FAST = {"xla_backend_optimization_level": 0}  # as tests/test_sample.py: the same program, compiled faster
SCHEDULE = "1x1,2x2,4x4"
TINY = InfinityConfig.from_dict(conv_inf.load_config("tiny").model)
needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fails the test if a compiled program is called or an array is put on a device; on exit, checks
    that no new device array of more than a few bytes is alive."""

    def refuse(*args, **kwargs):
        raise AssertionError("--memory must not run or place anything")

    before = {id(x) for x in jax.live_arrays()}
    monkeypatch.setattr(jax.stages.Compiled, "__call__", refuse)
    monkeypatch.setattr(jax, "device_put", refuse)
    yield
    monkeypatch.undo()
    new = [x for x in jax.live_arrays() if id(x) not in before and x.nbytes > 64]
    assert not new, [(x.shape, x.dtype) for x in new]


def _kv_formula(cfg: InfinityConfig, rows: int, tokens: int) -> int:
    return 2 * cfg.depth * rows * tokens * cfg.num_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize


def _check_totals(r: dict) -> None:
    assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["alias_bytes"]
    assert min(r[k] for k in ("argument_bytes", "output_bytes", "temp_bytes")) > 0


def test_bench_sample_memory_prints_the_figures(tmp_path, capsys, monkeypatch, nothing_runs):
    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    out = tmp_path / "rows.json"
    assert (
        commands.main(
            [
                "bench",
                "sample",
                "--memory",
                "--config",
                "tiny",
                "--schedule",
                SCHEDULE,
                "--vae-config",
                "none",
                "--batch",
                "8",
                "--text-len",
                "16",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["config", "pn", "image", "batch", "args"] and "KV" in lines[0]
    assert lines[1].split()[:4] == ["tiny", SCHEDULE, "64x64", "8"]
    assert "per device" in lines[2]
    (r,) = json.loads(out.read_text())
    _check_totals(r)
    shards = jax.device_count()  # dp: the batch is split over every device
    assert r["batch"] == 8 and r["rows"] == 16 and r["tokens"] == 21 and not r["vae"]
    assert r["kv_cache_bytes"] == _kv_formula(TINY, 16, 21) == 2 * 2 * 16 * 21 * 2 * 32 * 4
    assert r["kv_cache_bytes_per_device"] == r["kv_cache_bytes"] // shards
    assert r["temp_over_kv_cache"] == pytest.approx(r["temp_bytes"] / r["kv_cache_bytes_per_device"])
    text_bytes = 8 // shards * 16 * (TINY.text_channels * 4 + 1) + 8 // shards * 4  # features, mask, seeds
    assert r["params_bytes"] == r["params_bytes_per_device"]  # dp: replicated
    assert r["argument_bytes"] >= r["params_bytes"] + text_bytes
    assert r["temp_bytes"] >= r["kv_cache_bytes_per_device"]  # the cache lives inside the program
    # the table shows the same figures in GiB
    assert lines[1].split()[9] == sampler_lib.gib(r["total_bytes"])


@needs8
def test_sampler_memory_shards_the_params_and_halves_the_rows_without_guidance(nothing_runs):
    kw = dict(schedule_spec=SCHEDULE, batch=8, text_len=16, compiler_options=FAST)
    fsdp = sampler_lib.sampler_memory("tiny", rules="fsdp", vae_spec="tiny", **kw)
    _check_totals(fsdp)
    assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and fsdp["vae"]
    assert fsdp["params_bytes_per_device"] < fsdp["params_bytes"] / 4  # split over 8 (norms etc. replicated)
    assert fsdp["argument_bytes"] >= fsdp["params_bytes_per_device"] + 8 * 64 * 64 * 4  # + the VAE decoder
    assert fsdp["output_bytes"] >= 64 * 64 * 3  # this device's image (uint8)
    no_cfg = sampler_lib.sampler_memory("tiny", rules="dp", cfg=1.0, **kw)
    assert no_cfg["rows"] == 8 and no_cfg["kv_cache_bytes"] == _kv_formula(TINY, 8, 21) == fsdp["kv_cache_bytes"] // 2


def test_bench_train_memory_prints_the_figures(tmp_path, capsys, nothing_runs):
    out = tmp_path / "row.json"
    assert (
        commands.main(
            [
                "bench",
                "train",
                "--memory",
                "--config",
                "infinity:tiny",
                "--schedule",
                SCHEDULE,
                "--batch",
                "8",
                "--text-len",
                "16",
                "--rules",
                "fsdp",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["config", "image", "batch", "params", "mesh", "state"]
    assert lines[1].split()[:4] == ["infinity:tiny", "64x64", "8", "272,836"]
    (r,) = json.loads(out.read_text())
    _check_totals(r)
    n = jax.device_count()
    assert r["mesh"] == {"data": 1, "fsdp": n, "tensor": 1}
    state_bytes = 3 * 4 * r["params"] + 4 + 4 + 4 + 8  # fp32 params and AdamW moments; step, counts, rng
    if n == 8:  # the params and moments are split (norms, tables too small to split stay whole)
        assert state_bytes / 8 < r["state_bytes_per_device"] < state_bytes / 4
    assert r["alias_bytes"] == r["state_bytes_per_device"]  # the donated state is updated in place
    assert r["argument_bytes"] == r["state_bytes_per_device"] + r["batch_bytes_per_device"]
    assert r["batch_bytes_per_device"] == 8 // n * (4 * 4 * TINY.codebook_dim * 4 + 16 * (128 * 4 + 1))  # latent, text


@pytest.mark.parametrize("batch", [1, 4])
def test_sampler_temporaries_stay_within_twice_the_kv_cache_at_1m(batch):
    """The contract of issue 28: infinity_layer12 (bf16, scanned) sampling at 1024x1024 on one
    device keeps its temporaries within 2x its KV cache (the cache is one buffer written in place;
    attention keeps no score matrix). Before: 13.5x (9.8 GiB at batch 1, 39.1 GiB at batch 4)."""
    cfg = InfinityConfig.from_dict(conv_inf.load_config("infinity_layer12,dtype=bfloat16,scan").model)
    from flax import linen as nn

    from infinity_jax import schedules
    from infinity_jax.model.transformer import abstract_params

    sched = schedules.official_schedule(1.0, "1M")
    sampler = sample.Sampler(cfg, sched, vae=None, compiler_options=FAST)
    S = jax.ShapeDtypeStruct
    sp = sample.SamplingParams(*(S(np.shape(v), np.asarray(v).dtype) for v in sample.sampling_params(len(sched))))
    exe, _ = sampler.compile(
        nn.unbox(abstract_params(cfg)),
        None,
        S((batch, 64, cfg.text_channels), np.float32),
        S((batch, 64), np.bool_),
        S((batch,), np.uint32),
        sp,
    )
    kv = _kv_formula(cfg, 2 * batch, schedules.num_tokens(sched))
    temp = exe.memory_analysis().temp_size_in_bytes
    assert kv <= temp <= 2 * kv, (temp / 2**30, kv / 2**30)


def test_bench_train_takes_the_config_schedule_and_its_vae_stride():
    """`bench train --config shapes` benchmarks the shapes run's own schedule and labels it with the
    stride-4 VAE's image size (32x32), not an official 256x256 budget at stride 16."""
    from infinity_jax import config_util, schedules
    from infinity_jax.benchmarks.training import schedule_and_stride

    cfg = config_util.load_config("shapes")
    sched, stride, label = schedule_and_stride(cfg, None, None)
    assert schedules.image_size(sched, stride) == (32, 32) and stride == 4 and label == str(cfg.schedule)
    sched, stride, label = schedule_and_stride(config_util.load_config("infinity:tiny"), None, "0.06M")
    assert schedules.image_size(sched, stride) == (256, 256) and label == "0.06M"
    sched, _, label = schedule_and_stride(cfg, "1x1,2x2", None)
    assert sched == ((1, 1, 1), (1, 2, 2)) and label == "1x1,2x2"
