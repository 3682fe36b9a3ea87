"""`infinity-jax import-torch --transformer infinity_2b_reg.pth [--vae infinity_vae_d32reg.pth] --config 2b --out DIR`.

The official released state dicts (.pth / .safetensors; bf16 and fp16 load, upcast exactly to fp32)
-> a folder that `infinity-jax sample --checkpoint DIR` and `infinity-jax export-torch --checkpoint
DIR` read as they read a training run, with no flags for model, VAE or schedule (the folder's layout:
infinity_jax/convert/import_torch.py, which writes it).

`--config.KEY=VALUE` overrides apply to the --config as they do in `infinity-jax train` (e.g. a
configs/shapes.py run exported with --config.model.extension='' comes back with the same override).
Only the official architecture can be filled from an official state dict: a config with one of our
`model.extension`s (configs/shapes.py sets one) is refused by name, as export-torch refuses it.

Loading is strict: one error names the missing, unexpected and mis-shaped keys (the first few of each,
and how many), after the sizes the state dict implies beside the config's. Bad input is one line (exit
status 2) and writes nothing. The folder appears atomically: it is written as a hidden temporary
sibling of DIR and renamed at the end; a non-empty DIR is refused unless --overwrite.

usage:
  infinity-jax import-torch --transformer weights/infinity_2b_reg.pth --vae weights/infinity_vae_d32reg.pth \\
      --config configs/infinity.py:2b --text-encoder weights/flan-t5-xl --out models/infinity_2b
  infinity-jax import-torch --transformer weights/THE_8B_TRANSFORMER.pth \\
      --vae weights/infinity_vae_d56_f8_14_patchify.pth --config 8b --text-encoder weights/flan-t5-xl \\
      --out models/infinity_8b     (the released 8B: d 56 = 4 x 14 bits, apply_spatial_patchify=1)
  infinity-jax sample --checkpoint models/infinity_2b --prompt "a cat on a sofa" --out samples/
"""

from __future__ import annotations

import argparse

from infinity_jax import schedules
from infinity_jax.convert import import_torch
from infinity_jax.errors import UsageError, one_line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infinity-jax import-torch",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--transformer", required=True, help="official transformer state dict (.pth / .safetensors)")
    p.add_argument(
        "--vae",
        default=None,
        help="official BSQ-VAE state dict (e.g. infinity_vae_d32reg.pth); without it, sample needs --vae",
    )
    p.add_argument(
        "--config",
        required=True,
        help="model config: configs/infinity.py name (2b, infinity_2b,"
        "dtype=bfloat16) or a spec (configs/infinity.py:2b, configs/zoo.py:2b); --config.KEY=VALUE "
        "overrides follow it (--config.model.scan_layers=True)",
    )
    p.add_argument(
        "--vae-config",
        default=None,
        help="configs/bsq_vae.py name or spec (bsq_vae:d32reg); default: the released name in the --vae "
        "file name (infinity_vae_d56_f8_14_patchify.pth: d56), else the config's, else the released tokenizer "
        "the model reads (d<codebook_dim>; d56 for the 8B's apply_spatial_patchify); checked against the model",
    )
    p.add_argument(
        "--text-encoder",
        default=None,
        help="a Hugging Face T5 folder (e.g. weights/flan-t5-xl) or a "
        "configs/t5.py argument, saved for sample; default: none (sample's --text-encoder)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        help="sampling schedule: a pixel budget (0.06M 0.25M 0.60M 1M) or 'HxW,...'; default: the config's, else 1M",
    )
    p.add_argument("--step", type=int, default=0, help="the step number to save the checkpoint under")
    p.add_argument("--key", default=None, help="sub-dict of the transformer file to read (e.g. 'trainer')")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def main(argv: list[str]) -> int:
    p = _parser()
    a, rest = p.parse_known_args(argv)
    bad = [x for x in rest if not x.startswith("--config.")]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides look like --config.model.scan_layers=True")
    if a.schedule is not None:  # checked here, so a typo fails before any weights load
        try:
            schedules.resolve(a.schedule)
        except ValueError as e:
            raise UsageError(f"--schedule {a.schedule!r}: {e}") from e
    try:
        s = import_torch.import_weights(
            a.transformer,
            a.out,
            config=a.config,
            vae=a.vae,
            vae_config=a.vae_config,
            text_encoder=a.text_encoder,
            schedule=a.schedule,
            step=a.step,
            key=a.key,
            overwrite=a.overwrite,
            overrides=rest,
        )
    except (OSError, ValueError, KeyError, ImportError) as e:  # bad input (or an unwritable --out): one line
        raise UsageError(one_line(e)) from e
    for name in ("transformer", "vae"):
        if name in s:
            d = s[name]
            print(
                f"import-torch: {name}: {d['file']}: {d['keys']} keys, {d['params']:,} params, "
                f"{'/'.join(d['dtypes'])} -> {'/'.join(d['param_dtypes'])}"
            )
    text = s["text"] and (s["text"]["path"] or f"{s['text']['preset']} (random, no weights)")
    print(
        f"import-torch: wrote {s['out']} (step {s['step']}, config {s['config']}, schedule {s['schedule']}, "
        f"vae {'yes' if 'vae' in s else 'no: pass --vae to sample'}, text encoder {text or 'none'})"
    )
    return 0
