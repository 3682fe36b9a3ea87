"""Run configs: a config spec loaded as the commands run it, completed from the code it configures.

Configs (infinity_jax.configs) import no model or training code, so they state only what they set; the
dataclasses their sections feed keep the defaults. `load` is config_util.load_config plus `complete`, which
fills those sections before the overrides apply (so an override may name any field, and the config a run
saves and `infinity-jax config SPEC` prints is whole):
  model   an Infinity architecture (a section naming `depth`)  <- model.transformer.InfinityConfig
  step    the transformer's loss options                      <- train.step.StepOptions
  optim   optimizer settings                                  <- train.optim.NO_DECAY_KEYS (no_decay_keys)
Also here: the model shapes behind configs/mesh_presets.py's table (`python -m infinity_jax.run_config`
prints the table; tests/test_zoo_configs.py keeps it in step).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import ml_collections

from infinity_jax import config_util, schedules
from infinity_jax.configs import mesh_presets
from infinity_jax.model.transformer import InfinityConfig, count_params
from infinity_jax.train.optim import NO_DECAY_KEYS
from infinity_jax.train.step import StepOptions


def _fill(section: ml_collections.ConfigDict, defaults: dict) -> None:
    for key, value in defaults.items():
        if key not in section:
            section[key] = value


def complete(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of cfg whose model / step / optim sections (those it has) also hold every field it leaves to the
    dataclass defaults; what the config states is kept."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())  # never mutate the caller's config
    # every configs/infinity.py size states depth; a text encoder's `model` (T5 overrides) never does
    if isinstance(cfg.get("model"), ml_collections.ConfigDict) and "depth" in cfg.model:
        _fill(cfg.model, {f.name: f.default for f in dataclasses.fields(InfinityConfig)})
    if isinstance(cfg.get("step"), ml_collections.ConfigDict):
        _fill(cfg.step, dataclasses.asdict(StepOptions()))
    if isinstance(cfg.get("optim"), ml_collections.ConfigDict):
        _fill(cfg.optim, {"no_decay_keys": NO_DECAY_KEYS})
    return cfg


def load(spec: str, overrides: Iterable[str] = (), *, module: str | None = None) -> ml_collections.ConfigDict:
    """config_util.load_config(spec, module=module), completed, with the overrides applied (the same spec
    grammar and errors)."""
    return config_util.apply_overrides(complete(config_util.load_config(spec, module=module)), overrides)


def model_shape(model: str, pn: str) -> dict:
    """The mesh_presets.fits keyword arguments of a configs/infinity.py size at a pixel budget (square images)."""
    m = InfinityConfig.from_dict(load(model, module="infinity").model)
    return dict(
        params=count_params(m),
        depth=m.depth,
        embed_dim=m.embed_dim,
        tokens=schedules.num_tokens(schedules.official_schedule(1.0, pn)),
        bits=m.codebook_dim,
    )


def mesh_table() -> str:
    """configs/mesh_presets.py's docstring table, recomputed from the memory estimate."""
    rows = [mesh_presets.table_row(p, **model_shape(p.model, p.pn)) for p in mesh_presets.PRESETS.values()]
    return "\n".join([mesh_presets.TABLE_HEADER, *rows])


if __name__ == "__main__":
    print(mesh_table())
