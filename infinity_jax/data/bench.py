"""`infinity-jax bench data`: input pipeline throughput (images/s) for decode + resize + crop.

Without --data it writes synthetic photo-like JPEGs (sides 384-768 px, quality 90, like typical
web images) to a temporary image folder, builds it, and times the full pipeline at a fixed
256x256 output (or the h/w templates of --pn) with the default worker count, after warm-up.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def synthetic_jpegs(folder: str, n: int, seed: int = 0, lo: int = 384, hi: int = 768) -> None:
    """n JPEGs with .txt captions: smooth colour fields plus noise, so they compress like photos."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
        img = np.clip(img + rng.normal(0, 12, size=img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
        with open(os.path.join(folder, f"{i:05d}.txt"), "w") as f:
            f.write(f"synthetic image {i}, {w}x{h}")


def _time(cfg, batches: int, warmup: int) -> tuple[float, float, float]:
    """(images/s, startup s, CPU ms per image of this process: the whole cost when in-process)."""
    from infinity_jax.data import pipeline
    t0 = time.perf_counter()
    it = iter(pipeline.make_dataset(cfg, shard=(0, 1)))
    for _ in range(warmup):
        next(it)
    t1, c1 = time.perf_counter(), time.process_time()
    n = 0
    for _ in range(batches):
        n += len(next(it)["image"])
    t2, c2 = time.perf_counter(), time.process_time()
    if hasattr(it, "close"):
        it.close()
    return n / (t2 - t1), t1 - t0, 1000 * (c2 - c1) / n


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infinity-jax bench data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a built dataset to read instead of synthetic JPEGs")
    ap.add_argument("--num-images", type=int, default=256, help="synthetic images to write")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=16, help="timed batches (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=256, help="fixed square output size")
    ap.add_argument("--pn", default=None, help="use the h/w templates of this pixel budget instead")
    ap.add_argument("--workers", default=None,
                    help="comma-separated worker counts to compare (default: the pipeline default)")
    ap.add_argument("--threads", type=int, default=None, help="decode threads per process (default: config)")
    a = ap.parse_args(argv)
    from infinity_jax.data import pipeline, sources

    workers = [int(w) for w in a.workers.split(",")] if a.workers else [pipeline.default_worker_count()]
    with tempfile.TemporaryDirectory() as tmp:
        path = a.data
        if path is None:
            t = time.perf_counter()
            synthetic_jpegs(os.path.join(tmp, "images"), a.num_images)
            path = sources.prepare("image_folder", os.path.join(tmp, "ds"), source=os.path.join(tmp, "images"),
                                   progress=False, verify="header")
            print(f"wrote and built {a.num_images} synthetic JPEGs (384-768 px sides) in "
                  f"{time.perf_counter() - t:.1f}s")
        extra = {} if a.threads is None else {"num_threads": a.threads}
        size = None if a.pn else a.image_size
        out = f"{a.image_size}x{a.image_size}" if size else f"templates of {a.pn}"
        print(f"output {out}, batch {a.batch_size}, {os.cpu_count()} CPU cores")
        print(f"load average {os.getloadavg()[0]:.1f} (other processes share these cores)")
        print(f"{'workers':>7} {'threads':>7} {'images/s':>9} {'ms/batch':>9} {'startup s':>9} {'cpu ms/img':>10}")
        for w in workers:
            cfg = pipeline.DataConfig(path=path, batch_size=a.batch_size, image_size=size, pn=a.pn or "0.06M",
                                      worker_count=w, **extra)
            ips, startup, cpu = _time(cfg, a.batches, a.warmup)
            cpu_txt = f"{cpu:.2f}" if w == 0 else "-"  # worker processes' CPU time is not visible here
            print(f"{w:>7} {cfg.num_threads:>7} {ips:>9.1f} {1000 * a.batch_size / ips:>9.1f} {startup:>9.1f} "
                  f"{cpu_txt:>10}")
    return 0
