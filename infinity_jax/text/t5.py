"""The T5 encoder (T5 v1.1 / Flan-T5 / mT5 / ByT5, and original-T5 ReLU) in flax.linen.

Architecture (what the Hugging Face checkpoints hold): token embedding (no scaling, no position
embedding); `num_layers` pre-norm blocks of self-attention and a feed-forward layer; RMS norms
without bias or mean subtraction; no biases anywhere; attention scores are *not* scaled by
1/sqrt(d_kv); one table of relative-position biases (bidirectional log buckets), owned by the
first block and shared by all blocks; a final RMS norm.

Param tree mirrors the Hugging Face module tree without its `encoder.` prefix, so conversion is
a rename (see infinity_jax/convert/t5.py):
    shared/embedding                                   (V, C)       ('vocab', 'text_embed')
    block_{i}/layer_0/layer_norm/scale                 (C,)         ('norm',)
    block_{i}/layer_0/SelfAttention/{q,k,v}/kernel     (C, H*D)     ('text_embed', 'heads')
    block_{i}/layer_0/SelfAttention/o/kernel           (H*D, C)     ('heads', 'text_embed')
    block_0/layer_0/SelfAttention/relative_attention_bias/embedding  (buckets, H)  ('length', 'heads')
    block_{i}/layer_1/layer_norm/scale                 (C,)
    block_{i}/layer_1/DenseReluDense/{wi_0,wi_1}/kernel (C, F)      ('text_embed', 'mlp')   gated
    block_{i}/layer_1/DenseReluDense/wi/kernel          (C, F)                               not gated
    block_{i}/layer_1/DenseReluDense/wo/kernel          (F, C)      ('mlp', 'text_embed')
    final_layer_norm/scale                             (C,)

Precision: params fp32; matmuls in `config.dtype`; the residual stream, norms, attention scores
and softmax in fp32; the output is fp32 (the official pipeline calls `.float()` on it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Activation names as Hugging Face spells them (`dense_act_fn`).
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Encoder shapes of the public checkpoints (from their config.json), for random-init runs and
# benchmarks without the weights. Load real weights with convert.t5.load_t5(folder).
PRESETS: dict[str, dict[str, Any]] = {
    "flan-t5-small": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    "flan-t5-base": dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
    "flan-t5-large": dict(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16),
    "flan-t5-xl": dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32),
    "flan-t5-xxl": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64),
    "byt5-small": dict(vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6),
    "byt5-base": dict(vocab_size=384, d_model=1536, d_kv=64, d_ff=3968, num_layers=18, num_heads=12),
    # For demos and tests: a byte-level encoder small enough to train on a laptop.
    "tiny-byt5": dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder's hyper-parameters; field names are Hugging Face's `config.json` keys.

    `dtype` is the compute dtype of the matmuls ('float32', 'bfloat16' or 'float16'); it is ours,
    not Hugging Face's (their `torch_dtype` describes the stored weights and is ignored).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    dtype: str = "float32"

    def __post_init__(self):
        for name in (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_heads",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"T5Config.{name}={v!r}: expected a positive integer")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                f"T5Config.relative_attention_num_buckets={self.relative_attention_num_buckets}: "
                "expected at least 4 (two directions x exact + log buckets)"
            )
        self.activation  # validates feed_forward_proj
        if self.dtype not in _DTYPES:
            raise ValueError(f"T5Config.dtype={self.dtype!r}: expected one of {sorted(_DTYPES)}")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def activation(self) -> str:
        """The Hugging Face activation name (`dense_act_fn`); 'gated-gelu' means the tanh GELU."""
        parts = self.feed_forward_proj.split("-")
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in _ACTIVATIONS:
            raise ValueError(
                f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: expected 'ACT' or "
                f"'gated-ACT' with ACT one of {sorted(_ACTIVATIONS)}"
            )
        return act

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> "T5Config":
        """From a plain dict or a Hugging Face `config.json` dict (keys we do not use are ignored).

        Refuses model types whose encoder differs from T5's (UMT5 has one bias table per layer).
        """
        d = {**d, **overrides}
        model_type = d.get("model_type", "t5")
        if model_type not in ("t5", "mt5"):
            raise ValueError(
                f"config model_type={model_type!r}: expected 't5' or 'mt5' "
                "(T5 v1.1, Flan-T5, mT5 and ByT5 checkpoints are all 't5'/'mt5')"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_hf(cls, path: str, **overrides) -> "T5Config":
        """From a Hugging Face model folder (or its config.json)."""
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"T5 config: {file!r} does not exist (expected a Hugging Face model folder holding config.json)"
            )
        with open(file) as f:
            return cls.from_dict(json.load(f), **overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> "T5Config":
        if name not in PRESETS:
            raise ValueError(f"T5 preset {name!r}: expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket of every (query, key) pair: (q_len, k_len) int32, in [0, num_buckets).

    Half the buckets for keys after the query, half for keys before; in each half, exact buckets for
    distances below num_buckets/4 and log-spaced ones up to `max_distance`. Computed on the host at
    trace time (it only depends on static shapes) with the float32 arithmetic of the reference, so
    boundary distances land in the same bucket.
    """
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]  # key - query
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        log_ratio = np.log(dist.astype(np.float32) / np.float32(max_exact))
    scaled = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = max_exact + np.where(dist < max_exact, 0, scaled).astype(np.int64)  # truncation, as .to(long)
    large = np.minimum(large, half - 1)
    return (out + np.where(dist < max_exact, dist, large)).astype(np.int32)


def _dense(features: int, axes: tuple[str, str], std: float, dtype, name: str) -> nn.Dense:
    init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, name=name)


class T5LayerNorm(nn.Module):
    """RMS norm, fp32 statistics, no bias: x: (..., C) -> (..., C) float32."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), jnp.float32
        )
        x = x.astype(jnp.float32)
        return scale * (x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps))


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention with an additive bias.

    x: (B, L, C); mask: (B, L) bool, False at padding keys; position_bias: (1, H, L, L) float32 or
    None (then this layer must own the bias table and computes it). Returns ((B, L, C), bias).
    """

    config: T5Config
    has_relative_bias: bool = False

    @nn.compact
    def __call__(self, x, mask, position_bias=None):
        cfg, dt = self.config, self.config.compute_dtype
        B, L, C = x.shape
        H, D = cfg.num_heads, cfg.d_kv
        # Init as the mesh-tf/Hugging Face T5: q carries the missing 1/sqrt(d_kv).
        q = _dense(H * D, ("text_embed", "heads"), (C * D) ** -0.5, dt, "q")(x).reshape(B, L, H, D)
        k = _dense(H * D, ("text_embed", "heads"), C**-0.5, dt, "k")(x).reshape(B, L, H, D)
        v = _dense(H * D, ("text_embed", "heads"), C**-0.5, dt, "v")(x).reshape(B, L, H, D)
        if position_bias is None:
            if not self.has_relative_bias:
                raise ValueError("T5Attention: no position_bias given and this layer has no relative bias table")
            table = nn.Embed(
                cfg.relative_attention_num_buckets,
                H,
                dtype=jnp.float32,
                param_dtype=jnp.float32,
                embedding_init=nn.with_logical_partitioning(nn.initializers.normal(C**-0.5), ("length", "heads")),
                name="relative_attention_bias",
            )
            buckets = relative_position_buckets(
                L, L, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            )
            position_bias = jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None]  # (1, H, L, L)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + position_bias
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(dt)).reshape(B, L, H * D)
        return _dense(C, ("heads", "text_embed"), (H * D) ** -0.5, dt, "o")(out), position_bias


class T5DenseReluDense(nn.Module):
    """Feed-forward: wo(act(wi_0 x) * wi_1 x) when gated, else wo(act(wi x)). x: (B, L, C) -> (B, L, C)."""

    config: T5Config

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.config, self.config.compute_dtype
        act = _ACTIVATIONS[cfg.activation]
        std_in = cfg.d_model**-0.5
        if cfg.is_gated:
            h = act(_dense(cfg.d_ff, ("text_embed", "mlp"), std_in, dt, "wi_0")(x))
            h = h * _dense(cfg.d_ff, ("text_embed", "mlp"), std_in, dt, "wi_1")(x)
        else:
            h = act(_dense(cfg.d_ff, ("text_embed", "mlp"), std_in, dt, "wi")(x))
        return _dense(cfg.d_model, ("mlp", "text_embed"), cfg.d_ff**-0.5, dt, "wo")(h)


class T5SelfAttentionLayer(nn.Module):
    config: T5Config
    has_relative_bias: bool = False

    @nn.compact
    def __call__(self, x, mask, position_bias=None):
        h = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm")(x)
        h, position_bias = T5Attention(self.config, self.has_relative_bias, name="SelfAttention")(
            h, mask, position_bias
        )
        return x + h.astype(jnp.float32), position_bias


class T5FFLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x):
        h = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm")(x)
        return x + T5DenseReluDense(self.config, name="DenseReluDense")(h).astype(jnp.float32)


class T5Block(nn.Module):
    config: T5Config
    has_relative_bias: bool = False

    @nn.compact
    def __call__(self, x, mask, position_bias=None):
        x, position_bias = T5SelfAttentionLayer(self.config, self.has_relative_bias, name="layer_0")(
            x, mask, position_bias
        )
        return T5FFLayer(self.config, name="layer_1")(x), position_bias


class T5Encoder(nn.Module):
    """The T5 encoder stack.

    ids: (B, L) int32 token ids; mask: (B, L) bool (or 0/1), True at real tokens.
    Returns (B, L, C) float32, C = d_model: Hugging Face's `last_hidden_state` (padded positions
    hold whatever the network computes there; callers mask them).
    """

    config: T5Config

    @nn.compact
    def __call__(self, ids, mask):
        cfg = self.config
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"T5Encoder: ids {ids.shape} and mask {mask.shape}: expected both (B, L)")
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "text_embed")),
            name="shared",
        )
        # Gather the whole table before the lookup (as FSDP gathers every weight): a lookup into a
        # table split along its width would come out split the wrong way for the batch-split stream.
        table = nn.with_logical_constraint(embed.embedding, (None, None))
        x = nn.with_logical_constraint(jnp.take(table, ids, axis=0), ("batch", "length", None))
        mask = mask.astype(bool)
        position_bias = None
        for i in range(cfg.num_layers):
            x, position_bias = T5Block(cfg, has_relative_bias=(i == 0), name=f"block_{i}")(x, mask, position_bias)
        return T5LayerNorm(cfg.layer_norm_epsilon, name="final_layer_norm")(x)


def init_params(config: T5Config, rng: jax.Array, length: int = 8) -> dict:
    """Random params (boxed with their logical axes, as `nn.with_logical_partitioning` makes them).

    Use `flax.linen.unbox` for plain arrays, `flax.linen.get_partition_spec` for the logical specs.
    """
    ids = jnp.zeros((1, length), jnp.int32)
    return T5Encoder(config).init(rng, ids, jnp.ones((1, length), bool))["params"]


def abstract_params(config: T5Config) -> dict:
    """Shapes and logical axes of the params without allocating them (jax.eval_shape of init)."""
    return jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
