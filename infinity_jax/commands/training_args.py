"""The command line shared by the training commands (`train`, `train-tokenizer`): --config SPEC, --workdir
DIR and --config.key=value overrides; the run, its summary printed as one JSON line, the exit status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from infinity_jax import run_config
from infinity_jax.runs import EXIT_PREEMPTED


def parse_args(argv: list[str], prog: str, doc: str) -> tuple[argparse.Namespace, list[str]]:
    """--config/--workdir plus --config.key=value overrides (shared by the training commands)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--config", required=True, help="config spec: file.py[:arg] or name[:arg] (configs/)")
    ap.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics, final.json")
    args, rest = ap.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        ap.error(f"unrecognised arguments {bad}; overrides look like --config.model.depth=4")
    if "://" not in args.workdir:  # a local path: orbax refuses relative checkpoint paths (gs:// stays)
        args.workdir = os.path.abspath(args.workdir)
    return args, rest


def run_command(argv: list[str], prog: str, doc: str, run_fn) -> int:
    """The shared body of the training commands: parse, load the config, run_fn(cfg, workdir), print final.
    Returns 0 for a finished run, EXIT_PREEMPTED for one stopped by SIGTERM (saved, to be resumed)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it renames at INFO
    args, overrides = parse_args(argv, prog, doc)
    cfg = run_config.load(args.config, overrides)  # a bad spec: a UsageError for the dispatcher to print
    final = run_fn(cfg, args.workdir)
    print(json.dumps({k: v for k, v in final.items() if k != "config"}))
    if final.get("stopped") == "preempted":
        print(
            f"{prog}: stopped by SIGTERM at step {final.get('step')} of {cfg.train.total_steps}; its checkpoint is "
            f"saved in {args.workdir}: rerun the same command to resume (exit status {EXIT_PREEMPTED})",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    return 0
