"""`infinity-jax params [--config SPEC] ...`: parameter counts of transformer configs, from shapes only."""

from __future__ import annotations

import argparse

from infinity_jax import config_util
from infinity_jax.errors import UsageError
from infinity_jax.model.transformer import InfinityConfig, count_params

OFFICIAL = ["infinity_2b", "infinity_8b", "infinity_20b"] + [f"infinity_layer{n}" for n in (12, 16, 24, 32, 40, 48)]


def _model_config(spec: str) -> tuple[InfinityConfig, int | None]:
    """--config SPEC -> (its model config, the official parameter count it states or None). A bare name that is
    not a config module (infinity_2b, 2b, tiny) is a model of configs/infinity.py; anything else is a spec."""
    bare = not any(c in spec for c in ":/\\") and not spec.endswith(".py")
    full = f"infinity:{spec}" if bare and spec not in config_util.config_names() else spec
    try:
        cd = config_util.load_config(full)
    except config_util.ConfigError as e:
        if full == spec:
            raise
        raise UsageError(
            f"--config {spec!r}: {e.__cause__ or e}, or a config spec (file.py[:arg] or a configs/ name[:arg])"
        ) from e
    if "model" not in cd:
        raise UsageError(
            f"--config {spec!r}: the config has no `model` section; expected a transformer config "
            "(infinity, shapes, zoo, ...)"
        )
    try:
        cfg = InfinityConfig.from_dict(cd.model)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config {spec!r}: its `model` section is not an Infinity config: {e}") from e
    return cfg, cd.get("official_params", None)


def main(argv: list[str]) -> int:
    """`infinity-jax params [--config SPEC] ...`: parameter counts from shapes only. SPEC is a configs/infinity.py
    name (infinity_2b, 2b, layer12, tiny) or any config spec with a `model` section (configs/shapes.py:layers=4,
    zoo:layer12, my.py:arg), loaded by config_util.load_config as every command does."""
    p = argparse.ArgumentParser(prog="infinity-jax params", description=main.__doc__)
    p.add_argument(
        "--config",
        action="append",
        help="a configs/infinity.py name or a config spec file.py[:arg] / "
        "name[:arg] (repeatable; default: every official size)",
    )
    args = p.parse_args(argv)
    specs = args.config or OFFICIAL
    rows = [(spec, *_model_config(spec)) for spec in specs]  # every spec is checked before anything is printed
    width = max([24] + [len(spec) for spec, _, _ in rows])
    print(f"{'config':{width}s} {'depth':>5s} {'width':>5s} {'heads':>5s} {'params':>16s} {'official':>16s}")
    for spec, cfg, off in rows:
        n = count_params(cfg)
        print(
            f"{spec:{width}s} {cfg.depth:5d} {cfg.embed_dim:5d} {cfg.num_heads:5d} {n:16,d} "
            f"{(f'{off:,d}' if off else '-'):>16s}{'' if not off or off == n else '  MISMATCH'}"
        )
    return 0
