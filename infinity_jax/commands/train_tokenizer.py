"""`infinity-jax train-tokenizer --config SPEC --workdir DIR [--config.key=value ...]`: train the BSQ-VAE.

Builds, from one config (e.g. configs/tokenizer_shapes.py), the image pipeline, the BSQ-VAE (cfg.vae) and
its loss (cfg.loss), and trains it (infinity_jax.train.tokenizer_trainer.run: checkpoints in
DIR/checkpoints, metrics in DIR/metrics.jsonl). Rerunning the command resumes (the same checks as `train`:
the config first, then a checkpoint's lr schedule and shapes; see train/loop.py).
cfg.init.vae_params (optional): start from these VAE params (our .npz/.msgpack, or an official .pth).
cfg.loss.lpips_weights (with loss.perceptual_weight > 0): the LPIPS network's local weight files,
'VGG16.pth,LIN.pth' or our .npz (`infinity-jax convert lpips`), read once at start.

When the run completes, process 0 writes (atomically):
  DIR/vae_params.npz    the trained VAE params (EMA params when optim.ema_decay > 0), our layout; the
                        transformer's `vae.params`, and `infinity-jax convert vae --to-torch` exports it
  DIR/vae_config.json   the VAE config (the transformer's `vae.config`)
  DIR/final.json        {"step", "start_step", "stopped", "train_loss" (as in `train`), "recon": {mse,
                        psnr, l1} of held-out images through the inference path (tokenize ->
                        decode_bits), and their lpips when loss.perceptual_weight > 0, "shapes_eval":
                        the shapes evaluator's scores of the reconstructions and of the originals
                        (shapes data only), "config"}
and the command prints final.json less its config as one JSON line. Exit status 0 when finished, 75 when
stopped by SIGTERM (its checkpoint saved: rerun the same command to resume).
"""

from __future__ import annotations

from infinity_jax.commands.training_args import run_command
from infinity_jax.eval import shapes as shapes_eval
from infinity_jax.train import tokenizer_trainer


def run(cfg, workdir: str, until_step: int | None = None, mesh=None) -> dict:
    """tokenizer_trainer.run with the shapes evaluator scoring the held-out reconstructions (shapes data)."""
    return tokenizer_trainer.run(cfg, workdir, until_step=until_step, mesh=mesh, score_images=shapes_eval.evaluate)


def main(argv: list[str]) -> int:
    return run_command(argv, "infinity-jax train-tokenizer", __doc__, run)
