import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from infinity_jax import parallel


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")), (8, 16))
        n = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (16,))
        return x @ w * n


def _specs(preset, mesh):
    abstract = jax.eval_shape(_Tiny().init, jax.random.key(0), jnp.ones((2, 8)))
    return jax.tree.map(lambda s: s.spec, parallel.param_shardings(abstract, mesh, preset))["params"]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_presets_map_logical_axes_to_mesh_axes():
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    assert mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
    assert _specs("dp", mesh)["w"] == jax.sharding.PartitionSpec(None, None)
    assert _specs("fsdp", mesh)["w"] == jax.sharding.PartitionSpec("fsdp", None)
    assert _specs("fsdp_tp", mesh)["w"] == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert _specs("fsdp_tp", mesh)["scale"] == jax.sharding.PartitionSpec(None)
    x = jax.device_put(np.zeros((8, 3)), parallel.batch_sharding(mesh, 2))
    assert x.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)


def test_bad_mesh_and_preset_raise_clear_errors():
    with pytest.raises(ValueError, match="does not match"):
        parallel.make_mesh(data=3, fsdp=1, tensor=1, devices=jax.devices()[:2])
    with pytest.raises(ValueError, match="sharding preset"):
        parallel.logical_rules("zero3")
