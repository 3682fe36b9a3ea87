"""Checkpointer: restore onto another mesh, data-iterator state (dict, bytes, grain), config, keep-N, errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from infinity_jax import parallel
from infinity_jax.checkpoint import Checkpointer, load_config
from infinity_jax.errors import UsageError
from infinity_jax.train.state import TrainState, state_shardings

LOGICAL = {"w": P("embed", "mlp"), "b": P("mlp")}


def _state(mesh, rules, shape=(16, 32), seed=0):
    tx = optax.adamw(1e-3)

    def init():
        k = jax.random.key(seed)
        params = {"w": jax.random.normal(k, shape), "b": jnp.arange(shape[1], dtype=jnp.float32)}
        return TrainState.create(params, tx, jax.random.key(seed + 1), ema_decay=0.5)

    sh = state_shardings(jax.eval_shape(init), {"w": LOGICAL["w"], "b": LOGICAL["b"]}, mesh, rules)
    return jax.jit(init, out_shardings=sh)(), sh


def _target(state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_restore_onto_another_mesh_is_exact_and_takes_the_target_sharding(tmp_path):
    src, _ = _state(parallel.make_mesh(2, 2, 2), "fsdp_tp")
    src = src.replace(step=jnp.asarray(7, jnp.int32))
    cfg = ml_collections.ConfigDict({"model": {"depth": 2, "schedule": (1, 2, 4)}, "seed": 3})
    ck = Checkpointer(tmp_path)
    ck.save(src, {"index": 7, "epoch": 1}, cfg, wait=True)
    assert src.params["w"].sharding.spec == P("fsdp", "tensor")

    dst_mesh = parallel.make_mesh(2, 1, 1, devices=jax.devices()[:2])
    fresh, sh = _state(dst_mesh, "dp", seed=5)
    restored, data_state = Checkpointer(tmp_path).restore(_target(fresh, sh))
    assert int(restored.step) == 7 and data_state == {"index": 7, "epoch": 1}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(src)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert restored.params["w"].sharding.spec == P(None, None) and len(restored.params["w"].devices()) == 2
    assert restored.opt_state[0].mu["w"].sharding.spec == P(None, None)
    assert restored.tx is fresh.tx
    loaded = load_config(tmp_path)
    assert loaded.model.depth == 2 and list(loaded.model.schedule) == [1, 2, 4] and loaded.seed == 3


def test_keep_last_n_bytes_iterator_state_and_shape_mismatch(tmp_path):
    mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    st, sh = _state(mesh, "dp")
    ck = Checkpointer(tmp_path, keep=2, async_save=True)
    for step in (1, 2, 3):
        ck.save(st.replace(step=jnp.asarray(step, jnp.int32)), b'{"pos": %d}' % step, {"a": 1})
    ck.wait()
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    _, data_state = ck.restore(_target(st, sh), step=2)
    assert data_state == b'{"pos": 2}'
    ck.close()
    wrong, wrong_sh = _state(mesh, "dp", shape=(16, 8))
    # one line for the command line (a UsageError), naming the first differing param (not its Adam moments)
    with pytest.raises(UsageError, match=r"/3: 'params/b' has shape \(32,\) there, the config's model gives \(8,\)"):
        Checkpointer(tmp_path).restore(_target(wrong, wrong_sh))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Checkpointer(tmp_path / "empty").restore(_target(st, sh))


def test_grain_iterator_state_round_trips(tmp_path):
    grain = pytest.importorskip("grain")
    it = iter(grain.MapDataset.range(100).shuffle(seed=1).batch(4).to_iter_dataset())
    for _ in range(3):
        next(it)
    mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    st, sh = _state(mesh, "dp")
    ck = Checkpointer(tmp_path)
    ck.save(st, it.get_state(), {}, wait=True)
    expected = next(it)
    it2 = iter(grain.MapDataset.range(100).shuffle(seed=1).batch(4).to_iter_dataset())
    it2.set_state(ck.restore(_target(st, sh))[1])
    np.testing.assert_array_equal(next(it2), expected)


def test_relative_directory_saves_and_reads_params_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # orbax's writer refuses relative paths; the Checkpointer makes them absolute
    mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    st, _ = _state(mesh, "dp")
    with Checkpointer("run/checkpoints", async_save=False) as ck:
        ck.save(st.replace(step=jnp.asarray(4, jnp.int32)), None, {"model": {"depth": 2}}, wait=True)
    assert ck.directory == tmp_path / "run" / "checkpoints"
    reader = Checkpointer("run/checkpoints", read_only=True)
    params, config, step, key = reader.restore_params()
    assert (step, key, config) == (4, "ema_params", {"model": {"depth": 2}})
    np.testing.assert_array_equal(params["w"], np.asarray(st.ema_params["w"]))
    assert isinstance(params["w"], np.ndarray)
    assert reader.restore_params(prefer_ema=False)[3] == "params" and load_config("run/checkpoints").model.depth == 2
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Checkpointer("nowhere", read_only=True).restore_params()
    assert not (tmp_path / "nowhere").exists()  # read-only: creates nothing
