"""Compiling for a platform this machine does not have (infinity_jax/targets.py): kernels follow the target,
the training step lowers for TPU with the Pallas kernels as Mosaic calls (checked on CPU without libtpu),
and `bench train|sample --memory --topology` compile over a topology's devices. The compile itself by
libtpu's TPU compiler is not a test (CI has no libtpu): docs/performance.md has its figures and command."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from infinity_jax import commands, config_util, parallel, targets
from infinity_jax.model import attention as A
from infinity_jax.model import transformer as T
from infinity_jax.train import step as step_lib

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def test_the_target_platform_picks_the_kernels():
    bf16 = jnp.bfloat16
    assert targets.platform() == jax.default_backend() == "cpu"
    assert A.select_implementation("auto", bf16, 128) == "chunked"
    with targets.compiling_for("tpu"):
        assert targets.platform() == "tpu" and A.select_implementation("auto", bf16, 128) == "splash"
        with targets.compiling_for("gpu"):
            assert A.select_implementation("auto", bf16, 128) == "cudnn"
        with targets.compiling_for(None):  # this machine's: what the outer context says
            assert targets.platform() == "tpu"
    assert targets.platform() == "cpu"
    with pytest.raises(ValueError, match="platform 'npu': expected one of"):
        with targets.compiling_for("npu"):
            pass


def _tpu_lowering_of_the_train_gradient(platform):
    """The tiny model's teacher-forced loss gradient, bf16, under an fsdp mesh of 8 host devices, traced
    while compiling for `platform` and lowered for TPU (no TPU compiler needed): its custom-call targets."""
    cfg = T.InfinityConfig.from_dict(config_util.load_config("infinity:tiny,dtype=bfloat16,scan").model)
    sched = ((1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8))
    model = T.Infinity(cfg)
    loss_fn = step_lib.make_loss_fn(model, sched)
    mesh = parallel.make_mesh(fsdp=8)
    params = nn.unbox(T.abstract_params(cfg))
    batch = {
        "latent": jax.ShapeDtypeStruct((8, 8, 8, cfg.vae_codebook_dim), jnp.float32),
        "text_features": jax.ShapeDtypeStruct((8, 16, cfg.text_channels), jnp.float32),
        "text_mask": jax.ShapeDtypeStruct((8, 16), jnp.bool_),
    }
    shard = {k: parallel.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}
    fn = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, jax.random.key(0))[0]), in_shardings=(None, shard))
    with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.logical_rules("fsdp")), targets.compiling_for(platform):
        text = fn.trace(params, batch).lower(lowering_platforms=("tpu",)).as_text()
    return text


@needs8
def test_the_train_step_lowers_for_tpu_with_mosaic_kernels():
    """Compiling for TPU, attention is Pallas splash compiled for the TPU (Mosaic custom calls: forward,
    dQ and dKV of self- and cross-attention), run per shard (shard_map), not the interpreter's plain HLO;
    traced for this CPU the same program has no kernel call at all."""
    tpu = _tpu_lowering_of_the_train_gradient("tpu")
    assert tpu.count("tpu_custom_call") >= 6 and "sdy.manual_computation" in tpu
    assert "tpu_custom_call" not in _tpu_lowering_of_the_train_gradient(None)


def test_a_topology_that_cannot_be_had_is_a_usage_error(capsys, monkeypatch):
    """No libtpu (jax's own error) or a name libtpu does not know: one line naming the topology and the fix."""
    from jax.experimental import topologies

    def no_libtpu(**kwargs):
        raise RuntimeError("JAX TPU support not installed; cannot generate TPU topology.")

    monkeypatch.setattr(topologies, "get_topology_desc", no_libtpu)
    assert commands.main(["bench", "train", "--memory", "--topology", "v5e:2x2", "--config", "infinity:tiny"]) == 2
    err = capsys.readouterr().err
    assert "TPU topology 'v5e:2x2': JAX TPU support not installed" in err and "needs libtpu" in err
    assert len(err.strip().splitlines()) == 1


def test_a_topology_is_only_compiled_for(capsys):
    for cmd in (["train", "--config", "infinity:tiny"], ["sample", "--config", "tiny"]):
        assert commands.main(["bench", *cmd, "--topology", "v5e:2x2"]) == 2
        assert "can only be compiled for (--memory)" in capsys.readouterr().err


@needs8
@pytest.mark.parametrize("what", ["train", "sample"])
def test_bench_memory_compiles_over_the_topology_devices(what, tmp_path, monkeypatch):
    """--topology's plumbing: the mesh is built over the topology's devices (here 4 of the host devices
    stand in for a v5e:2x2, whose compiler this machine may not have), traced while compiling for TPU
    (here recorded, not applied: the CPU compiler cannot build TPU kernels), and the row names them."""
    seen = []
    monkeypatch.setattr(targets, "compile_target", lambda name: targets.CompileTarget(jax.devices()[:4], "tpu", {}))
    real = targets.compiling_for
    monkeypatch.setattr(targets, "compiling_for", lambda name: seen.append(name) or real(None))
    out = tmp_path / "row.json"
    args = {
        "train": ["--config", "infinity:tiny", "--schedule", "1x1,2x2,4x4", "--batch", "8"],
        "sample": ["--config", "tiny", "--schedule", "1x1,2x2", "--batch", "4", "--vae-config", "none"],
    }[what]
    assert commands.main(["bench", what, "--memory", "--topology", "v5e:2x2", *args, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["num_devices"] == 4 and np.prod(list(row["mesh"].values())) == 4 and "tpu" in seen
