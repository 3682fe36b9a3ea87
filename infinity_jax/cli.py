"""One entry point: `infinity-jax <command> [args]` (also `python -m infinity_jax`).

Each command lives in its own module and is imported only when it runs, so `infinity-jax --help`
stays fast and a command's heavy dependencies (torch for conversion) load only when needed.
A command is a function `main(argv: list[str]) -> int | None`; a FileNotFoundError or UsageError it
raises (bad input, named in the message) is printed as one line with exit status 2.
`infinity-jax --version` prints the package version.
"""
from __future__ import annotations

import importlib
import logging
import sys

from infinity_jax import __version__
from infinity_jax.bench import BENCHMARKS  # a dict and no imports: the help lists what `bench` runs
from infinity_jax.errors import UsageError

# command name -> ("module", "function", one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "schedules": ("infinity_jax.schedules_cli", "main", "print the official scale schedules and token counts"),
    "convert-vae": ("infinity_jax.convert.vae", "main", "official BSQ-VAE .pth <-> our params (npz)"),
    "convert-lpips": ("infinity_jax.convert.lpips", "main",
                      "VGG16 + LPIPS lin .pth files -> our LPIPS params (npz) for loss.lpips_weights"),
    "convert-infinity": ("infinity_jax.convert.infinity", "main",
                         "official Infinity transformer .pth <-> our params (npz)"),
    "params": ("infinity_jax.model.transformer", "params_main",
               "parameter counts of model configs (official sizes, or any config spec: shapes, zoo:layer12, ...)"),
    "config": ("infinity_jax.config_util", "main",
               "load a config spec (file.py[:arg] or name[:arg], --config.key=value ...) and print it (JSON)"),
    "data": ("infinity_jax.data.cli", "main", "build datasets (data prepare) and look at pipeline batches (data show)"),
    "bench": ("infinity_jax.bench", "main", f"benchmarks that print a table: {', '.join(sorted(BENCHMARKS))}"),
    "sample": ("infinity_jax.sample_cli", "main", "text -> images with the one-program sampler (PNGs and a grid)"),
    "eval": ("infinity_jax.eval.cli", "main",
             "evaluators: shapes (GenEval-style prompt adherence), prefixes (which scale's drawn bits break a run)"),
    "train": ("infinity_jax.train.cli", "main", "train the Infinity transformer (resumes from --workdir)"),
    "demo": ("infinity_jax.demo", "main",
             "train and sample a real text-to-image model on the shapes data, then score it"),
    "export-torch": ("infinity_jax.convert.export", "main",
                     "a training run -> official PyTorch state dicts (strict-loadable)"),
    "import-torch": ("infinity_jax.convert.import_torch", "main",
                     "official PyTorch state dicts -> a checkpoint folder that sample/export-torch read"),
    "pretrain-text": ("infinity_jax.text.pretrain", "main",
                      "pretrain a small T5 encoder on a dataset's captions (offline stand-in for Flan-T5)"),
    "train-tokenizer": ("infinity_jax.train.tokenizer_cli", "main",
                        "train the BSQ-VAE tokenizer (resumes from --workdir; saves vae_params.npz)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: infinity-jax <command> [args]   (infinity-jax --version: the package version)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in sorted(COMMANDS.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"infinity-jax {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    # jax logs its failed probe for a TPU runtime at INFO ("Unable to initialize backend 'tpu'"), which the
    # commands' INFO logging would print on every CPU or GPU machine: keep jax's backend probing to warnings
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    if name not in COMMANDS:
        print(f"infinity-jax: unknown command {name!r}; expected one of {sorted(COMMANDS)}\n\n{_usage()}",
              file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        result = getattr(importlib.import_module(module), func)(rest)
    except (FileNotFoundError, UsageError) as e:  # bad input: the message names it; a traceback adds nothing
        print(f"infinity-jax {name}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
