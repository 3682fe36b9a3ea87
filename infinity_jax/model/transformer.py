"""The Infinity transformer (linen): text conditioning, AdaLN cross-attention blocks, bitwise head.

Two paths share every layer:
  Infinity.__call__      teacher-forced forward over all scales of a schedule (training):
                         logits (B, L, 2d) from text (B, Lt, Ct) + mask (B, Lt) and the d-bit
                         inputs x_wo_prefix (B, L - 1, d); scale 1's input is the SOS token.
  Infinity.decode_scale  one scale's tokens against a KV cache preallocated for the whole
                         schedule (init_cache), passed in and returned explicitly (sampling).

Output layout: logits[..., 2j] / logits[..., 2j + 1] are bit j being 0 / 1.

Param tree (mirrors the official module tree, see convert/infinity.py): cfg_uncond, text_norm,
text_proj_for_sos/ca, text_proj_for_ca_{0,2}, pos_start, lvl_embed, word_embed, shared_ada_lin,
blocks_{i} (or `blocks`, stacked on a leading 'layers' axis, with scan_layers), head_nm, head; plus the
params of a non-official `extension` when the config names one (model/extensions.py; such a model has
no official state dict).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from infinity_jax import schedules
from infinity_jax.model import attention as attention_lib
from infinity_jax.model import extensions, layers

# Rematerialisation of each block's forward in the backward pass, by name (MaxText-style): 'none'
# keeps every activation; 'full' keeps only the block inputs; 'attn' recomputes only the
# self-attention; the others keep what jax.checkpoint_policies keeps: every matmul output
# ('dots'), those without batch dimensions ('dots_no_batch'), or the tensors tagged with
# checkpoint_name in model/layers.py: 'qkv' (the fused q|k|v projection), 'attn_out' (attention
# before its output projection), 'mlp_hidden' (the FFN's fc1 output).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv": jax.checkpoint_policies.save_only_these_names("qkv"),
    "save_qkv_attn": jax.checkpoint_policies.save_only_these_names("qkv", "attn_out"),
    "save_attn_mlp": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_hidden"),
    "save_qkv_attn_mlp": jax.checkpoint_policies.save_only_these_names("qkv", "attn_out", "mlp_hidden"),
}
REMAT_MODES = ("none", "attn", *REMAT_POLICIES)
NUM_LEVELS = 15  # rows of the official level-embedding table


@dataclasses.dataclass(frozen=True)
class InfinityConfig:
    """Architecture and execution options (hashable: a linen attribute). Defaults: released 2B recipe."""

    depth: int = 32
    embed_dim: int = 2048
    num_heads: int = 16
    mlp_ratio: float = 4.0
    block_chunks: int = 8  # official grouping of blocks; only changes weight names
    codebook_dim: int = 32  # d: bits per token (under spatial patchify: 4x the tokenizer's)
    # official apply_spatial_patchify (the released 8B): each token holds a 2x2 block of the tokenizer's
    # grid, which runs the doubled schedule; the tokenizer has codebook_dim / 4 bits and patch size 8
    apply_spatial_patchify: int = 0
    text_channels: int = 2048  # Ct (flan-t5-xl)
    text_maxlen: int = 512  # rows of cfg_uncond
    norm_eps: float = 1e-6
    rms_norm: bool = False  # official `rms_norm` (block norms); text_norm is always RMS
    shared_aln: bool = True  # one AdaLN projection for all blocks + a per-block table
    cos_attn: bool = True
    tau: float = 1.0  # attention temperature when cos_attn is off
    cross_attn_layer_scale: float = -1.0  # >= 0: learned per-channel gain on cross-attention
    rope2d_normalized_by_hw: int = 2
    lvl_embed_first_block_only: bool = True  # official add_lvl_embeding_only_first_block
    extension: str = ""  # '' (official) or an opt-in addition of model/extensions.py (no export)
    drop_path_rate: float = 0.0  # stochastic depth, linear 0 -> rate over blocks (training only)
    dtype: str = "float32"  # compute dtype of matmuls (params are fp32)
    remat: str = "none"  # a REMAT_MODES name: none | full | attn | dots | save_qkv_attn | ...
    scan_layers: bool = False
    attention: str = "auto"  # kernel (model/attention.py): auto | xla | chunked | cudnn | splash

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError(f"head width {self.embed_dim // self.num_heads} must be divisible by 4 (2D RoPE)")
        if self.block_chunks < 1 or self.depth % self.block_chunks:
            raise ValueError(f"block_chunks={self.block_chunks} must divide depth={self.depth}")
        if self.remat not in REMAT_MODES:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT_MODES}")
        if self.attention not in attention_lib.IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}: expected one of {attention_lib.IMPLEMENTATIONS}")
        extensions.check(self.extension)
        if self.apply_spatial_patchify not in (0, 1):
            raise ValueError(f"apply_spatial_patchify={self.apply_spatial_patchify!r}: expected 0 or 1")
        if self.apply_spatial_patchify and self.codebook_dim % 4:
            raise ValueError(
                f"codebook_dim={self.codebook_dim} with apply_spatial_patchify=1: expected a multiple of 4 "
                "(4 x the tokenizer's bits)"
            )
        if self.text_channels % self.pool_head_dim:
            raise ValueError(
                f"text_channels={self.text_channels} must be a multiple of the text-pool head "
                f"width {self.pool_head_dim}"
            )
        if self.embed_dim % (self.text_channels // self.pool_head_dim):
            raise ValueError(
                f"embed_dim={self.embed_dim} must divide into {self.text_channels // self.pool_head_dim} "
                "text-pool heads"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InfinityConfig":
        """From a config section (ml_collections ConfigDict or dict); unknown keys are an error. Older
        a saved config's `abs_pos_embed` flag becomes `extension` (extensions.upgrade_legacy)."""
        d = extensions.upgrade_legacy(d.to_dict() if hasattr(d, "to_dict") else d)
        d.pop("name", None)
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown Infinity model options {bad}; expected some of {sorted(names)}")
        return cls(**d)

    @property
    def vae_codebook_dim(self) -> int:
        """Bits per position of the tokenizer this model reads: codebook_dim, or a quarter of it under
        spatial patchify."""
        return self.codebook_dim // 4 if self.apply_spatial_patchify else self.codebook_dim

    def check_tokenizer(self, codebook_dim: int, patch_size: int | None = None, where: str = "VAE") -> None:
        """Raises ValueError unless a tokenizer with these bits (and patch size) feeds this model: codebook_dim
        equal to the model's, or a quarter of it and patch 8 under apply_spatial_patchify (the official
        d56 tokenizer, infinity_vae_d56_f8_14_patchify.pth: 14 bits, patch 8, for a 56-bit model)."""
        want = self.vae_codebook_dim
        rule = f"model.codebook_dim={self.codebook_dim}, apply_spatial_patchify={self.apply_spatial_patchify}"
        if int(codebook_dim) != want:
            raise ValueError(f"{where} codebook_dim={codebook_dim} does not match {rule}: expected {want}")
        if self.apply_spatial_patchify and patch_size is not None and int(patch_size) != 8:
            raise ValueError(f"{where} patch_size={patch_size} does not match {rule}: expected 8")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256  # official rounding (Python round)

    @property
    def pool_head_dim(self) -> int:
        """Width per head of the text-pool's keys over the text features (official: 64 above D=4096)."""
        return 64 if self.embed_dim > 4096 else 128

    @property
    def pool_heads(self) -> int:
        return self.text_channels // self.pool_head_dim

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


# ---------------------------------------------------------------- static helpers (numpy, per schedule)
def scale_ids(schedule: schedules.Schedule) -> np.ndarray:
    """(L,) int32: the scale index of every token."""
    return np.concatenate([np.full(t * h * w, k, np.int32) for k, (t, h, w) in enumerate(schedule)])


def init_cache(cfg: InfinityConfig, batch: int, schedule: schedules.Schedule, dtype=None) -> dict[str, jax.Array]:
    """Zero KV cache for a whole schedule: {'k', 'v'}: (depth, batch, L, H, head_dim) in the compute dtype."""
    shape = (cfg.depth, batch, schedules.num_tokens(schedule), cfg.num_heads, cfg.head_dim)
    dt = cfg.compute_dtype if dtype is None else dtype
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def null_text(params: Mapping[str, Any], text_mask: jax.Array) -> jax.Array:
    """The CFG null text for prompts of the given mask: cfg_uncond[:Lt] where the mask is on, 0 elsewhere.

    text_mask: (B, Lt) bool -> (B, Lt, Ct); the official sampler pairs each prompt with
    cfg_uncond[:len_i] (and keeps the prompt's length).
    """
    table = nn.unbox(params["cfg_uncond"]) if "cfg_uncond" in params else nn.unbox(params["params"]["cfg_uncond"])
    lt = text_mask.shape[1]
    if lt > table.shape[0]:
        raise ValueError(f"text length {lt} exceeds text_maxlen {table.shape[0]}")
    return jnp.where(text_mask[..., None], table[None, :lt], 0.0).astype(table.dtype)


# ---------------------------------------------------------------- modules
class TextAttentivePool(nn.Module):
    """Pools text tokens with one learned query per head: (B, Lt, Ct) + mask -> (B, D)."""

    cfg: InfinityConfig

    @nn.compact
    def __call__(self, text, text_mask):
        c = self.cfg
        return layers.CrossAttention(c.embed_dim, c.pool_heads, pool=True, name="ca")(None, text, text_mask)[:, 0]


class AdaLNBeforeHead(nn.Module):
    """norm(x) * (1 + scale) + shift with (scale, shift) = ada_lin(silu(cond)). x: (B, l, C), cond: (B, D)."""

    cfg: InfinityConfig

    @nn.compact
    def __call__(self, x, cond):
        c = self.cfg
        ss = layers.dense(2 * c.embed_dim, ("embed", "adaln"), name="ada_lin")(nn.silu(cond.astype(jnp.float32)))
        ss = ss.reshape(-1, 1, 2, c.embed_dim)
        return layers.ada_norm(x, ss[:, :, 0], ss[:, :, 1], c.norm_eps, c.rms_norm)


class Block(nn.Module):
    """One official CrossAttnBlock: AdaLN self-attention (RoPE) -> cross-attention to text -> AdaLN FFN.

    Signature fits nn.scan: __call__(carry, xs, shared) -> (carry, {}).
      carry: 'x' (B, l, C) float32 residual stream and, when decoding, the whole model's KV cache
        'k', 'v' (depth, B, L_total, H, c), carried so each layer writes its rows in place.
      xs: per-layer inputs: optional 'lvl' (0/1 scalar: add the level embedding first), 'drop'
        (this block's drop-path rate, training) and, when decoding, 'layer' (this block's index).
      shared: 'ada' (B, 1, 6, C) shared AdaLN output (or 'cond' (B, D) without shared AdaLN),
        'ca_kv' (B, Lt, D), 'ca_mask' (B, Lt), 'rope' (2, l, c/2), 'lvl' (l, C) or None.
    scale_lengths: the static token count per scale (block-causal self-attention, training);
    None when decoding (each scale sees the whole cache prefix). Tokens past the scales' total are
    padding (Infinity.__call__ evens the sequence for cuDNN), seen by no query.
    """

    cfg: InfinityConfig
    cache_offset: int | None = None
    scale_lengths: tuple[int, ...] | None = None
    remat_attn: bool = False

    def _drop_path(self, h, xs):
        """Stochastic depth on a residual branch (official DropPath): per example, rescaled by 1/keep."""
        if "drop" not in xs:
            return h
        keep = 1.0 - xs["drop"]
        hit = jax.random.bernoulli(self.make_rng("dropout"), keep, (h.shape[0], 1, 1))
        return h * jnp.where(hit, 1.0 / jnp.maximum(keep, 1e-12), 0.0)

    @nn.compact
    def __call__(self, carry, xs, shared):
        c = self.cfg
        dt = c.compute_dtype
        x = nn.with_logical_constraint(carry["x"], layers.ACTIVATION_AXES)
        if "lvl" in xs:
            x = x + xs["lvl"] * shared["lvl"]
        if c.shared_aln:
            gss = self.param(
                "ada_gss",
                layers.partitioned(nn.initializers.normal(1 / math.sqrt(c.embed_dim)), (None, None, None, "adaln")),
                (1, 1, 6, c.embed_dim),
            )
            ada = gss + shared["ada"]
        else:
            ada = layers.dense(6 * c.embed_dim, ("embed", "adaln"), name="ada_lin")(
                nn.silu(shared["cond"].astype(jnp.float32))
            ).reshape(-1, 1, 6, c.embed_dim)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (ada[:, :, i] for i in range(6))

        sa_cls = nn.remat(layers.SelfAttention) if self.remat_attn else layers.SelfAttention
        cache = layers.LayerCache(carry["k"], carry["v"], xs["layer"]) if "k" in carry else None
        h = layers.ada_norm(x, scale1, shift1, c.norm_eps, c.rms_norm)
        h, cache = sa_cls(
            c.num_heads,
            cos_attn=c.cos_attn,
            tau=c.tau,
            dtype=dt,
            cache_offset=self.cache_offset,
            scale_lengths=self.scale_lengths,
            implementation=c.attention,
            name="sa",
        )(h, shared["rope"], cache)
        x = x + self._drop_path(h.astype(jnp.float32) * gamma1, xs)

        h = layers.Norm(c.norm_eps, c.rms_norm, name="ca_norm")(x)
        text_kv = (xs["ca_k"], xs["ca_v"]) if "ca_k" in xs else None
        h = layers.CrossAttention(c.embed_dim, c.num_heads, dtype=dt, implementation=c.attention, name="ca")(
            h, shared["ca_kv"], shared["ca_mask"], text_kv, differentiated=cache is None
        )
        h = h.astype(jnp.float32)
        if c.cross_attn_layer_scale >= 0:
            h = h * self.param(
                "ca_gamma",
                layers.partitioned(nn.initializers.constant(c.cross_attn_layer_scale), ("embed",)),
                (c.embed_dim,),
            )
        x = x + h

        h = layers.ada_norm(x, scale2, shift2, c.norm_eps, c.rms_norm)
        h = layers.FFN(c.ffn_hidden, dtype=dt, name="ffn")(h)
        x = x + self._drop_path(h.astype(jnp.float32) * gamma2, xs)
        out = {"x": nn.with_logical_constraint(x, layers.ACTIVATION_AXES)}
        if cache is not None:
            out.update(k=cache.k, v=cache.v)
        return out, {}


class Infinity(nn.Module):
    """The Infinity transformer. See the module docstring for the two entry points."""

    cfg: InfinityConfig

    def setup(self):
        c = self.cfg
        part = layers.partitioned
        self.cfg_uncond = self.param(
            "cfg_uncond",
            part(
                lambda k, s: 1.2 * jax.random.truncated_normal(k, -2 / 1.2, 2 / 1.2, s) / math.sqrt(c.text_channels),
                (None, "text_embed"),
            ),
            (c.text_maxlen, c.text_channels),
        )
        self.text_norm = layers.Norm(c.norm_eps, rms=True)
        self.text_proj_for_sos = TextAttentivePool(c)
        self.text_proj_for_ca_0 = layers.dense(c.embed_dim, ("text_embed", "mlp"))
        self.text_proj_for_ca_2 = layers.dense(c.embed_dim, ("mlp", "embed"))
        std = math.sqrt(1 / c.embed_dim / 3)
        self.pos_start = self.param(
            "pos_start", part(layers.truncated_normal(std), (None, None, "embed")), (1, 1, c.embed_dim)
        )
        self.lvl_embed = nn.Embed(
            NUM_LEVELS, c.embed_dim, embedding_init=part(layers.truncated_normal(std), ("scales", "embed"))
        )
        self.word_embed = layers.dense(c.embed_dim, ("bits", "embed"))
        self.extension = extensions.build(c)
        if self.extension is not None:  # its params sit at the top level, beside the official ones
            nn.share_scope(self, self.extension)
        if c.shared_aln:
            self.shared_ada_lin = layers.dense(6 * c.embed_dim, ("embed", "adaln"))
        self.head_nm = AdaLNBeforeHead(c)
        self.head = layers.dense(2 * c.codebook_dim, ("embed", "vocab"))

    # -------------------------------------------------- text
    def encode_text(self, text: jax.Array, text_mask: jax.Array, drop: jax.Array | None = None) -> dict[str, jax.Array]:
        """Conditioning from padded text features, float32 as the official forward.

        text: (B, Lt, Ct); text_mask: (B, Lt) bool; drop: optional (B,) bool, prompts replaced by
        the null text (CFG training). Returns {'cond': (B, D), 'ada': (B, 1, 6, C) (shared AdaLN),
        'ca_kv': (B, Lt, D), 'ca_mask': (B, Lt)}.
        """
        c = self.cfg
        if text.ndim != 3 or text.shape[-1] != c.text_channels or text_mask.shape != text.shape[:2]:
            raise ValueError(
                f"text {text.shape} / mask {text_mask.shape}: expected (B, Lt, {c.text_channels}) and (B, Lt)"
            )
        text = text.astype(jnp.float32)
        text_mask = text_mask.astype(bool)
        if drop is not None:
            lt = text.shape[1]
            text = jnp.where(drop[:, None, None], self.cfg_uncond[None, :lt], text)
        text = self.text_norm(text)
        cond = self.text_proj_for_sos(text, text_mask).astype(jnp.float32)
        ca_kv = self.text_proj_for_ca_2(nn.gelu(self.text_proj_for_ca_0(text), approximate=True))
        out = {"cond": cond, "ca_kv": ca_kv, "ca_mask": text_mask}
        if c.shared_aln:
            out["ada"] = self.shared_ada_lin(nn.silu(cond)).reshape(-1, 1, 6, c.embed_dim)
        return out

    def decode_context(self, ctx: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """encode_text's output plus every block's cross-attention keys and values of the text, 'ca_k'
        and 'ca_v' (depth, B, Lt, H, c) in the compute dtype: they are the same at every scale, so the
        sampler makes them once (decode_scale uses them where ctx has them) instead of once per scale."""
        c = self.cfg
        params = nn.unbox(self.variables["params"])  # the caller's params may be boxed with their axis names
        if c.scan_layers:
            mat_kv, v_bias = params["blocks"]["ca"]["mat_kv"], params["blocks"]["ca"]["v_bias"]
        else:
            per_block = [params[f"blocks_{i}"]["ca"] for i in range(c.depth)]
            mat_kv, v_bias = (jnp.stack([ca[name] for ca in per_block]) for name in ("mat_kv", "v_bias"))
        project = functools.partial(layers.text_keys_values, num_heads=c.num_heads, dtype=c.compute_dtype)
        k, v = jax.vmap(lambda w, b: project(ctx["ca_kv"], w, b))(mat_kv, v_bias)
        return {**ctx, "ca_k": k, "ca_v": v}

    # -------------------------------------------------- shared pieces
    def _sos(self, ctx):
        return ctx["cond"][:, None, :] + self.pos_start

    def _embed(self, x_bits):
        return self.word_embed(x_bits.astype(jnp.float32))

    def _logits(self, x, cond):
        return self.head(self.head_nm(x, cond))

    def _level_and_place(self, schedule, start: int, length: int) -> jax.Array:
        """(length, C): what the blocks of `_chunk_starts` add to tokens start..start+length-1 of the
        schedule: the level embedding of each token's scale, plus the extension's features (if any)."""
        ids = scale_ids(schedule)[start : start + length]
        out = self.lvl_embed(jnp.asarray(ids))
        if self.extension is not None:
            out = out + self.extension(schedule, start, length)
        return out

    def _chunk_starts(self) -> list[int]:
        """Layers before which the level embedding is added."""
        c = self.cfg
        if c.lvl_embed_first_block_only:
            return [0]
        step = c.depth // c.block_chunks if c.block_chunks > 1 else 1  # official: per chunk, or per block
        return list(range(0, c.depth, step))

    @nn.compact
    def _blocks(self, x, ctx, rope, scale_lengths, lvl, cache=None, cache_offset=None, train=False):
        """Runs all blocks. x: (B, l, C) f32; lvl: (l, C) level embedding; scale_lengths: static
        tokens per scale (block-causal, training) or None; cache: {'k','v'} stacked (decoding),
        carried through the layers and written in place. Tokens of x past the scales' total are padding."""
        c = self.cfg
        decoding = cache is not None
        drop = (
            np.linspace(0.0, c.drop_path_rate, c.depth).astype(np.float32) if train and c.drop_path_rate > 0 else None
        )
        starts = self._chunk_starts()
        shared = {"ca_kv": ctx["ca_kv"], "ca_mask": ctx["ca_mask"], "rope": rope, "lvl": lvl}
        shared.update({"ada": ctx["ada"]} if c.shared_aln else {"cond": ctx["cond"]})
        remat = "none" if decoding else c.remat
        block_cls = Block
        if remat in REMAT_POLICIES:
            block_cls = nn.remat(Block, policy=REMAT_POLICIES[remat], prevent_cse=not c.scan_layers)
        kw = dict(cache_offset=cache_offset, scale_lengths=scale_lengths, remat_attn=remat == "attn")
        carry = {"x": x, **({"k": cache["k"], "v": cache["v"]} if decoding else {})}
        if c.scan_layers:
            flags = np.zeros(c.depth, np.float32)
            flags[starts] = 1.0
            xs = {"lvl": jnp.asarray(flags)}
            if drop is not None:
                xs["drop"] = jnp.asarray(drop)
            if decoding:
                xs["layer"] = jnp.arange(c.depth, dtype=jnp.int32)
                xs.update({k: ctx[k] for k in ("ca_k", "ca_v") if k in ctx})
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast),
                length=c.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            carry, _ = scanned(c, name="blocks", **kw)(carry, xs, shared)
        else:
            for i in range(c.depth):
                xs = {"lvl": jnp.float32(1.0)} if i in starts else {}
                if drop is not None:
                    xs["drop"] = jnp.float32(drop[i])
                if decoding:
                    xs["layer"] = i
                    xs.update({k: ctx[k][i] for k in ("ca_k", "ca_v") if k in ctx})
                carry, _ = block_cls(c, name=f"blocks_{i}", **kw)(carry, xs, shared)
        return carry["x"], ({"k": carry["k"], "v": carry["v"]} if decoding else None)

    # -------------------------------------------------- entry points
    def __call__(self, text, text_mask, x_wo_prefix, schedule, drop=None, train: bool = False):
        """Teacher-forced logits. text: (B, Lt, Ct), text_mask: (B, Lt), x_wo_prefix: (B, L - 1, d)
        (the d-bit inputs of scales 2..K, row-major per scale); schedule: K (t, h, w) triples (static);
        drop: optional (B,) bool, prompts replaced by the null text; train=True applies drop path
        (needs a 'dropout' rng when drop_path_rate > 0). Returns (B, L, 2d) float32."""
        c = self.cfg
        schedule = schedules.validate(schedule)
        n = schedules.num_tokens(schedule)
        if x_wo_prefix.ndim != 3 or x_wo_prefix.shape[1:] != (n - 1, c.codebook_dim):
            raise ValueError(
                f"x_wo_prefix {x_wo_prefix.shape}: expected (B, {n - 1}, {c.codebook_dim}) for a schedule of {n} tokens"
            )
        ctx = self.encode_text(text, text_mask, drop)
        x = jnp.concatenate([self._sos(ctx), self._embed(x_wo_prefix)], axis=1)
        lvl = self._level_and_place(schedule, 0, n)
        rope = layers.rope2d_table(schedule, c.head_dim, c.rope2d_normalized_by_hw)
        # cuDNN's differentiated calls need even lengths: one padding token after the last scale evens the
        # sequence once, instead of a padded copy of q, k, v in every attention call (attention.fused_attention)
        pad = n % 2 if attention_lib.select_implementation(c.attention, c.compute_dtype, c.head_dim) == "cudnn" else 0
        if pad:
            x, lvl = jnp.pad(x, ((0, 0), (0, pad), (0, 0))), jnp.pad(lvl, ((0, pad), (0, 0)))
            rope = np.pad(rope, ((0, 0), (0, pad), (0, 0)))
        x, _ = self._blocks(x, ctx, jnp.asarray(rope), tuple(schedules.scale_lengths(schedule)), lvl, train=train)
        return self._logits(x[:, :n], ctx["cond"])

    def decode_scale(self, ctx, x_scale, cache, schedule, scale_index: int):
        """Logits of one scale against the KV cache (sampling).

        ctx: encode_text's output (a CFG batch is the cond and uncond halves stacked);
        x_scale: (B, h_k * w_k, d) inputs of scale k, or None for k = 0 (the SOS token); with a CFG
          batch of 2B prompts, B inputs are repeated for both halves (as the official sampler);
        cache: init_cache's pytree, holding scales < k; schedule (static), scale_index k (static).
        Returns (logits (B, h_k * w_k, 2d) float32, updated cache).
        """
        c = self.cfg
        schedule = schedules.validate(schedule)
        offsets = schedules.scale_offsets(schedule)
        lengths = schedules.scale_lengths(schedule)
        if not 0 <= scale_index < len(schedule):
            raise ValueError(f"scale_index={scale_index}: expected 0..{len(schedule) - 1}")
        start, l = offsets[scale_index], lengths[scale_index]
        if scale_index == 0:
            x = self._sos(ctx)
        else:
            if x_scale is None or x_scale.shape[1:] != (l, c.codebook_dim):
                raise ValueError(
                    f"x_scale {None if x_scale is None else x_scale.shape}: expected (B, {l}, "
                    f"{c.codebook_dim}) for scale {scale_index}"
                )
            x = self._embed(x_scale)
        b = ctx["cond"].shape[0]
        if x.shape[0] != b:  # CFG: one set of inputs for the cond and uncond halves
            if b % x.shape[0]:
                raise ValueError(f"x_scale batch {x.shape[0]} does not divide the text batch {b}")
            x = jnp.tile(x, (b // x.shape[0], 1, 1))
        lvl = self._level_and_place(schedule, start, l)
        rope = jnp.asarray(layers.rope2d_table(schedule, c.head_dim, c.rope2d_normalized_by_hw)[:, start : start + l])
        x, cache = self._blocks(x, ctx, rope, None, lvl, cache, start)
        return self._logits(x, ctx["cond"]), cache


# ---------------------------------------------------------------- init and counting
def _dummy_inputs(cfg: InfinityConfig):
    sched = ((1, 1, 1), (1, 2, 2))
    return (jnp.zeros((1, 1, cfg.text_channels)), jnp.ones((1, 1), bool), jnp.zeros((1, 4, cfg.codebook_dim)), sched)


def init_params(cfg: InfinityConfig, rng: jax.Array) -> dict[str, Any]:
    """Random params (boxed with logical axis names), from tiny dummy inputs (shapes don't depend on them)."""
    return Infinity(cfg).init(rng, *_dummy_inputs(cfg))["params"]


def abstract_params(cfg: InfinityConfig) -> dict[str, Any]:
    """ShapeDtypeStructs (boxed) of the params; nothing is allocated."""
    return jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))


def count_params(cfg: InfinityConfig) -> int:
    """Number of parameters, from shapes only (comparable to the official model's parameters())."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract_params(cfg)))))
