"""`infinity-jax train --config SPEC --workdir DIR [--config.key=value ...]`: train the Infinity transformer.

Builds, from one config (e.g. configs/shapes.py), the data pipeline, the frozen BSQ-VAE and T5 text
encoder and the transformer, and trains it (infinity_jax.train.trainer.run). Rerunning the same command
resumes from DIR/checkpoints (it refuses, in one line, a checkpoint of another model shape, and one whose
lr schedule the config changes, e.g. a larger train.total_steps, unless --config.train.reschedule=True:
see train/loop.py). The config is checked before anything is built. At the end it computes a validation
loss on held-out batches and writes DIR/final.json (fields: train/trainer.py), and prints it less its
config as one JSON line. Every cfg.sample.every steps a grid of cfg.sample.prompts goes to
DIR/samples/step_XXXXXXX.png. Exit status 0 when finished, 75 when stopped by SIGTERM (its checkpoint
saved: rerun the same command to resume).
Multi-host: jax.distributed is initialised from the environment (TPU auto-detect, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); only process 0 writes files.
"""

from __future__ import annotations

from infinity_jax.commands.training_args import run_command
from infinity_jax.train import trainer


def main(argv: list[str]) -> int:
    return run_command(argv, "infinity-jax train", __doc__, trainer.run)
