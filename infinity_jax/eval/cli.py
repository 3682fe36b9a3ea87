"""`infinity-jax eval <what>`: evaluators.

    infinity-jax eval shapes --samples DIR [--out scores.json]
        score generated images of the shapes dataset for prompt adherence (GenEval-style);
        DIR holds the images and captions.jsonl ({"file": ..., "caption": ...} per line), or is the
        folder `infinity-jax sample --out DIR` wrote (its samples.json names each file's prompt).
    infinity-jax eval shapes --dataset-check N [--size 64] [--seed 0] [--blur 0.75 --noise 4]
        sanity mode: score N ground-truth renders of data/shapes.py (optionally blurred and noised)

    infinity-jax eval prefixes --run runs/demo/transformer [--prompts 120] [--cfg 3] [--out F]
        which scale of a trained shapes run breaks its samples: held-out prompts drawn with the true
        bits of the first j scales given, j = 0..K (infinity_jax/eval/prefixes.py)

`shapes` prints the summary JSON ({"scores": {category: accuracy, ..., "overall": ...}, "counts": ...,
"skipped": {"count", "first": [{"file", "caption"}, ...]}}): an image whose caption is outside the shapes
grammar is skipped, not scored, and named there (the first few) and on stderr. `--out` also writes the
summary (atomically) with a per-image "results" list (file, caption, category, score, reason) and every
skipped image in "skipped_all" (file, caption, reason).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

SKIPPED_SHOWN = 5  # skipped images named in the printed summary (--out lists them all)


def _size(text: str):
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW")
    return parts[0] if len(parts) == 1 else tuple(parts)


def shapes_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infinity-jax eval shapes",
                                 description="GenEval-style prompt adherence on the synthetic shapes dataset.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="folder of images plus captions.jsonl, or an `infinity-jax sample` "
                                        "output folder (samples.json)")
    src.add_argument("--dataset-check", type=int, metavar="N", help="score N ground-truth renders instead")
    ap.add_argument("--size", type=_size, default=64, help="--dataset-check: N or HxW pixels (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="--dataset-check: dataset seed")
    ap.add_argument("--blur", type=float, default=0.0, help="--dataset-check: Gaussian blur std in pixels")
    ap.add_argument("--noise", type=float, default=0.0, help="--dataset-check: Gaussian noise std (0..255)")
    ap.add_argument("--out", help="also write the scores and per-image results to this JSON file")
    a = ap.parse_args(argv)

    from infinity_jax.eval import shapes as ev

    t0 = time.time()
    results, skipped = [], []
    try:
        check_out_file(a.out)
        if a.samples is not None:
            source = os.path.abspath(a.samples)
            results, skipped = ev.score_samples(a.samples)
        else:
            from infinity_jax.data import shapes as ds
            if a.dataset_check < 1:
                raise ValueError(f"--dataset-check {a.dataset_check}: expected a positive number of images")
            source = f"shapes:seed={a.seed},size={a.size},blur={a.blur},noise={a.noise}"
            for i in range(a.dataset_check):
                image, caption, _ = ds.render(i, a.seed, a.size)
                image = ev.degrade(image, a.blur, a.noise, seed=i)
                results.append({"file": f"shapes:{i}", "caption": caption, **ev.score(image, caption)})
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"infinity-jax eval shapes: error: {e}", file=sys.stderr)
        return 2

    counts: dict[str, int] = {}
    for r in results:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    summary = {"source": source, "n": len(results), "scores": ev.aggregate(results), "counts": counts,
               "skipped": {"count": len(skipped),
                           "first": [{"file": r["file"], "caption": r["caption"]} for r in skipped[:SKIPPED_SHOWN]]},
               "seconds": round(time.time() - t0, 2)}
    if skipped:
        shown = ", ".join(f"{r['file']} {r['caption']!r}" for r in skipped[:SKIPPED_SHOWN])
        print(f"infinity-jax eval shapes: skipped {len(skipped)} of {len(skipped) + len(results)} image(s) whose "
              f"caption is outside the shapes grammar: {shown}{', ...' if len(skipped) > SKIPPED_SHOWN else ''}",
              file=sys.stderr)
    print(json.dumps(summary, indent=1))
    if a.out:
        from infinity_jax.convert.common import atomic_write
        full = dict(summary, results=[{k: r[k] for k in ("file", "caption", "category", "score", "reason")}
                                      for r in results], skipped_all=skipped)
        atomic_write(a.out, lambda f: f.write(json.dumps(full, indent=1).encode()))
    return 0


def check_out_file(out: str | None) -> None:
    """--out names a JSON file to write (replaced atomically); a folder there is an error, raised before any work."""
    if out and os.path.isdir(out):
        example = os.path.join(out, "scores.json")
        raise ValueError(f"--out {out!r} is a folder: expected a JSON file path, e.g. {example!r}")


def prefixes_main(argv: list[str]) -> int:
    from infinity_jax.eval import prefixes
    return prefixes.main(argv)


SUBCOMMANDS = {"shapes": shapes_main, "prefixes": prefixes_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"infinity-jax eval: unknown evaluator {argv[0]!r}; expected one of {sorted(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]](argv[1:])
