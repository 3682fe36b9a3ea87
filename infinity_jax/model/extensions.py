"""Opt-in, non-official additions to the Infinity transformer, chosen by name with `model.extension`.

The official model has none (`extension=''`, the default). An extension is a linen module built from
the InfinityConfig (`EXTENSIONS[name](cfg)`); `Infinity.setup` builds the one the config names and shares
its scope, so the extension's params sit at the top of the params tree beside the official ones (its
names must not clash with them). Its one hook:

    ext(schedule, start, length) -> (length, C) float32, added to tokens start..start+length-1 of the
    schedule together with the level embedding (`Infinity._level_and_place`), in training and decoding.

No official state dict has weights for an extension, so export refuses a model with one
(convert/infinity.py official_model_config).

  abs_pos_embed  the shapes recipe (configs/shapes.py): a learned projection of each token's absolute
                 place. RoPE alone gives a token only relative offsets, and the inputs of a scale are
                 identical wherever the coarser scales drew background, so a small model has a hard
                 time putting the first-named object on the left. Params: abs_pos/kernel (4 * 6, C).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from infinity_jax import schedules
from infinity_jax.model import layers


def cell_centre_features(schedule: schedules.Schedule, num_freqs: int = 6) -> np.ndarray:
    """(L, 4 * num_freqs) float32: sin/cos of every token's cell centre, as a fraction of the image in
    [0, 1] per axis, at frequencies pi * 2**f. Every scale's cell covering a place gets nearly the same
    features, whatever the schedule."""
    out = []
    for _, h, w in schedule:
        yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        angles = np.stack([yy.ravel(), xx.ravel()], -1)[:, :, None] * (np.pi * 2.0 ** np.arange(num_freqs))
        out.append(np.concatenate([np.sin(angles), np.cos(angles)], -1).reshape(h * w, -1))
    return np.concatenate(out).astype(np.float32)


class AbsPosEmbed(nn.Module):
    """`abs_pos_embed`: tokens start..start+length-1 -> (length, C), a bias-free projection (abs_pos) of
    their cell_centre_features."""

    cfg: Any  # InfinityConfig

    def setup(self):
        self.abs_pos = layers.dense(self.cfg.embed_dim, (None, "embed"), use_bias=False)

    def __call__(self, schedule: schedules.Schedule, start: int, length: int) -> jax.Array:
        return self.abs_pos(jnp.asarray(cell_centre_features(schedule)[start : start + length]))


EXTENSIONS: dict[str, type[nn.Module]] = {"abs_pos_embed": AbsPosEmbed}
NAMES = ("", *EXTENSIONS)


def check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"extension={name!r}: expected '' (the official model) or one of {tuple(EXTENSIONS)}")


def build(cfg) -> nn.Module | None:
    """The extension module `cfg.extension` names (unbound; the caller shares its scope), or None."""
    check(cfg.extension)
    return EXTENSIONS[cfg.extension](cfg) if cfg.extension else None


def upgrade_legacy(d: Mapping[str, Any]) -> dict[str, Any]:
    """A model config dict of a run saved before `model.extension`, whose flag `abs_pos_embed` becomes
    extension='abs_pos_embed' (True) or goes (False)."""
    d = dict(d)
    if d.pop("abs_pos_embed", False):
        d["extension"] = "abs_pos_embed"
    return d
