"""The text front end: prompts -> (features (B, Lt, C), mask (B, Lt)) for the transformer.

What the official trainer/sampler do, in our layout: tokenize with max_length 512, EOS, right
padding and truncation; run the T5 encoder with the attention mask; take `last_hidden_state` in
fp32 and keep the first `len_i` rows of prompt i (their packed `kv_compact`). We return the same
rows padded instead of packed: `features[i, :len_i]` are the official rows, `mask[i] = j < len_i`
(the tokenizer's attention mask), and padded rows are zero.

Jit and recompiles: the encoder is jitted once per (batch, length) shape. Lengths are padded up
to a bucket (default 16, 32, 64, 128, 256, 512, capped at max_length), so at most ~6 programs
compile for any mix of prompts; batches are padded to a multiple of the data-parallel shard
count. Valid rows do not depend on the padded length (padding keys are masked out; relative
position biases only depend on distance), so bucketing changes nothing but speed. For fixed
shapes everywhere (the official `padding='max_length'`), pass `buckets=(max_length,)`.

Cache: an LRU dict prompt -> its (len_i, C) rows, for prompts that come back (a negative or
null prompt for CFG, a fixed eval set). Set cache_size=0 or call with cache=False for training
captions. The cached path assembles the batch on the host, so it is single-host only; multi-host
training tokenizes in the data pipeline and calls `encode_tokens` inside its own jitted step.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from infinity_jax import parallel
from infinity_jax.convert.t5 import load_t5
from infinity_jax.text.t5 import T5Config, T5Encoder, abstract_params, init_params
from infinity_jax.text.tokenizers import DEFAULT_MAX_LENGTH, ByteTokenizer, Tokenizer, load_tokenizer

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


def length_buckets(max_length: int, buckets: Sequence[int] | None = None) -> tuple[int, ...]:
    """The padded lengths in use: the given (or default) buckets up to max_length, and max_length."""
    buckets = DEFAULT_BUCKETS if not buckets else buckets
    if any(int(b) < 1 for b in buckets):
        raise ValueError(f"text length buckets {tuple(buckets)}: expected positive lengths")
    return tuple(sorted({int(b) for b in buckets if b < max_length} | {int(max_length)}))


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} text tokens exceed the largest length bucket {max(buckets)}")


def encode_tokens(config: T5Config, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Pure T5 forward for use inside a jitted step: ids (B, L) int, mask (B, L) bool -> (B, L, C) float32.

    Rows at padded positions are zero.
    """
    feats = T5Encoder(config).apply({"params": params}, ids, mask)
    return jnp.where(mask[..., None], feats, 0.0)


def pack_features(features, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Padded (B, L, C) + mask (B, L) -> the official packed form:
    (kv_compact (sum len, C), lens (B,), cu_seqlens (B+1,), max len)."""
    features, mask = np.asarray(features), np.asarray(mask, bool)
    lens = mask.sum(1).astype(np.int32)
    if not all(mask[i, :n].all() for i, n in enumerate(lens)):
        raise ValueError("pack_features: the mask must be a prefix of ones in every row")
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    return np.concatenate([features[i, :n] for i, n in enumerate(lens)]), lens, cu, int(lens.max(initial=0))


class TextEncoder:
    """Tokenizer + T5 encoder params + a jitted (optionally sharded) forward + an LRU feature cache.

    config: the encoder; params: its unboxed param tree (numpy or jax); tokenizer: see tokenizers.py.
    mesh/rules: shard the params by their logical axes (parallel.RULES preset or a rules table) and
    the batch over data x fsdp; None runs on the default device. buckets: padded lengths (see the
    module docstring). cache_size: LRU entries (0 disables).
    """

    def __init__(
        self,
        config: T5Config,
        params: Any,
        tokenizer: Tokenizer,
        *,
        mesh: Mesh | None = None,
        rules: Any = "dp",
        buckets: Sequence[int] | None = None,
        cache_size: int = 64,
    ):
        _check_vocab(tokenizer, config)
        self.config, self.tokenizer, self.mesh, self.rules = config, tokenizer, mesh, rules
        self.buckets = length_buckets(tokenizer.max_length, buckets)
        self.cache_size = int(cache_size)
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.hits = self.misses = 0
        fn = functools.partial(encode_tokens, config)
        if mesh is None:
            self._batch_multiple, self._param_shardings = 1, None
            self._fn = jax.jit(fn)
        else:
            self._batch_multiple = int(np.prod([mesh.shape[a] for a in parallel.BATCH_AXES]))
            self._param_shardings = parallel.param_shardings(abstract_params(config), mesh, rules)
            rows = parallel.batch_sharding(mesh, 2)
            self._fn = jax.jit(
                fn, in_shardings=(self._param_shardings, rows, rows), out_shardings=parallel.batch_sharding(mesh, 3)
            )
        self.set_params(params)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        folder: str,
        *,
        tokenizer: str = "auto",
        max_length: int = DEFAULT_MAX_LENGTH,
        dtype: str | None = None,
        **kwargs,
    ) -> "TextEncoder":
        """From a local Hugging Face folder (config.json + weights; spiece.model unless byte-level).

        tokenizer: 'auto' (spiece.model when the folder has one, else bytes for a 384-id vocab),
        'bytes', or a path. dtype: compute dtype override ('bfloat16' on TPU/GPU).
        """
        config, params = load_t5(folder, **({} if dtype is None else {"dtype": dtype}))
        return cls(config, params, _resolve_tokenizer(tokenizer, folder, config, max_length), **kwargs)

    @classmethod
    def from_config(
        cls,
        config: T5Config | Mapping | str,
        *,
        seed: int = 0,
        tokenizer: str = "bytes",
        max_length: int = DEFAULT_MAX_LENGTH,
        mesh: Mesh | None = None,
        rules: Any = "dp",
        **kwargs,
    ) -> "TextEncoder":
        """Random-init encoder, no files: config is a T5Config, a plain dict of its fields, or a preset name."""
        if isinstance(config, str):
            config = T5Config.preset(config)
        elif isinstance(config, Mapping):
            config = T5Config.from_dict(config)
        tok = _resolve_tokenizer(tokenizer, None, config, max_length)
        _check_vocab(tok, config)  # before paying for the init
        key_rules = None if mesh is None else parallel.logical_rules(rules)  # a hashable table
        params = _jitted_init(dataclasses.replace(config, dtype="float32"), mesh, key_rules)(jax.random.key(seed))
        return cls(config, params, tok, mesh=mesh, rules=rules, **kwargs)

    def set_params(self, params: Any) -> None:
        """Replaces the weights (placed by the logical rules under a mesh) and empties the cache."""
        if self._param_shardings is None:
            self.params = jax.tree.map(jnp.asarray, params)
        else:
            self.params = jax.device_put(params, self._param_shardings)
        self.clear_cache()

    # -- encoding -------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """C, the feature width (d_model)."""
        return self.config.d_model

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids (B, Lt) int32, mask (B, Lt) bool), Lt the bucket of the longest prompt."""
        rows = self.tokenizer.encode_batch(list(prompts))
        return self.tokenizer.pad(rows, bucket_length(max(map(len, rows), default=1), self.buckets))

    def encode_tokens(self, ids, mask) -> jax.Array:
        """Jitted forward: (B, L) ids and mask -> (B, L, C) float32, zero at padding."""
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
        B = ids.shape[0]
        pad = -B % self._batch_multiple
        if pad:  # filler rows hold a lone EOS so no attention row is fully masked
            ids = np.concatenate([ids, np.full((pad, ids.shape[1]), self.tokenizer.pad_id, np.int32)])
            ids[B:, 0] = self.tokenizer.eos_id
            mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), bool)])
            mask[B:, 0] = True
        with self._context():
            feats = self._fn(self.params, ids, mask)
        return feats[:B] if pad else feats

    def encode_text(self, prompts: Sequence[str], cache: bool | None = None) -> tuple[jax.Array, jax.Array]:
        """prompts: B strings -> (features (B, Lt, C) float32, mask (B, Lt) bool).

        features[i, :len_i] are the official T5 rows of prompt i, mask[i] is its attention mask,
        rows past len_i are zero. Lt is the bucket of the longest prompt. cache: None follows
        cache_size; False bypasses the cache for this call.
        """
        if isinstance(prompts, str):
            raise TypeError("encode_text: expected a list of prompts, got a single str (wrap it in a list)")
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("encode_text: expected a list of str prompts")
        if not prompts:
            raise ValueError("encode_text: got no prompts")
        if not (self.cache_size > 0 and cache is not False):
            ids, mask = self.tokenize(prompts)
            return self.encode_tokens(ids, mask), self._put(mask)

        found = {}
        for p in dict.fromkeys(prompts):
            if p in self._cache:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if missing:
            ids, mask = self.tokenize(missing)
            feats = np.asarray(self.encode_tokens(ids, mask))
            for p, f, n in zip(missing, feats, mask.sum(1)):
                found[p] = self._cache[p] = f[:n].copy()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        rows = [found[p] for p in prompts]
        L = bucket_length(max(len(r) for r in rows), self.buckets)
        out = np.zeros((len(rows), L, self.width), np.float32)
        mask = np.zeros((len(rows), L), bool)
        for i, r in enumerate(rows):
            out[i, : len(r)], mask[i, : len(r)] = r, True
        return self._put(out), self._put(mask)

    __call__ = encode_text

    def clear_cache(self) -> None:
        self._cache.clear()
        self.hits = self.misses = 0

    def cache_info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "max_size": self.cache_size}

    # -- placement ------------------------------------------------------------------------------
    def _context(self) -> contextlib.ExitStack:
        """The mesh and logical rules the encoder's activation constraints resolve against."""
        stack = contextlib.ExitStack()
        if self.mesh is not None:
            stack.enter_context(jax.set_mesh(self.mesh))
            stack.enter_context(nn.logical_axis_rules(parallel.logical_rules(self.rules)))
        return stack

    def _put(self, a: np.ndarray) -> jax.Array:
        """Host array -> device, split over the batch shards when the batch divides evenly."""
        if self.mesh is None:
            return jnp.asarray(a)
        if a.shape[0] % self._batch_multiple:
            return jax.device_put(a, parallel.replicated(self.mesh))
        return jax.device_put(a, parallel.batch_sharding(self.mesh, a.ndim))


@functools.lru_cache(maxsize=16)
def _jitted_init(config: T5Config, mesh: Mesh | None, rules: Any):
    """One compiled init per shape config (compiling it costs seconds; seeds and compute dtypes share
    it). Under a mesh it writes straight into the shards: XL-sized tables never sit whole on one device."""
    shardings = None if mesh is None else parallel.param_shardings(abstract_params(config), mesh, rules)
    return jax.jit(lambda key: nn.unbox(init_params(config, key)), out_shardings=shardings)


def _check_vocab(tokenizer: Tokenizer, config: T5Config) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"the {type(tokenizer).__name__} makes ids up to {tokenizer.vocab_size - 1} but the T5 "
            f"config has vocab_size={config.vocab_size}"
        )


def _resolve_tokenizer(tokenizer: str | Tokenizer, folder: str | None, config: T5Config, max_length: int) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer != "auto":
        return load_tokenizer(tokenizer, max_length)
    if folder is not None and os.path.isfile(os.path.join(folder, "spiece.model")):
        return load_tokenizer(folder, max_length)
    if config.vocab_size == ByteTokenizer().vocab_size or folder is None:
        return ByteTokenizer(max_length)
    raise FileNotFoundError(
        f"tokenizer='auto': {folder!r} has no spiece.model and vocab_size={config.vocab_size} "
        "is not ByT5's 384; pass tokenizer='bytes' or a spiece.model path"
    )


def build_text_encoder(cfg: Mapping[str, Any], mesh: Mesh | None = None) -> TextEncoder:
    """From a config dict (configs/t5.py): `path` set -> that Hugging Face folder; else a random-init
    `preset` with `model` field overrides. Other keys: tokenizer, max_length, buckets, dtype,
    cache_size, seed, rules."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)  # ml_collections.ConfigDict or a dict
    common = dict(
        max_length=cfg.get("max_length", DEFAULT_MAX_LENGTH),
        mesh=mesh,
        rules=cfg.get("rules", "dp"),
        buckets=tuple(cfg.get("buckets") or ()) or None,
        cache_size=cfg.get("cache_size", 64),
    )
    if cfg.get("path"):
        return TextEncoder.from_pretrained(
            cfg["path"], tokenizer=cfg.get("tokenizer", "auto"), dtype=cfg.get("dtype"), **common
        )
    fields = dict(T5Config.preset(cfg.get("preset", "tiny-byt5")).to_dict(), **dict(cfg.get("model") or {}))
    if cfg.get("dtype"):
        fields["dtype"] = cfg["dtype"]
    tok = cfg.get("tokenizer", "bytes")
    return TextEncoder.from_config(
        fields, seed=cfg.get("seed", 0), tokenizer="bytes" if tok == "auto" else tok, **common
    )
