"""`infinity-jax eval shapes|prefixes`: the evaluators of infinity_jax/eval/ as commands.

infinity-jax eval shapes --samples DIR [--out scores.json]
    score generated images of the shapes dataset for prompt adherence (GenEval-style);
    DIR holds the images and captions.jsonl ({"file": ..., "caption": ...} per line), or is the
    folder `infinity-jax sample --out DIR` wrote (its samples.json names each file's prompt).
infinity-jax eval shapes --dataset-check N [--size 64] [--seed 0] [--blur 0.75 --noise 4]
    sanity mode: score N ground-truth renders of data/shapes.py (optionally blurred and noised)

infinity-jax eval prefixes --run runs/demo/transformer [--prompts 120] [--cfg 3] [--out F]
    which scale of a trained shapes run breaks its samples: held-out prompts drawn with the true
    bits of the first j scales given, j = 0..K (infinity_jax/eval/prefixes.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from infinity_jax import fileio
from infinity_jax.data import shapes as shapes_data
from infinity_jax.errors import UsageError, one_line
from infinity_jax.eval import prefixes as prefixes_eval
from infinity_jax.eval import shapes as shapes_eval

SKIPPED_SHOWN = 5  # skipped images named in the printed summary (--out lists them all)

SHAPES_OUTPUT = """\
Prints the summary JSON ({"scores": {category: accuracy, ..., "overall": ...}, "counts": ..., "skipped":
{"count", "first": [{"file", "caption"}, ...]}}): an image whose caption is outside the shapes grammar is
skipped, not scored, and named there (the first few) and on stderr. --out also writes the summary
(atomically) with a per-image "results" list (file, caption, category, score, reason) and every skipped
image in "skipped_all" (file, caption, reason)."""


def _size(text: str):
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW")
    return parts[0] if len(parts) == 1 else tuple(parts)


def check_out_file(out: str | None) -> None:
    """--out names a JSON file to write (replaced atomically); a folder there is an error, raised before any work."""
    if out and os.path.isdir(out):
        example = os.path.join(out, "scores.json")
        raise UsageError(f"--out {out!r} is a folder: expected a JSON file path, e.g. {example!r}")


def shapes(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="infinity-jax eval shapes",
        description="GenEval-style prompt adherence on the synthetic shapes dataset.",
        epilog=SHAPES_OUTPUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--samples",
        help="folder of images plus captions.jsonl, or an `infinity-jax sample` output folder (samples.json)",
    )
    src.add_argument("--dataset-check", type=int, metavar="N", help="score N ground-truth renders instead")
    ap.add_argument("--size", type=_size, default=64, help="--dataset-check: N or HxW pixels (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="--dataset-check: dataset seed")
    ap.add_argument("--blur", type=float, default=0.0, help="--dataset-check: Gaussian blur std in pixels")
    ap.add_argument("--noise", type=float, default=0.0, help="--dataset-check: Gaussian noise std (0..255)")
    ap.add_argument("--out", help="also write the scores and per-image results to this JSON file")
    a = ap.parse_args(argv)

    t0 = time.time()
    results, skipped = [], []
    check_out_file(a.out)
    if a.samples is not None:
        source = os.path.abspath(a.samples)
        try:
            results, skipped = shapes_eval.score_samples(a.samples)
        except (ValueError, OSError) as e:  # a bad record, an unreadable image, nothing to score: named
            raise UsageError(one_line(e)) from e
    else:
        if a.dataset_check < 1:
            raise UsageError(f"--dataset-check {a.dataset_check}: expected a positive number of images")
        source = f"shapes:seed={a.seed},size={a.size},blur={a.blur},noise={a.noise}"
        for i in range(a.dataset_check):
            image, caption, _ = shapes_data.render(i, a.seed, a.size)
            image = shapes_eval.degrade(image, a.blur, a.noise, seed=i)
            results.append({"file": f"shapes:{i}", "caption": caption, **shapes_eval.score(image, caption)})

    counts: dict[str, int] = {}
    for r in results:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    summary = {
        "source": source,
        "n": len(results),
        "scores": shapes_eval.aggregate(results),
        "counts": counts,
        "skipped": {
            "count": len(skipped),
            "first": [{"file": r["file"], "caption": r["caption"]} for r in skipped[:SKIPPED_SHOWN]],
        },
        "seconds": round(time.time() - t0, 2),
    }
    if skipped:
        shown = ", ".join(f"{r['file']} {r['caption']!r}" for r in skipped[:SKIPPED_SHOWN])
        print(
            f"infinity-jax eval shapes: skipped {len(skipped)} of {len(skipped) + len(results)} image(s) whose "
            f"caption is outside the shapes grammar: {shown}{', ...' if len(skipped) > SKIPPED_SHOWN else ''}",
            file=sys.stderr,
        )
    print(json.dumps(summary, indent=1))
    if a.out:
        fileio.write_json(
            a.out,
            dict(
                summary,
                results=[{k: r[k] for k in ("file", "caption", "category", "score", "reason")} for r in results],
                skipped_all=skipped,
            ),
        )
    return 0


def prefixes(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="infinity-jax eval prefixes",
        description="At which scale a trained shapes run loses prompt adherence: held-out "
        "prompts drawn after the true bits of the first j scales, j = 0..K "
        "(infinity_jax/eval/prefixes.py).",
    )
    ap.add_argument("--run", required=True, help="a transformer training run folder (e.g. runs/demo/transformer)")
    ap.add_argument("--prompts", type=int, default=120, help="held-out prompts (the demo's unseen seed)")
    ap.add_argument("--cfg", default=shapes_data.SAMPLE_CFG, help="default: as the demo samples")
    ap.add_argument("--tau", default=shapes_data.SAMPLE_TAU, help="default: as the demo samples")
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.97)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ema", action="store_true", help="use the raw params even when EMA params exist")
    ap.add_argument("--out", help="also write the result JSON to this file (replaced atomically)")
    a = ap.parse_args(argv)
    check_out_file(a.out)  # before minutes of sampling
    try:
        result = prefixes_eval.prefix_scores(
            a.run,
            num_prompts=a.prompts,
            cfg=a.cfg,
            tau=a.tau,
            top_k=a.top_k,
            top_p=a.top_p,
            seed=a.seed,
            prefer_ema=not a.no_ema,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except ValueError as e:  # bad input (a run of something else, a bad --cfg), UsageError included
        raise UsageError(one_line(e)) from e
    for row in result["true_scales"]:
        print(
            f"true bits through {row['true_through'] or '(none)':>6}: overall {row['overall']:.3f}  "
            + " ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("true_scales", "true_through", "overall"))
        )
    for row in result["teacher_forced"]:
        print(f"teacher-forced {row['scale']:>5}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "scale"))
    if a.out:
        fileio.write_json(a.out, result)
    return 0
