"""Mesh / sharding presets: how to lay an official model out on a TPU slice or an 8xH100 node.

usage: get_config('v5p-128') -> ConfigDict {parallel: {rules, data, fsdp, tensor}, train: {global_batch,
compute_dtype}, model: {remat, dtype}, ...}; configs/zoo.py applies one with `mesh=NAME`, e.g.
`infinity-jax train --config zoo:infinity_2b,mesh=v5p-128 ...`. `python -m infinity_jax.run_config`
prints the table below from the memory estimate (run_config.model_shape: the models' shapes).

A preset names the slice, the sharding rules of infinity_jax/parallel.py ('dp': replicate params,
split the batch; 'fsdp': params split over `fsdp` along their embed axis; 'fsdp_tp': also heads /
mlp / adaln split over `tensor`), the mesh (data x fsdp x tensor = devices; the batch is split over
data x fsdp, replicated over tensor), and the per-device batch. global_batch = per-device batch x
data x fsdp. Slice names follow Cloud TPU: v4-N and v5p-N count TensorCores (chips = N / 2),
v5litepod-N and v6e-N count chips.

The per-device batches are NOT measured (no TPU or GPU was at hand): each is half the largest power
of two that `estimate_memory_gib` puts under 90 % of the device memory (bf16 compute, fp32 params +
AdamW, full remat, attention without an L x L matrix; see `step_bytes`) at the preset's intended
model and square images at its pixel budget, at most 64. The estimate's bare sum is checked against
XLA's memory analysis of the compiled step for small models on (simulated) CPU devices
(tests/test_memory_estimate.py); treat the batches as starting points and measure with
`infinity-jax bench train --memory` (compile only) or `infinity-jax bench train` on the real slice.
tests/test_zoo_configs.py keeps the table and the rule in step. Columns: est GiB = the estimate at
that batch; rule = the rule's batch.

  preset       chips x kind   rules    data x fsdp x tensor  model             pn     batch/dev  global  est GiB  rule
  h100x8-dp    8 x h100       dp       8 x 1 x 1             layer12           0.06M  64         512     9.2      64
  h100x8-fsdp  8 x h100       fsdp     1 x 8 x 1             2b                0.06M  64         512     27.9     64
  h100x8-tp    8 x h100       fsdp_tp  1 x 4 x 2             8b                0.06M  32         128     40.0     32
  v4-32        16 x v4        fsdp     2 x 8 x 1             layer24           0.06M  32         512     10.5     32
  v4-128       64 x v4        fsdp     4 x 16 x 1            2b                0.06M  32         2048    14.5     32
  v5e-64       64 x v5e       fsdp     4 x 16 x 1            2b                0.06M  8          512     6.6      8
  v5e-256      256 x v5e      fsdp_tp  8 x 8 x 4             8b                0.06M  4          256     8.4      4
  v5p-128      64 x v5p       fsdp     4 x 16 x 1            2b                0.25M  16         1024    29.3     16
  v5p-512      256 x v5p      fsdp_tp  8 x 16 x 2            8b                0.25M  8          1024    27.8     8
  v5p-1024     512 x v5p      fsdp_tp  8 x 16 x 4            20b               0.25M  8          1024    40.1     8
  v6e-64       64 x v6e       fsdp     4 x 16 x 1            2b                0.06M  32         2048    14.5     32
  v6e-256      256 x v6e      fsdp_tp  16 x 8 x 2            8b                0.06M  8          1024    16.2     8
"""

from __future__ import annotations

import dataclasses

import ml_collections

from infinity_jax.config_util import parse_named_arg

GiB = 1024**3
MAX_PER_DEVICE_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    hbm_gib: float  # memory per device (chip / GPU)
    peak_bf16_tflops: float  # dense, per device (vendor figures; the same as train/metrics.py)


ACCELERATORS = {
    "h100": Accelerator("H100 SXM", 80, 989),
    "v4": Accelerator("TPU v4", 32, 275),
    "v5e": Accelerator("TPU v5e", 16, 197),
    "v5p": Accelerator("TPU v5p", 95, 459),
    "v6e": Accelerator("TPU v6e", 32, 918),
}


@dataclasses.dataclass(frozen=True)
class MeshPreset:
    name: str
    accelerator: str  # a key of ACCELERATORS
    slice: str  # what to ask the cloud for
    rules: str  # infinity_jax.parallel.RULES name
    data: int
    fsdp: int
    tensor: int
    per_device_batch: int  # examples per device per step, along the batch axes (data x fsdp)
    model: str  # the configs/infinity.py size the batch was sized for
    pn: str  # the pixel budget the batch was sized for
    remat: str = "full"

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.data * self.fsdp


_P = MeshPreset
PRESETS: dict[str, MeshPreset] = {
    p.name: p
    for p in (
        _P("h100x8-dp", "h100", "1 node, 8xH100", "dp", 8, 1, 1, 64, "infinity_layer12", "0.06M"),
        _P("h100x8-fsdp", "h100", "1 node, 8xH100", "fsdp", 1, 8, 1, 64, "infinity_2b", "0.06M"),
        _P("h100x8-tp", "h100", "1 node, 8xH100", "fsdp_tp", 1, 4, 2, 32, "infinity_8b", "0.06M"),
        _P("v4-32", "v4", "v4-32 (16 chips)", "fsdp", 2, 8, 1, 32, "infinity_layer24", "0.06M"),
        _P("v4-128", "v4", "v4-128 (64 chips)", "fsdp", 4, 16, 1, 32, "infinity_2b", "0.06M"),
        _P("v5e-64", "v5e", "v5litepod-64 (64 chips)", "fsdp", 4, 16, 1, 8, "infinity_2b", "0.06M"),
        _P("v5e-256", "v5e", "v5litepod-256 (256 chips)", "fsdp_tp", 8, 8, 4, 4, "infinity_8b", "0.06M"),
        _P("v5p-128", "v5p", "v5p-128 (64 chips)", "fsdp", 4, 16, 1, 16, "infinity_2b", "0.25M"),
        _P("v5p-512", "v5p", "v5p-512 (256 chips)", "fsdp_tp", 8, 16, 2, 8, "infinity_8b", "0.25M"),
        _P("v5p-1024", "v5p", "v5p-1024 (512 chips)", "fsdp_tp", 8, 16, 4, 8, "infinity_20b", "0.25M"),
        _P("v6e-64", "v6e", "v6e-64 (64 chips)", "fsdp", 4, 16, 1, 32, "infinity_2b", "0.06M"),
        _P("v6e-256", "v6e", "v6e-256 (256 chips)", "fsdp_tp", 16, 8, 2, 8, "infinity_8b", "0.06M"),
    )
}
NAMES = tuple(PRESETS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config sections a preset sets (merged into a training config by configs/zoo.py)."""
    name, _ = parse_named_arg(arg, "mesh", names=NAMES, kind="preset")
    p = PRESETS[name]
    c = ml_collections.ConfigDict()
    c.name = p.name
    c.accelerator, c.slice, c.devices = p.accelerator, p.slice, p.devices
    c.per_device_batch, c.sized_for = p.per_device_batch, f"{p.model} @ {p.pn}"
    c.parallel = ml_collections.ConfigDict(dict(rules=p.rules, data=p.data, fsdp=p.fsdp, tensor=p.tensor))
    c.train = ml_collections.ConfigDict(dict(global_batch=p.global_batch, compute_dtype="bfloat16"))
    c.model = ml_collections.ConfigDict(dict(remat=p.remat, dtype="bfloat16"))
    return c


# Values per token and channel that one block keeps for its backward pass (remat 'none'), counted
# from jax's saved residuals (jax.ad_checkpoint.print_saved_residuals, 2 blocks minus 1, width 256,
# 341 tokens, bf16 compute: ~14 float32 + ~32 bf16): float32 whatever the compute dtype (the residual
# stream, the norms' outputs (one per norm: model/layers.py), the branch outputs the gates multiply, cos-attention's
# q / k), of which the residual stream, norms and gates (~7) are whole on every tensor shard; and
# in the compute dtype (projection inputs and outputs, attention in / out, the FFN's 4C hidden: fc1's
# output and the GELU's = 8, the GELU recomputing its tanh), split over tensor with the heads / mlp.
KEPT_F32, KEPT_F32_UNSPLIT, KEPT_COMPUTE = 14, 7, 29


def step_bytes(
    *,
    params: int,
    depth: int,
    embed_dim: int,
    tokens: int,
    per_device_batch: int,
    rules: str,
    fsdp: int,
    tensor: int,
    bits: int = 32,
    text_len: int = 512,
    remat: str = "full",
    ema: bool = False,
    compute_bytes: int = 2,
) -> float:
    """Bytes one training step holds at its peak on one device: what XLA's memory analysis of the
    compiled step counts (arguments + outputs + temporaries - donated), by hand. Not a measurement.

    Weights: fp32 params + AdamW m, v (12 B/param, +4 with EMA) and the fp32 grads (4), divided over
    fsdp x tensor (dp: replicated), plus the params cast to the compute dtype (bf16: 2 B/param, also
    divided); under fsdp one block's weights are gathered whole at a time (compute dtype, split
    over tensor). Activations for a per-device batch B over L = `tokens`, width C: a block keeps
    ~KEPT_F32 float32 + KEPT_COMPUTE compute-dtype values per token and channel, and its
    cross-attention keys / values of `text_len` text tokens (the head-split parts divided over
    tensor). Attention keeps no L x L matrix (model/attention.py: flash / splash / chunked online
    softmax), only per-row statistics, within those counts. remat 'full' keeps each block's fp32
    input (depth x 4 B L C) and holds one recomputed block's activations at a time; every other mode
    is counted as 'none' (all blocks' activations: an upper bound, they recompute a part). Outside
    the blocks: the embedded tokens and the head's norm (~8 fp32 values per token and channel) and
    the bit head's fp32 logits, probabilities and their gradient (3 x B L 2d x 4 B).

    tests/test_memory_estimate.py compares it with XLA's figure for small f32 models on CPU: 1.0-1.4x
    (with scanned blocks; unscanned, XLA's CPU schedule kept as much under 'full' as under 'none').
    """
    tp = tensor if rules == "fsdp_tp" else 1
    shards = 1 if rules == "dp" else fsdp * tp
    cast = compute_bytes if compute_bytes < 4 else 0  # an fp32 step uses the params as they are
    weights = params * ((16 if ema else 12) + 4 + cast) / shards
    if rules != "dp":
        weights += params / depth * compute_bytes / tp
    B, L, C = per_device_batch, tokens, embed_dim
    per_token = 4 * KEPT_F32_UNSPLIT + (4 * (KEPT_F32 - KEPT_F32_UNSPLIT) + compute_bytes * KEPT_COMPUTE) / tp
    layer = B * C * (L * per_token + 2 * text_len * compute_bytes / tp)
    acts = depth * 4 * B * L * C + layer if remat == "full" else depth * layer
    outside = B * L * (8 * 4 * C + 3 * 4 * 2 * bits)
    return weights + acts + outside


def estimate_memory_gib(*, slack: float = 1.2, reserve_gib: float = 1.0, **shape) -> float:
    """Rough peak memory of one training step on one device, in GiB (an estimate, not a measurement):
    `step_bytes(**shape)` (its keyword arguments), +20 % for what it misses and a 1 GiB reserve for
    what the compiled program does not count (runtime, cuDNN workspaces, fragmentation)."""
    return step_bytes(**shape) * slack / GiB + reserve_gib


def fits(
    preset: MeshPreset, *, params: int, depth: int, embed_dim: int, tokens: int, bits: int = 32, margin: float = 0.9
) -> tuple[bool, float]:
    """(estimate <= margin x device memory, estimate in GiB) for the preset's per-device batch."""
    est = estimate_memory_gib(
        params=params,
        depth=depth,
        embed_dim=embed_dim,
        tokens=tokens,
        per_device_batch=preset.per_device_batch,
        rules=preset.rules,
        fsdp=preset.fsdp,
        tensor=preset.tensor,
        bits=bits,
        remat=preset.remat,
    )
    return est <= margin * ACCELERATORS[preset.accelerator].hbm_gib, est


def largest_fitting_batch(preset: MeshPreset, **model) -> int:
    """The largest power-of-two per-device batch (<= 1024) that `fits` for this preset and model."""
    ok = [b for b in (2**i for i in range(11)) if fits(dataclasses.replace(preset, per_device_batch=b), **model)[0]]
    return max(ok, default=0)


def suggested_batch(preset: MeshPreset, **model) -> int:
    """The documented rule: half the largest fitting batch (slack for what the estimate misses), at most 64."""
    return min(MAX_PER_DEVICE_BATCH, largest_fitting_batch(preset, **model) // 2)


TABLE_HEADER = (
    "  preset       chips x kind   rules    data x fsdp x tensor  model             pn     batch/dev  "
    "global  est GiB  rule"
)


def table_row(p: MeshPreset, **model) -> str:
    """The preset's line of the module docstring's table, from the estimate (`fits` keyword arguments)."""
    ok, est = fits(p, **model)
    chips = f"{p.devices} x {p.accelerator}"
    return (
        f"  {p.name:12s} {chips:14s} {p.rules:8s} {f'{p.data} x {p.fsdp} x {p.tensor}':21s} "
        f"{p.model.removeprefix('infinity_'):17s} {p.pn:6s} {p.per_device_batch:<10d} {p.global_batch:<7d} "
        f"{est:<8.1f} {suggested_batch(p, **model)}" + ("" if ok else "  TOO BIG")
    )
