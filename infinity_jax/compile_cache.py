"""The persistent XLA compilation cache of the commands that compile big programs.

`infinity-jax sample`, `train`, `train-tokenizer`, `pretrain-text`, `eval` and `demo` keep their compiled
programs on disk (jax's persistent compilation cache), so the second run of the same program on the same
devices loads it instead of compiling again: the 2B sampler at 1024² or a restarted training job (after a
preemption) skip their compile. `bench` never uses it, since it measures the compile.

Where: $INFINITY_JAX_COMPILE_CACHE, else $XDG_CACHE_HOME/infinity_jax/xla (~/.cache/...); 'off' turns it
off. A cache directory jax already has (jax_compilation_cache_dir, $JAX_COMPILATION_CACHE_DIR, set by
the caller) is kept as it is. Entries are keyed by the program, the devices, the compile options and the
jax/XLA versions, so a stale one is never loaded; delete the folder to reclaim its space.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from infinity_jax.errors import UsageError

ENV = "INFINITY_JAX_COMPILE_CACHE"
OFF = ("off", "none", "0", "false")


def default_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infinity_jax" / "xla"


def configure(where: str | None = None) -> str | None:
    """Turns the persistent cache on in `where` (default: $INFINITY_JAX_COMPILE_CACHE, else `default_dir()`)
    unless it is 'off' or jax already has a cache directory; returns the directory in use (None: off).
    Before jax is imported it sets $JAX_COMPILATION_CACHE_DIR, which jax reads then, so a command's
    `--help` still imports no jax."""
    jax = sys.modules.get("jax")
    current = jax.config.jax_compilation_cache_dir if jax else os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if current:
        return current
    where = where if where is not None else os.environ.get(ENV)
    if where is not None and where.strip().lower() in OFF + ("",):
        return None
    path = Path(where).expanduser() if where else default_dir()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{ENV}={str(path)!r}: expected a directory for the compile cache (or 'off'); it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home (some cluster images): compile as without a cache
        logging.getLogger(__name__).warning("no compilation cache: cannot create %s (%s)", path, e)
        return None
    if jax:
        jax.config.update("jax_compilation_cache_dir", str(path))
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    return str(path)
