"""Model FLOPs of the transformer (2 per multiply-add), for MFU and the sampler's utilisation.

Each weight matrix counts for the rows it really multiplies, read from the parameter shapes:
  image tokens  the blocks' q/k/v/out and FFN, cross-attention queries and output, word embedding, head;
  text tokens   cross-attention keys/values (`mat_kv`, per block and in the text pool) and the text
                projection for cross-attention (`text_proj_for_ca_*`);
  per example   AdaLN modulation (`ada_lin`, shared or per block, and the head's) and the text pool's output.
Attention products count 4 C per query-key pair a query really sees (block-causal self-attention: its
own and earlier scales; cross-attention: the text; the text pool: one query per head). Parameters that
multiply nothing (norms, biases, embedding tables, AdaLN gains) count nothing.
tests/test_flops.py holds the count to the dot products of the traced forward pass.
"""

from __future__ import annotations

import functools

import numpy as np
from flax import traverse_util

from infinity_jax import schedules
from infinity_jax.model.transformer import InfinityConfig, abstract_params

MATMUL_LEAVES = ("kernel", "mat_qkv", "mat_kv")  # the parameters that are matmul operands


def _rows_role(path: tuple[str, ...]) -> str | None:
    """'token', 'text', 'example', 'word_embed' (the L - 1 inputs) or None (multiplies nothing)."""
    if path[-1] not in MATMUL_LEAVES:
        return None
    name = "/".join(path)
    if path[-1] == "mat_kv" or name.startswith("text_proj_for_ca"):
        return "text"
    if "ada_lin" in name or name.startswith("text_proj_for_sos"):
        return "example"
    if name.startswith("word_embed"):
        return "word_embed"
    return "token"


@functools.lru_cache(maxsize=64)
def weight_sizes(cfg: InfinityConfig) -> dict[str, int]:
    """Multiply-adds per row of each role's weights (the sum of their sizes), from abstract params."""
    sizes = {"token": 0, "text": 0, "example": 0, "word_embed": 0}
    flat = traverse_util.flatten_dict(abstract_params(cfg))
    for path, leaf in flat.items():
        role = _rows_role(path)
        if role is not None:
            sizes[role] += int(np.prod(getattr(leaf, "value", leaf).shape))  # nn.Partitioned boxes
    return sizes


def forward_flops(cfg: InfinityConfig, schedule, text_len: int) -> dict[str, float]:
    """One example's teacher-forced forward (equally, one sampling call's rows, each scale against the
    cache): {'weights', 'self_attention', 'cross_attention', 'total'} in FLOPs."""
    schedule = schedules.validate(schedule)
    tokens = schedules.num_tokens(schedule)
    ends = schedules.scale_offsets(schedule)[1:]
    pairs = sum(n * end for n, end in zip(schedules.scale_lengths(schedule), ends))
    w = weight_sizes(cfg)
    weights = 2.0 * (w["token"] * tokens + w["text"] * text_len + w["example"] + w["word_embed"] * (tokens - 1))
    c = cfg.embed_dim
    out = {
        "weights": weights,
        "self_attention": 4.0 * c * pairs * cfg.depth,
        "cross_attention": 4.0 * c * text_len * (tokens * cfg.depth + 1),
    }
    out["total"] = sum(out.values())
    return out


def dot_products(jaxpr, stack: str = "", times: int = 1):
    """(name stack, lhs dtype, rhs dtype, FLOPs) of every dot_general of a jaxpr, its sub-jaxprs included
    (a scan's body times its length; a while loop's, whose trip count is not static, once)."""
    for eqn in jaxpr.eqns:
        here = f"{stack}/{eqn.source_info.name_stack}"
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval for v in eqn.invars)
            n = 2 * int(np.prod([lhs.shape[i] for i in contract])) * int(np.prod(eqn.outvars[0].aval.shape))
            yield here, lhs.dtype, rhs.dtype, n * times
        inner = times * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a closed jaxpr's own
                if hasattr(sub, "eqns"):
                    yield from dot_products(sub, here, inner)


def flops_by_operand_dtypes(jaxpr) -> dict[str, float]:
    """The share of a program's matmul FLOPs (`dot_products`) per operand dtypes, largest first, e.g.
    {'bfloat16 x bfloat16': 0.999, 'float32 x float32': 0.001}: float32 operands in a bf16 program are
    float32 GEMMs on the accelerator."""
    by: dict[str, float] = {}
    for _, lhs, rhs, n in dot_products(jaxpr):
        key = f"{lhs.name} x {rhs.name}"
        by[key] = by.get(key, 0) + n
    total = sum(by.values()) or 1
    return {k: v / total for k, v in sorted(by.items(), key=lambda kv: -kv[1])}
