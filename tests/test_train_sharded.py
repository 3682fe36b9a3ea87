"""The Infinity training step under data parallel, FSDP and FSDP + tensor parallel on 8 simulated
devices follows the single-device loss curve, and its params are sharded as the rules say."""

import jax
import numpy as np
import pytest
from flax import linen as nn

from infinity_jax import config_util, parallel
from infinity_jax.model import transformer as T
from infinity_jax.train import loop
from infinity_jax.train import step as S

SCHEDULE = ((1, 1, 1), (1, 2, 2), (1, 4, 4))
CFG = T.InfinityConfig(
    depth=2,
    embed_dim=64,
    num_heads=2,
    block_chunks=1,
    codebook_dim=16,
    text_channels=128,
    text_maxlen=8,
    drop_path_rate=0.0,
)
STEPS, BATCH = 4, 8


class Latents:
    """Batch i is a pure function of i: random latents and text features (the frozen encoders' outputs)."""

    def __init__(self):
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng(self.index)
        self.index += 1
        mask = np.arange(8)[None] < rng.integers(1, 9, (BATCH, 1))
        return {
            "latent": rng.standard_normal((BATCH, 4, 4, 16)).astype(np.float32),
            "text_features": rng.standard_normal((BATCH, 8, 128)).astype(np.float32),
            "text_mask": mask,
        }

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def _run(tmp_path, rules, fsdp=1, tensor=1, n=8):
    cfg = config_util.load_config(
        "train_defaults:tiny",
        [
            f"train.total_steps={STEPS}",
            f"train.global_batch={BATCH}",
            "checkpoint.enabled=False",
            "optim.warmup_steps=1",
            "optim.base_lr=0.5",
        ],
    )
    cfg.parallel.rules = rules
    mesh = parallel.make_mesh(-1, fsdp, tensor, devices=jax.devices()[:n])
    loss_fn = S.make_loss_fn(T.Infinity(CFG), SCHEDULE, S.StepOptions(bsc_strength=0.3, cond_drop=0.1))
    return loop.run_training(
        cfg,
        str(tmp_path / rules / str(n)),
        init_params=lambda k: T.init_params(CFG, k),
        loss_fn=loss_fn,
        data=Latents(),
        mesh=mesh,
    )


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_dp_fsdp_and_fsdp_tp_follow_the_single_device_loss_curve(tmp_path):
    ref = [r["loss"] for r in _run(tmp_path, "dp", n=1).history]
    assert len(ref) == STEPS and np.all(np.isfinite(ref)) and len(set(ref)) == STEPS  # params move every step
    for rules, fsdp, tensor in (("dp", 1, 1), ("fsdp", 4, 1), ("fsdp_tp", 2, 2)):
        result = _run(tmp_path, rules, fsdp, tensor)
        np.testing.assert_allclose([r["loss"] for r in result.history], ref, rtol=2e-5, err_msg=rules)
        if rules == "fsdp_tp":
            sa = result.state.params["blocks_0"]["sa"]
            assert sa["mat_qkv"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor")
            assert sa["proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
            specs = nn.get_partition_spec(T.abstract_params(CFG))
            assert specs["blocks_0"]["sa"]["mat_qkv"] == jax.sharding.PartitionSpec("embed", None, "heads")
