"""Loading ml_collections configs by one spec string, with command-line style overrides.

Spec forms (every command, launcher and test resolves configs through load_config):
  infinity:infinity_2b              a config module of the package infinity_jax.configs (the repository's
                                    configs/, shipped under that name) and its get_config argument
  configs/infinity.py:infinity_2b   the same, by its path in the repository, from any working directory
  /abs/path/my_exp.py[:arg]         any other file defining get_config(arg); it may build on the shipped
                                    configs (`from infinity_jax.configs import shapes`)
Arguments follow one grammar, 'name,key=value,flag' (parse_arg / parse_named_arg).
Overrides: ["model.depth=4", "train.lr=1e-4"] (a leading "--config." is accepted too); values
are parsed as Python literals and must keep the type of the field they replace. Configs state only what
they set: the commands load run configs with infinity_jax.run_config.load, which completes the model,
step and optim sections from the dataclasses they feed before the overrides apply (so an override may
name any of their fields); load_config gives what the config states.
A spec or override that does not fit raises a ConfigError (a UsageError, also a KeyError / TypeError
where that is the kind of mistake); a missing file or config name a ConfigNotFoundError (also a
FileNotFoundError): the command line prints either as one line (infinity_jax.commands).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import pkgutil
from typing import Iterable, Mapping

import ml_collections

from infinity_jax.errors import UsageError

CONFIGS_PACKAGE = "infinity_jax.configs"  # the repository's configs/ (pyproject.toml: package-dir)


class ConfigError(UsageError):
    """A config spec, argument or override that does not fit: a usage error at the command line."""


class ConfigKeyError(ConfigError, KeyError):
    """An override naming a section or field the config does not have."""

    def __str__(self):  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ConfigError, TypeError):
    """An override whose value does not keep the field's type."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A config name the package does not have, or a config file that does not exist."""


def config_names() -> tuple[str, ...]:
    """The config modules shipped in infinity_jax.configs: what a bare name in a spec may be."""
    pkg = importlib.import_module(CONFIGS_PACKAGE)
    return tuple(sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.ispkg and m.name[0] != "_"))


def _package_module(path: str) -> str | None:
    """The infinity_jax.configs module a .py path names, if any: a file inside the package's folder, or a
    relative configs/x.py (the repository's layout) from any working directory."""
    rel = None
    if os.path.isfile(path):
        real = os.path.realpath(path)
        for root in importlib.import_module(CONFIGS_PACKAGE).__path__:
            r = os.path.relpath(real, os.path.realpath(root))
            if not r.startswith(os.pardir + os.sep):
                rel = r
    parts = os.path.normpath(path).split(os.sep)
    if rel is None and not os.path.isabs(path) and len(parts) > 1 and parts[0] == "configs":
        rel = os.path.join(*parts[1:])
    if rel is None or not rel.endswith(".py"):
        return None
    name = ".".join([CONFIGS_PACKAGE, *rel[:-3].split(os.sep)])
    try:
        return name if importlib.util.find_spec(name) is not None else None
    except ImportError:  # a folder in the path that is not a package
        return None


def load_module(name_or_path: str):
    """The module of a spec's first part: a config name, a path in configs/, or any .py file."""
    if name_or_path.endswith(".py"):
        module = _package_module(name_or_path)
        if module is not None:
            return importlib.import_module(module)
        if not os.path.isfile(name_or_path):
            raise ConfigNotFoundError(
                f"config {name_or_path!r} not found: expected an existing .py file or one "
                f"of the config names {list(config_names())}"
            )
        path = os.path.abspath(name_or_path)
        mod_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return mod
    names = config_names()
    if name_or_path not in names:
        raise ConfigNotFoundError(
            f"config {name_or_path!r} not found: expected a .py file path or one of the config names {list(names)}"
        )
    return importlib.import_module(f"{CONFIGS_PACKAGE}.{name_or_path}")


def load_config(spec: str, overrides: Iterable[str] = (), *, module: str | None = None) -> ml_collections.ConfigDict:
    """spec 'name[:arg]' or 'file.py[:arg]' -> the module's get_config(arg), with overrides applied.
    With `module`, a spec that is neither (no ':', no .py) is that config's argument: load_config('tiny',
    module='infinity') loads 'infinity:tiny' (the converters' model and VAE names)."""
    if module is not None and ":" not in spec and not spec.endswith(".py"):
        spec = f"{module}:{spec}"
    path, _, arg = spec.partition(":")
    mod = load_module(path)
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"config {path!r} has no get_config(arg) function")
    try:
        cfg = mod.get_config(arg or None)
    except ValueError as e:  # config files check their argument (e.g. tokenizer_shapes stride=5)
        raise ConfigError(f"config {spec!r}: {e}") from e
    return apply_overrides(cfg, overrides)


def parse_arg(arg: str | None, allowed: Iterable[str] | None = None, where: str = "config") -> dict[str, str]:
    """A get_config argument 'tiny,bits=16,width=64' -> {'tiny': '1', 'bits': '16', 'width': '64'}."""
    out = {}
    for part in (arg or "").split(","):
        if part.strip():
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip() or "1"
    if allowed is not None and set(out) - set(allowed):
        raise ConfigError(
            f"{where} argument {arg!r}: unknown keys {sorted(set(out) - set(allowed))}; "
            f"expected some of {sorted(allowed)}"
        )
    return out


def parse_named_arg(
    arg: str | None,
    where: str,
    *,
    names: Iterable[str] | None = None,
    default: str | None = None,
    aliases: Mapping[str, str] | None = None,
    allowed: Iterable[str] | None = (),
    kind: str = "config",
) -> tuple[str, dict[str, str]]:
    """A get_config argument 'name,key=value,flag' -> (name, parse_arg of the rest). The name comes first; it
    may be left out for `default` when the argument starts with a key=value or one of `allowed`. `aliases`
    map short names ('2b') to names; with `names` given, any other name is an error listing them
    ("{where} {kind} 'x': expected one of ...", e.g. "zoo model 'x'")."""
    first, _, rest = (arg or "").partition(",")
    first = first.strip()
    aliases = dict(aliases or {})
    known = None if names is None else tuple(names)
    named = (
        first
        and "=" not in first
        and not (known is not None and first not in known and first not in aliases and first in set(allowed or ()))
    )
    if named:
        name = aliases.get(first, first)
    else:
        if default is None:
            raise ConfigError(
                f"{where} argument {arg!r}: expected a {kind} name first"
                + (f", one of {known}" if known is not None else "")
            )
        name, rest = default, arg or ""
    if known is not None and name not in known:
        raise ConfigError(
            f"{where} {kind} {first!r}{'' if arg == first else f' (from {arg!r})'}: expected one of "
            f"{known}" + (f" or {tuple(aliases)}" if aliases else "")
        )
    return name, parse_arg(rest, allowed, f"{where}:{name}")


def int_arg(opts: dict[str, str], key: str, default: int, where: str = "config", minimum: int = 1) -> int:
    """opts[key] (from parse_arg) as an int >= minimum, else `default`; a bad value names the key and value."""
    text = opts.get(key, default)
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} {key}={text!r}: expected {expected}") from None
    if value < minimum:
        raise ConfigError(f"{where} {key}={value}: expected {expected}")
    return value


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as bfloat16


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(cfg.to_dict())  # never mutate the caller's config
    for item in overrides:
        key, sep, value = item.removeprefix("--").removeprefix("config.").partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.depth=4")
        path = key.split(".")
        parent = cfg
        for p in path[:-1]:
            if p not in parent:
                raise ConfigKeyError(f"override {item!r}: no section {p!r}; have {sorted(parent.keys())}")
            parent = parent[p]
        leaf = path[-1]
        if leaf not in parent:
            raise ConfigKeyError(
                f"override {item!r}: no field {leaf!r} in {'.'.join(path[:-1]) or 'config'}; "
                f"have {sorted(parent.keys())}"
            )
        new, old = _parse_value(value), parent[leaf]
        if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
            new = float(new)
        if isinstance(old, tuple) and isinstance(new, list):
            new = tuple(new)
        if old is not None and new is not None and type(new) is not type(old):
            raise ConfigTypeError(
                f"override {item!r}: {key} is {type(old).__name__} ({old!r}), got {type(new).__name__}"
            )
        parent[leaf] = new
    return cfg


def to_json(cfg: ml_collections.ConfigDict) -> str:
    """A JSON form saved beside checkpoints; tuples become lists (from_json restores them as tuples)."""
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        return x

    return ml_collections.ConfigDict(tuples(json.loads(text)))
