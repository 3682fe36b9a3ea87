"""`infinity-jax data <prepare|show>`: build datasets and look at the batches the pipeline makes.

infinity-jax data prepare --source shapes --num-examples 10000 --out /data/shapes
infinity-jax data prepare --source /path/to/official_jsonl_folder --out /data/t2i
infinity-jax data prepare --source /path/to/images --out /data/mine        (image folder)
infinity-jax data show --data /data/t2i --batch-size 4 --pn 0.06M
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from infinity_jax.data import pipeline, shapes, sources


def _size(text: str):
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW")


def categories_arg(text: str) -> tuple[str, ...]:
    """argparse type of --categories: a comma-separated subset of shapes.CATEGORIES."""
    try:
        return shapes.check_categories(c.strip() for c in text.split(",") if c.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def prepare(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="infinity-jax data prepare", description="Build a dataset as array_record files (tfds, no TensorFlow)."
    )
    ap.add_argument(
        "--source",
        required=True,
        help="'shapes', a folder of official <h_div_w>_<count>.jsonl splits (or its parent with "
        "splits/), or an image folder with captions",
    )
    ap.add_argument("--out", required=True, help="output folder (tfds data_dir)")
    ap.add_argument(
        "--kind",
        default="auto",
        choices=("auto",) + ("infinity_jsonl", "image_folder", "shapes"),
        help="dataset kind (default: detected from --source)",
    )
    ap.add_argument(
        "--image-root",
        default=None,
        help="infinity_jsonl: folder that relative image_path values start from (default: searched)",
    )
    ap.add_argument("--limit", type=int, default=None, help="read at most this many source examples")
    ap.add_argument("--num-examples", type=int, default=1000, help="shapes: number of images")
    ap.add_argument("--image-size", type=_size, default=64, help="shapes: N or HxW pixels (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="shapes: dataset seed")
    ap.add_argument(
        "--layout",
        default="random",
        choices=shapes.LAYOUTS,
        help="shapes: where objects go (data/shapes.py: anywhere, or fixed slots by count)",
    )
    ap.add_argument(
        "--categories",
        type=categories_arg,
        default=None,
        help=f"shapes: caption categories to draw, comma-separated (default: all of {','.join(shapes.CATEGORIES)})",
    )
    ap.add_argument(
        "--verify",
        default="decode",
        choices=("decode", "header", "none"),
        help="check each image: decode (default, catches truncation), header, or none",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="images read and checked in parallel (default: one per core)"
    )
    ap.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # ours has a total; tfds' would interleave with it
    kind = sources.detect_kind(a.source) if a.kind == "auto" else a.kind
    path = sources.prepare(
        kind,
        a.out,
        source=None if kind == "shapes" else a.source,
        image_root=a.image_root,
        limit=a.limit,
        num_examples=a.num_examples,
        image_size=a.image_size,
        seed=a.seed,
        layout=a.layout,
        categories=a.categories,
        verify=a.verify,
        overwrite=a.overwrite,
        threads=a.threads,
    )
    src, info = sources.open_split(path)
    meta = info.metadata or {}
    print(f"{kind}: {len(src)} examples in {path}")
    print(f"  templates (h/w, first record, count): {meta.get('templates')}")
    skipped, examples = meta.get("skipped") or {}, list(meta.get("skipped_examples") or [])
    total = sum(skipped.values())
    print(f"  skipped: {total} {skipped}" if total else "  skipped: none")
    for line in examples:  # each names its file (and line) and what was wrong
        print(f"    {line}")
    if total > len(examples):
        print(
            f"    ... and {total - len(examples)} more (counted above)"
            if examples
            else "    (not listed: the dataset was built before skipped examples were recorded)"
        )
    return 0


def show(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infinity-jax data show", description="Print a few pipeline batches.")
    ap.add_argument("--data", required=True, help="a dataset built by `data prepare` (its --out folder)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--pn", default="0.06M", help="pixel budget of the h/w templates")
    ap.add_argument("--image-size", type=_size, default=None, help="fixed output N or HxW instead of templates")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-cap-prob", type=float, default=0.2)
    ap.add_argument("--save", default=None, help="write the first batch's images side by side to this PNG")
    a = ap.parse_args(argv)
    cfg = pipeline.DataConfig(
        path=a.data,
        batch_size=a.batch_size,
        pn=a.pn,
        image_size=a.image_size,
        worker_count=a.workers,
        seed=a.seed,
        short_cap_prob=a.short_cap_prob,
    )
    it = iter(pipeline.make_dataset(cfg, shard=(0, 1)))
    for k in range(a.batches):
        b = next(it)
        print(f"batch {k}: h/w template {b['h_div_w_template'][0]:.3f}, records {b['index'].tolist()}")
        print(pipeline.describe(b))
        for c in b["caption"]:
            print(f"    {c[:100]!r}")
        if k == 0 and a.save:
            from PIL import Image

            Image.fromarray(np.concatenate(list(b["image"]), axis=1)).save(a.save)
            print(f"  saved {a.save}")
    if hasattr(it, "close"):
        it.close()
    return 0
