"""Loading ml_collections configs by one spec string, with command-line style overrides.

Spec forms:
  configs/infinity.py:infinity_2b   a config file and its get_config argument
  infinity:infinity_2b              the same, by the file's name in the repository's configs/
  /abs/path/my_exp.py               a file whose get_config takes no argument (or None)
Overrides: ["model.depth=4", "train.lr=1e-4"] (a leading "--config." is accepted too); values
are parsed as Python literals and must keep the type of the field they replace.
Config files import each other as `from configs import ...`: the loader makes the folder holding
this checkout's configs/ importable, whatever the working directory.
A spec or override that does not fit raises a ConfigError (a UsageError, also a KeyError / TypeError
where that is the kind of mistake); a missing file a FileNotFoundError: the command line prints either
as one line (cli.main).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from typing import Iterable

import ml_collections

from infinity_jax.errors import UsageError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class ConfigError(UsageError):
    """A config spec, argument or override that does not fit: a usage error at the command line."""


class ConfigKeyError(ConfigError, KeyError):
    """An override naming a section or field the config does not have."""

    def __str__(self):  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ConfigError, TypeError):
    """An override whose value does not keep the field's type."""


def resolve_config_path(name_or_path: str) -> str:
    """A config file path from a path or a bare name of a file in configs/."""
    candidates = [name_or_path]
    if not os.path.isabs(name_or_path):  # configs/x.py from any working directory: this checkout's file
        candidates.append(os.path.join(os.path.dirname(CONFIGS_DIR), name_or_path))
    if not name_or_path.endswith(".py"):
        candidates += [os.path.join(CONFIGS_DIR, name_or_path + ".py"), os.path.join("configs", name_or_path + ".py")]
    for c in candidates:
        if os.path.isfile(c):
            return c
    known = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py")) if os.path.isdir(CONFIGS_DIR) else []
    raise FileNotFoundError(f"config {name_or_path!r} not found: expected a .py file path or one of {known}")


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """spec 'file.py[:arg]' or 'name[:arg]' -> the file's get_config(arg), with overrides applied."""
    path, _, arg = spec.partition(":")
    path = resolve_config_path(path)
    _make_configs_importable(path)
    mod_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
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
        raise ConfigError(f"{where} argument {arg!r}: unknown keys {sorted(set(out) - set(allowed))}; "
                         f"expected some of {sorted(allowed)}")
    return out


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


def _make_configs_importable(path: str) -> None:
    """Config files build on each other (`from configs import train_defaults`), and `configs` is a folder
    (a namespace package), not an installed one: console scripts run with their bin/ folder, not the working
    directory, as sys.path[0]. Put on sys.path the folder holding this checkout's configs/ and, for a file
    in another configs/ folder (or below one), the folder holding that one."""
    roots = [os.path.dirname(CONFIGS_DIR)] if os.path.isdir(CONFIGS_DIR) else []
    folder = os.path.dirname(os.path.abspath(path))
    while os.path.dirname(folder) != folder:
        if os.path.basename(folder) == "configs":
            roots.append(os.path.dirname(folder))
            break
        folder = os.path.dirname(folder)
    for root in roots:
        if root not in sys.path:
            sys.path.insert(0, root)


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
            raise ConfigKeyError(f"override {item!r}: no field {leaf!r} in {'.'.join(path[:-1]) or 'config'}; "
                           f"have {sorted(parent.keys())}")
        new, old = _parse_value(value), parent[leaf]
        if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
            new = float(new)
        if isinstance(old, tuple) and isinstance(new, list):
            new = tuple(new)
        if old is not None and new is not None and type(new) is not type(old):
            raise ConfigTypeError(f"override {item!r}: {key} is {type(old).__name__} ({old!r}), "
                                  f"got {type(new).__name__}")
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


def main(argv: list[str]) -> int:
    """`infinity-jax config SPEC [--config.key=value ...]`: load a config spec as every command does (the
    launchers' local check) and print the resulting config as JSON; a bad spec or override is one line."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: infinity-jax config SPEC [--config.key=value ...]\n\n{main.__doc__}",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    spec, overrides = argv[0], argv[1:]
    if spec.startswith("-"):
        raise ConfigError(f"config spec {spec!r}: expected file.py[:arg] or a configs/ name[:arg] first")
    print(to_json(load_config(spec, overrides)))
    return 0
