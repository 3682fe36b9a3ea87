"""`infinity-jax params [--config SPEC] ...`: parameter counts of transformer configs and their tokenizers,
from shapes only."""

from __future__ import annotations

import argparse

from infinity_jax import config_util
from infinity_jax.configs import bsq_vae
from infinity_jax.errors import UsageError
from infinity_jax.model.transformer import InfinityConfig, count_params

OFFICIAL = ["infinity_2b", "infinity_8b", "infinity_20b"] + [f"infinity_layer{n}" for n in (12, 16, 24, 32, 40, 48)]


def _vae_spec(cd, cfg: InfinityConfig) -> str | None:
    """The VAE config spec of a loaded config: its vae.config, else the released tokenizer the model reads
    (configs/bsq_vae.py released_for: d32, or d56 under apply_spatial_patchify); the fixtures' for tiny."""
    vae = cd.get("vae", None)
    if vae is not None and vae.get("config", None):
        return str(vae.config)
    if cd.get("name", None) == "tiny":
        return "bsq_vae:tiny"
    name = bsq_vae.released_for(cfg.codebook_dim, cfg.apply_spatial_patchify)
    return f"bsq_vae:{name}" if name else None


def _vae_params(spec: str, cd, cfg: InfinityConfig, where: str) -> int:
    """Parameter count of the VAE of `spec` (shapes only), checked against the model it feeds."""
    import jax
    import numpy as np

    from infinity_jax import runs
    from infinity_jax.tokenizer import vae as vae_lib

    overrides = cd.vae.get("overrides", ()) if cd.get("vae", None) is not None else ()
    try:
        vcfg = runs.load_vae_config(spec, overrides)
        cfg.check_tokenizer(vcfg.codebook_dim, vcfg.get("patch_size"), where=f"VAE (from {spec!r})")
    except (config_util.ConfigError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"--config {where!r}: {e}") from e
    shapes = vae_lib.abstract_params(vae_lib.from_config(vcfg))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def _model_config(spec: str) -> tuple[InfinityConfig, int | None, str | None, int | None]:
    """--config SPEC -> (its model config, the official parameter count it states or None, its VAE spec and
    parameter count or None). A bare name that is not a config module (infinity_2b, 2b, tiny) is a model of
    configs/infinity.py; anything else is a spec."""
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
    vae = _vae_spec(cd, cfg)
    vae_n = _vae_params(vae, cd, cfg, spec) if vae else None
    return cfg, cd.get("official_params", None), vae, vae_n


def main(argv: list[str]) -> int:
    """`infinity-jax params [--config SPEC] ...`: parameter counts from shapes only. SPEC is a configs/infinity.py
    name (infinity_2b, 2b, layer12, tiny) or any config spec with a `model` section (configs/shapes.py:layers=4,
    zoo:layer12, my.py:arg), loaded by config_util.load_config as every command does. Beside each transformer:
    its tokenizer (the config's vae.config, else the released one the model reads: d32, or d56 for the
    patchify 8B) and that VAE's parameter count."""
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
    width = max([24] + [len(spec) for spec, *_ in rows])
    vw = max([14] + [len(v or "-") for *_, v, _ in rows])
    print(
        f"{'config':{width}s} {'depth':>5s} {'width':>5s} {'heads':>5s} {'params':>16s} {'official':>16s} "
        f"{'vae':>{vw}s} {'vae params':>12s}"
    )
    for spec, cfg, off, vae, vae_n in rows:
        n = count_params(cfg)
        print(
            f"{spec:{width}s} {cfg.depth:5d} {cfg.embed_dim:5d} {cfg.num_heads:5d} {n:16,d} "
            f"{(f'{off:,d}' if off else '-'):>16s} {vae or '-':>{vw}s} {(f'{vae_n:,d}' if vae_n else '-'):>12s}"
            f"{'' if not off or off == n else '  MISMATCH'}"
        )
    return 0
