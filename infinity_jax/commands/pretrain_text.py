"""`infinity-jax pretrain-text --data DATA --out FOLDER`: pretrain a small T5 encoder on a dataset's captions.

    infinity-jax pretrain-text --data DATA --out FOLDER [--steps 2400 --batch-size 16]
        [--preset tiny-byt5 --d-model 128]

The objective and what it buys: infinity_jax/text/pretrain.py. The heads are thrown away; the encoder is
saved as a Hugging Face folder (config.json + model.safetensors, and the run's figures in pretrain.json)
that `text.path` loads frozen, exactly like a downloaded Flan-T5. Prints the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from infinity_jax import fileio
from infinity_jax.convert.t5 import save_t5
from infinity_jax.text.pretrain import DEFAULT_BATCH, DEFAULT_STEPS, dataset_captions, pretrain
from infinity_jax.text.t5 import T5Config

log = logging.getLogger("infinity_jax.text.pretrain")


def save(folder: str, config: T5Config, encoder_params, report: dict) -> None:
    """The encoder as a Hugging Face folder (+ pretrain.json: `report`), built beside `folder` and renamed
    into place."""
    with fileio.atomic_folder(folder) as tmp:
        save_t5(tmp, config, encoder_params)
        with open(os.path.join(tmp, "pretrain.json"), "w") as f:
            json.dump(report, f, indent=1)


def pretrain_dataset(data: str, out: str, config: T5Config, **kwargs) -> dict:
    """pretrain() on the distinct captions of dataset `data`, saved to folder `out` (see save); returns the
    report. Also the demo's text stage."""
    captions = dataset_captions(data)
    log.info("pretrain-text: %d distinct captions from %s", len(captions), data)
    params, report = pretrain(captions, config, **kwargs)
    save(out, config, params, report)
    return report


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="infinity-jax pretrain-text", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a dataset folder from `infinity-jax data prepare`")
    ap.add_argument("--out", required=True, help="output Hugging Face folder (config.json + model.safetensors)")
    ap.add_argument("--preset", default="tiny-byt5", help="infinity_jax.text.t5 preset")
    ap.add_argument("--d-model", type=int, default=None, help="override the preset's width")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--window", type=int, default=16, help="each row learns the bytes up to this far either side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = T5Config.preset(args.preset, **({} if args.d_model is None else {"d_model": args.d_model}))
    report = pretrain_dataset(
        args.data,
        args.out,
        config,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        window=args.window,
        seed=args.seed,
    )
    print(json.dumps(report))
    return 0
