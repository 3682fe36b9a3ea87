"""Input pipeline throughput (images/s) for decode + resize + crop (`infinity-jax bench data`).

`synthetic_dataset` writes synthetic photo-like JPEGs (sides 384-768 px, quality 90, like typical
web images) to an image folder and builds a dataset of them; `throughput` times the full pipeline
(data.pipeline.make_dataset) per worker count, after warm-up, at a fixed square output size or at
the h/w templates of a pixel budget.

The data stack (grain, tensorflow_datasets, PIL: infinity_jax.data.pipeline and .sources) is imported
inside the functions, so the other benchmarks, which share the `bench` command module, do not load it.
"""

from __future__ import annotations

import os
import time

import numpy as np


def synthetic_jpegs(folder: str, n: int, seed: int = 0, lo: int = 384, hi: int = 768) -> None:
    """n JPEGs with .txt captions: smooth colour fields plus noise, so they compress like photos."""
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


def synthetic_dataset(folder: str, n: int) -> str:
    """Writes n synthetic JPEGs (synthetic_jpegs) to folder/images and builds them into folder/ds (an
    image_folder dataset, headers verified); returns the built dataset's path."""
    from infinity_jax.data import sources

    synthetic_jpegs(os.path.join(folder, "images"), n)
    return sources.prepare(
        "image_folder",
        os.path.join(folder, "ds"),
        source=os.path.join(folder, "images"),
        progress=False,
        verify="header",
    )


def default_workers() -> int:
    """The pipeline's default worker count (data.pipeline.default_worker_count)."""
    from infinity_jax.data import pipeline

    return pipeline.default_worker_count()


def timing(cfg, batches: int, warmup: int) -> tuple[float, float, float]:
    """(images/s, startup s, CPU ms per image of this process: the whole cost when in-process) of the
    pipeline of a data.pipeline.DataConfig over `batches` batches after `warmup`."""
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


def throughput(
    path: str,
    workers: list[int],
    *,
    batch_size: int = 32,
    image_size: int | None = 256,
    pn: str | None = None,
    threads: int | None = None,
    batches: int = 16,
    warmup: int = 2,
):
    """Yields one row per worker count, as it is measured: workers, threads (decode threads per
    process), images_per_s, ms_per_batch, startup_s and cpu_ms_per_image (None with worker processes:
    their CPU time is not visible here). image_size None: the h/w templates of pn (default 0.06M)."""
    from infinity_jax.data import pipeline

    extra = {} if threads is None else {"num_threads": threads}
    for w in workers:
        cfg = pipeline.DataConfig(
            path=path, batch_size=batch_size, image_size=image_size, pn=pn or "0.06M", worker_count=w, **extra
        )
        ips, startup, cpu = timing(cfg, batches, warmup)
        yield {
            "workers": w,
            "threads": cfg.num_threads,
            "images_per_s": ips,
            "ms_per_batch": 1000 * batch_size / ips,
            "startup_s": startup,
            "cpu_ms_per_image": cpu if w == 0 else None,
        }
