"""Precomputed tokenizer latents: encode a dataset once with the frozen BSQ-VAE, then train on them.

Without random augmentation the frozen VAE encoder gives the same output every epoch, so its
cost per step (large on big images, small next to the transformer in the shapes demo: about 2%
of a step at 32x32, measured) can be paid once: `build` runs the input pipeline once (one epoch, fixed
order, this host's shard), keeps the continuous encoder output z (before quantization: self-correction
re-quantizes it every step) and the tokenized captions, and `CachedBatches` serves shuffled batches of them:

    cache = latent_cache.ensure(folder, data_cfg, encode, tokenizer, fingerprint)
    batches = latent_cache.CachedBatches(cache, batch_size, seed)   # {'latent', 'tokens', 'token_mask'}

Folder layout (one subfolder per host shard, written whole into a temp folder and renamed, so a
half-built cache never exists): FOLDER/shard-<i>-of-<n>/{latent.npy, tokens.npy, token_mask.npy,
meta.json}. meta.json holds the fingerprint (VAE, data, text settings); opening a cache with a
different fingerprint is an error naming what changed. Captions are chosen once at build time,
so data.short_cap_prob must be 0 or 1 and data.random_flip off (both would otherwise be frozen
into one draw).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Mapping

import numpy as np

from infinity_jax.data import pipeline
from infinity_jax.fileio import atomic_folder

log = logging.getLogger(__name__)
ARRAYS = ("latent", "tokens", "token_mask")


def shard_folder(folder: str, shard: tuple[int, int]) -> str:
    return os.path.join(folder, f"shard-{shard[0]}-of-{shard[1]}")


def check_cacheable(cfg: pipeline.DataConfig) -> None:
    """Refuses settings whose per-epoch randomness a one-time encode would freeze."""
    if cfg.random_flip:
        raise ValueError(
            "data.random_flip=True with a latent cache: the flip would be drawn once and frozen; "
            "expected random_flip=False (or no cache)"
        )
    if cfg.short_cap_prob not in (0.0, 1.0) or cfg.dynamic_length_prompt:
        raise ValueError(
            f"data.short_cap_prob={cfg.short_cap_prob}, dynamic_length_prompt="
            f"{cfg.dynamic_length_prompt} with a latent cache: captions would be drawn once and "
            "frozen; expected short_cap_prob 0 or 1 and no dynamic length (or no cache)"
        )


def build(
    folder: str,
    cfg: pipeline.DataConfig,
    encode: Callable[[np.ndarray], Any],
    tokenizer: pipeline.Tokenizer,
    fingerprint: Mapping[str, Any],
    shard: tuple[int, int],
) -> str:
    """Encodes this host's shard of one epoch into shard_folder(folder, shard); returns that path.

    encode: images (B, H, W, 3) uint8 -> latents (B, h, w, d) (the frozen VAE encoder, jitted).
    """
    check_cacheable(cfg)
    out = shard_folder(folder, shard)
    one_epoch = dataclasses.replace(cfg, num_epochs=1, shuffle=False, worker_count=0)
    total = pipeline.batches_per_epoch(one_epoch, shard=shard)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
    t0 = time.perf_counter()
    for i, batch in enumerate(pipeline.make_dataset(one_epoch, tokenizer=tokenizer, shard=shard), 1):
        parts["latent"].append(np.asarray(encode(batch["image"]), np.float32))
        parts["tokens"].append(batch["tokens"])
        parts["token_mask"].append(batch["token_mask"])
        if i % 50 == 0 or i == total:
            rate = i / (time.perf_counter() - t0)
            log.info(
                "latent cache %s: %d/%d batches (%.1f batches/s, ETA %.0f s)", out, i, total, rate, (total - i) / rate
            )
    if not parts["latent"]:
        raise ValueError(f"latent cache: dataset {cfg.path} gave no batches of {cfg.batch_size}")
    with atomic_folder(out) as tmp:
        for k, v in parts.items():
            np.save(os.path.join(tmp, f"{k}.npy"), np.concatenate(v))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(
                {
                    "fingerprint": dict(fingerprint),
                    "examples": int(sum(len(v) for v in parts["latent"])),
                    "seconds": time.perf_counter() - t0,
                },
                f,
                indent=1,
            )
    log.info(
        "latent cache %s: %d examples in %.0f s", out, sum(len(v) for v in parts["latent"]), time.perf_counter() - t0
    )
    return out


def load(folder: str, fingerprint: Mapping[str, Any], shard: tuple[int, int]) -> dict[str, np.ndarray]:
    """This host's arrays; raises if the cache was built from other settings."""
    path = shard_folder(folder, shard)
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    want = json.loads(json.dumps(dict(fingerprint)))  # the JSON round trip meta.json went through
    diff = sorted(k for k in set(want) | set(meta["fingerprint"]) if want.get(k) != meta["fingerprint"].get(k))
    if diff:
        raise ValueError(
            f"latent cache {path} was built with other settings: "
            + "; ".join(f"{k}: cache {meta['fingerprint'].get(k)!r}, now {want.get(k)!r}" for k in diff)
            + ". Delete it or point data.latent_cache at another folder"
        )
    return {k: np.load(os.path.join(path, f"{k}.npy")) for k in ARRAYS}


def ensure(folder: str, cfg: pipeline.DataConfig, encode, tokenizer, fingerprint, shard=None) -> dict[str, np.ndarray]:
    """load() the cache, building it first when this shard's folder does not exist."""
    shard = pipeline._shard(shard)
    if not os.path.exists(os.path.join(shard_folder(folder, shard), "meta.json")):
        build(folder, cfg, encode, tokenizer, fingerprint, shard)
    return load(folder, fingerprint, shard)


class CachedBatches:
    """Shuffled batches of a loaded cache, forever: epoch e visits every example once in the
    order permutation(seed, e) (a remainder smaller than a batch is left out that epoch).
    get_state()/set_state() checkpoint the position, so a resumed run sees the same batches."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int):
        n = len(arrays["latent"])
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size={batch_size}: expected 1..{n} (the examples in this latent cache shard)")
        self._arrays, self._B, self._seed = dict(arrays), int(batch_size), int(seed)
        self.per_epoch = n // self._B
        self._step = 0
        self._order: tuple[int, np.ndarray] | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, b = divmod(self._step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            n = len(self._arrays["latent"])
            self._order = (epoch, np.random.default_rng([self._seed, epoch]).permutation(n))
        idx = np.sort(self._order[1][b * self._B : (b + 1) * self._B])
        self._step += 1
        return {k: v[idx] for k, v in self._arrays.items()}

    def get_state(self) -> dict:
        return {"step": self._step}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._step = int(state["step"])
