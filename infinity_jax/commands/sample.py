"""`infinity-jax sample`: text -> images with the one-program sampler (infinity_jax/sample.py).

usage:
  infinity-jax sample --config infinity_2b --checkpoint infinity_2b.npz --vae vae_d32reg.npz \\
      --vae-config d32reg --text-encoder flan-t5-xl,path=weights/flan-t5-xl \\
      --prompt "a cat on a sofa" [--prompt ...] [--prompts-file prompts.txt] [--negative-prompt "..."] \\
      --h-div-w 1.0 --pn 1M --cfg 3 --tau 1 --seed 0 --out samples/
  infinity-jax sample --checkpoint runs/t2i [--step 1500] --prompt "a photo of a red circle" --out samples/

Writes out/<index>_<prompt slug>.png (RGB), out/grid.png (more than one image) and
out/samples.json (prompt, seed, file and the settings of every image); prints the compile time
and each batch's latency, and (unless --no-progress) every scale as it finishes. The folder
appears whole: it is written as a hidden temporary sibling of --out and renamed at the end; a
non-empty --out is refused unless --overwrite, which replaces it (nothing of the old folder stays).

Weights (see `runs.load_weights`): an orbax checkpoint folder written by the training loop (its
config is used when --config is not given; EMA params are preferred when saved; --step picks a
step, default the latest), or a params file (.npz / .msgpack) written by our converters
(`infinity-jax convert infinity` / `convert vae`), or an official .pth / .safetensors state dict,
converted on the fly. --cfg, --tau, --top-k and --top-p default to the run config's `sample`
section (the settings the run was tuned with), else to the official defaults (3, 1, 900, 0.97).
The sampling itself is infinity_jax.generate.sample_to_folder, which library callers use directly.
"""

from __future__ import annotations

import argparse

# the official defaults (generate.SAMPLING_DEFAULTS, i.e. sample.DEFAULT_CFG / _TAU / _TOP_K / _TOP_P) as
# --help shows them, written out here so that --help imports no jax (tests/test_sample_cli.py checks they agree)
HELP_DEFAULTS = {"cfg": "3", "tau": "1", "top_k": 900, "top_p": 0.97}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; every flag's default appended to its help unless the help names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infinity-jax sample", description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter
    )
    p.add_argument(
        "--config",
        default=None,
        help="transformer config: configs/infinity.py name (options after "
        "commas, e.g. infinity_2b,dtype=bfloat16) or file.py[:arg]; default: the checkpoint's",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="transformer weights: a training run folder (or its "
        "checkpoints/ or checkpoints/<step>/ folder), .npz/.msgpack params or an official .pth",
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="the step of a run folder to sample (its params and the config saved with them); default: the latest",
    )
    p.add_argument(
        "--vae",
        default=None,
        help="BSQ-VAE weights: .npz/.msgpack params or an official .pth; "
        "default: the one named by a training checkpoint's config",
    )
    p.add_argument(
        "--vae-config",
        default=None,
        help="configs/bsq_vae.py name or file.py[:arg] (default: the released tokenizer of the model's bits: "
        "d32, or d56 for the 8B's apply_spatial_patchify)",
    )
    p.add_argument(
        "--text-encoder",
        default=None,
        help="configs/t5.py argument, e.g. 'flan-t5-xl,path=weights/flan-t5-xl', or a Hugging Face "
        "folder; without a path the encoder is random (smoke tests only); default: a training "
        "checkpoint's text encoder, else flan-t5-xl",
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="one prompt per line")
    p.add_argument("--negative-prompt", default="", help="text for the uncond half of CFG (default: null text)")
    p.add_argument(
        "--h-div-w",
        type=float,
        default=None,
        help="aspect ratio h/w; the nearest official template "
        "(default: a training checkpoint's data.h_div_w, else 1.0)",
    )
    p.add_argument(
        "--pn",
        default=None,
        help="pixel budget: 0.06M, 0.25M, 0.60M or 1M (default: a training checkpoint's schedule, else 1M)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        help="a custom schedule 'HxW,HxW,...' (latent sides) instead "
        "of --h-div-w/--pn, for small models and smoke runs",
    )
    d = HELP_DEFAULTS
    p.add_argument(
        "--cfg",
        default=None,
        help="guidance: a number, one per scale 'a,b,...', or 'lin:A:B' "
        f"(default: the run config's sample.cfg, else {d['cfg']})",
    )
    p.add_argument(
        "--tau",
        default=None,
        help=f"temperature, same forms as --cfg (default: the run config's sample.tau, else {d['tau']})",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="per bit: 1 keeps the larger logit only; 0 or >= 2 off "
        f"(default: the run config's sample.top_k, else {d['top_k']})",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        help=f"per bit nucleus; 0 off (default: the run config's sample.top_p, else {d['top_p']})",
    )
    p.add_argument("--greedy", action="store_true", help="argmax per bit (deterministic)")
    p.add_argument("--seed", type=int, default=0, help="image i gets seed + i")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per program call")
    p.add_argument("--dtype", default=None, help="compute dtype override for transformer and VAE (bfloat16 on GPU/TPU)")
    p.add_argument("--rules", default="dp", help="sharding preset over all devices: dp, fsdp, fsdp_tp")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh size (with --rules fsdp_tp)")
    p.add_argument("--no-ema", action="store_true", help="use params, not ema_params, of an orbax checkpoint")
    p.add_argument("--no-progress", action="store_true", help="do not print each scale as it finishes")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out whole (its old files are deleted once the new images are written)",
    )
    return p


def options(args: argparse.Namespace):
    """The parsed flags as generate.SampleOptions."""
    from infinity_jax import generate  # here, not at the top: --help imports no jax

    return generate.SampleOptions(
        checkpoint=args.checkpoint,
        out=args.out,
        prompts=list(args.prompt or []),
        prompts_file=args.prompts_file,
        config=args.config,
        step=args.step,
        vae=args.vae,
        vae_config=args.vae_config,
        text_encoder=args.text_encoder,
        negative_prompt=args.negative_prompt,
        h_div_w=args.h_div_w,
        pn=args.pn,
        schedule=args.schedule,
        cfg=args.cfg,
        tau=args.tau,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
        batch_size=args.batch_size,
        dtype=args.dtype,
        rules=args.rules,
        tensor=args.tensor,
        ema=not args.no_ema,
        progress=not args.no_progress,
        grid=not args.no_grid,
        overwrite=args.overwrite,
    )


def main(argv: list[str]) -> int:
    opts = options(_parser().parse_args(argv))  # --help exits in parse_args, before generate (jax) is imported
    from infinity_jax import generate

    generate.sample_to_folder(opts)  # refuses a bad --out before any weights load
    return 0
