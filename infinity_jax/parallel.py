"""Meshes, logical-axis rules and sharding helpers.

Every parameter and the main activations carry *logical* axis names (below). A rules table maps
them onto the *mesh* axes `data`, `fsdp`, `tensor`, so one model shards as pure data parallel,
FSDP, or FSDP + tensor parallel by changing config only.

Logical axes:
  batch        the example axis of activations            -> ('data', 'fsdp')
  length       sequence / token axis of activations        -> None
  embed        model width C                               -> 'fsdp' under FSDP
  heads        attention heads x head_dim (fused q/k/v out) -> 'tensor' under TP
  kv           per-head feature axis                        -> None
  mlp          FFN hidden axis                              -> 'tensor' under TP
  text_embed   text-encoder width (Flan-T5 features)       -> 'fsdp' under FSDP
  bits         the d bits of the tokenizer / classifier     -> None
  vocab        output logits (d bits x 2)                   -> None
  adaln        AdaLN modulation outputs (6 x C)             -> 'tensor' under TP
  conv_in, conv_out, conv_h, conv_w   conv kernels          -> None (the VAE is small: replicated)
  norm         scales/biases of norms                       -> None
  scales       per-scale tables (level embedding)           -> None
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# name -> tuple of (logical axis, mesh axis or None) pairs. First match wins (flax semantics).
RULES: dict[str, tuple[tuple[str, Any], ...]] = {
    "dp": (("batch", BATCH_AXES),),
    "fsdp": (("batch", BATCH_AXES), ("embed", "fsdp"), ("text_embed", "fsdp")),
    "fsdp_tp": (
        ("batch", BATCH_AXES),
        ("embed", "fsdp"),
        ("text_embed", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("adaln", "tensor"),
    ),
}
_REPLICATED = (
    "length",
    "kv",
    "bits",
    "vocab",
    "conv_in",
    "conv_out",
    "conv_h",
    "conv_w",
    "norm",
    "scales",
    "embed",
    "text_embed",
    "heads",
    "mlp",
    "adaln",
)


def logical_rules(preset_or_rules: str | Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """A full rules table: the preset's (or given) mappings, then every other logical axis replicated."""
    if isinstance(preset_or_rules, str):
        if preset_or_rules not in RULES:
            raise ValueError(f"sharding preset {preset_or_rules!r}: expected one of {sorted(RULES)}")
        rules = RULES[preset_or_rules]
    else:
        rules = tuple((str(a), b if b is None or isinstance(b, str) else tuple(b)) for a, b in preset_or_rules)
    named = {a for a, _ in rules}
    return tuple(rules) + tuple((a, None) for a in _REPLICATED if a not in named)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh(data, fsdp, tensor) over all (or the given) devices; -1 for `data` takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        if n % (fsdp * tensor):
            raise ValueError(f"{n} devices do not divide into fsdp={fsdp} x tensor={tensor}")
        data = n // (fsdp * tensor)
    if data * fsdp * tensor != n:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor} "
            f"does not match the {n} devices available"
        )
    arr = np.asarray(devices, dtype=object).reshape(data, fsdp, tensor)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_mesh_sharding(tree, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree of logical PartitionSpecs (e.g. nn.get_partition_spec(params))."""
    return nn.logical_to_mesh_sharding(tree, mesh, logical_rules(rules))


def param_shardings(abstract_params, mesh: Mesh, rules) -> Any:
    """NamedShardings for a (possibly abstract, boxed) param tree from its logical annotations."""
    return logical_to_mesh_sharding(nn.get_partition_spec(abstract_params), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
