"""Every command of `infinity-jax` (also `python -m infinity_jax`), and the one dispatcher.

A command is a function `fn(argv: list[str]) -> int | None` in a module of this package, registered in
COMMANDS as "module:function" (a group of subcommands is a nested dict, e.g. `infinity-jax bench sample`).
Modules are imported only when their command runs, so `--help` stays fast and a command's heavy
dependencies (torch for conversion) load only when needed. The error policy is this module's alone: a
FileNotFoundError or UsageError a command raises (bad input, named in the message) is printed as one line,
`infinity-jax <command>: error: ...`, with exit status 2; anything else is a bug and keeps its traceback.
Library code never imports this package. The commands that compile big programs (CACHED) keep them in
jax's persistent compilation cache (infinity_jax.compile_cache); `bench` does not, it times the compile.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Union

from infinity_jax import __version__, compile_cache
from infinity_jax.errors import UsageError, one_line

PROG = "infinity-jax"
Entry = tuple[str, str]  # ("module:function", one-line help)
Table = dict[str, Union[Entry, "Table"]]

_M = "infinity_jax.commands."
COMMANDS: Table = {
    "schedules": (_M + "schedules:main", "print the official scale schedules and token counts"),
    "params": (_M + "params:main", "parameter counts of model configs (official sizes or any config spec)"),
    "config": (
        _M + "config:main",
        "load a config spec (name[:arg] or file.py[:arg], --config.key=value ...), print it",
    ),
    "convert": {
        "vae": (_M + "convert:vae", "official BSQ-VAE .pth <-> our params (npz)"),
        "lpips": (_M + "convert:lpips", "VGG16 + LPIPS lin .pth files -> our LPIPS params (npz)"),
        "infinity": (_M + "convert:infinity", "official Infinity transformer .pth <-> our params (npz)"),
    },
    "import-torch": (_M + "import_torch:main", "official PyTorch state dicts -> a run folder that sample/export read"),
    "export-torch": (_M + "export_torch:main", "a training run -> official PyTorch state dicts (strict-loadable)"),
    "data": {
        "prepare": (_M + "data:prepare", "build a dataset (array_record) from images + captions or the shapes data"),
        "show": (_M + "data:show", "print a few pipeline batches"),
    },
    "bench": {
        "attention": (_M + "bench:attention", "each attention kernel: error vs the reference, fwd/bwd ms"),
        "data": (_M + "bench:data", "input pipeline images/s (decode + resize + crop)"),
        "sample": (
            _M + "bench:sample",
            "sampler compile s, latency, images/s, peak memory, MFU (--memory: XLA's plan)",
        ),
        "train": (_M + "bench:train", "training step time, images/s, tokens/s, MFU (--memory: XLA's plan)"),
    },
    "sample": (_M + "sample:main", "text -> images with the one-program sampler (PNGs, a grid, samples.json)"),
    "eval": {
        "shapes": (_M + "eval:shapes", "GenEval-style prompt adherence of a shapes run"),
        "prefixes": (_M + "eval:prefixes", "which scale's drawn bits break a run's images"),
    },
    "train": (_M + "train:main", "train the Infinity transformer (resumes from --workdir)"),
    "train-tokenizer": (_M + "train_tokenizer:main", "train the BSQ-VAE tokenizer (resumes from --workdir)"),
    "pretrain-text": (_M + "pretrain_text:main", "pretrain a small T5 encoder on a dataset's captions"),
    "demo": (_M + "demo:main", "train and sample a real text-to-image model on the shapes data, then score it"),
}

CACHED = ("sample", "train", "train-tokenizer", "pretrain-text", "eval", "demo")


def _rows(table: Table, path: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    rows = []
    for name, value in sorted(table.items()):
        if isinstance(value, dict):
            rows += _rows(value, path + (name,))
        else:
            rows.append((" ".join(path + (name,)), value[1]))
    return rows


def usage(table: Table = COMMANDS, path: tuple[str, ...] = ()) -> str:
    """The help of a command group: every command under it (nested groups spelled out), one line each."""
    prog = " ".join((PROG, *path))
    rows = _rows(table)
    width = max(len(name) for name, _ in rows)
    head = f"usage: {prog} <command> [args]" + ("   (--version: the package version)" if not path else "")
    return "\n".join([head, "", "commands:"] + [f"  {name:<{width}}  {help_}" for name, help_ in rows])


class UnknownCommand(UsageError):
    """A command name its group does not have; `path` is the group it was looked up in."""

    def __init__(self, message: str, path: tuple[str, ...]):
        super().__init__(message)
        self.path = path


def resolve(argv: list[str], table: Table = COMMANDS) -> tuple[tuple[str, ...], Entry | Table, list[str]]:
    """(command path, its entry, or its group's table when argv names a group and nothing more (or asks for
    its help), remaining argv). Raises UnknownCommand for a name the table does not have, naming the choices."""
    path: tuple[str, ...] = ()
    while argv and isinstance(table, dict):
        name = argv[0]
        if name in ("-h", "--help", "help") and path:
            return path, table, []
        if name not in table:
            where = " ".join((PROG, *path))
            raise UnknownCommand(
                f"unknown command {name!r} for `{where}`: expected one of {', '.join(sorted(table))}", path
            )
        path, argv, table = path + (name,), argv[1:], table[name]
    return path, table, argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"{PROG} {__version__}")
        return 0
    # jax logs its failed probe for a TPU runtime at INFO ("Unable to initialize backend 'tpu'"), which the
    # commands' INFO logging would print on every CPU or GPU machine: keep jax's backend probing to warnings
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        path, entry, rest = resolve(argv)
    except UnknownCommand as e:  # the help of the group it was looked up in
        group = resolve(list(e.path))[1] if e.path else COMMANDS
        print(f"{PROG}: error: {e}\n\n{usage(group, e.path)}", file=sys.stderr)
        return 2
    if isinstance(entry, dict):  # a group without its subcommand: its help (exit 0 when asked for, else 2)
        asked = argv[-1] in ("-h", "--help", "help")
        print(usage(entry, path), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    module, func = entry[0].split(":")
    try:
        if path[0] in CACHED:
            compile_cache.configure()
        result = getattr(importlib.import_module(module), func)(rest)
    except (FileNotFoundError, UsageError) as e:  # bad input: the message names it; a traceback adds nothing
        print(f"{' '.join((PROG, *path))}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return int(result or 0)
