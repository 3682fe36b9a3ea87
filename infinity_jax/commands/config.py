"""`infinity-jax config SPEC [--config.key=value ...]`: a config spec loaded as every command loads it, printed."""

from __future__ import annotations

from infinity_jax import run_config
from infinity_jax.config_util import to_json
from infinity_jax.errors import UsageError

USAGE = "usage: infinity-jax config SPEC [--config.key=value ...]"


def main(argv: list[str]) -> int:
    """`infinity-jax config SPEC [--config.key=value ...]`: load a config spec as every command does (the
    launchers' local check) and print the resulting config as JSON; a bad spec or override is one line."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{main.__doc__}")
        return 0
    if not argv:
        raise UsageError(f"expected a config spec (file.py[:arg] or a configs/ name[:arg]); {USAGE}")
    spec, overrides = argv[0], argv[1:]
    if spec.startswith("-"):
        raise UsageError(f"config spec {spec!r}: expected file.py[:arg] or a configs/ name[:arg] first")
    print(to_json(run_config.load(spec, overrides)))  # completed: every field a run reads
    return 0
