"""grain input pipeline: aspect-ratio buckets, per-host shards, decode/resize/crop, captions, text.

    ds = make_dataset(DataConfig(path=..., batch_size=B), tokenizer=None)
    it = iter(ds); batch = next(it)

A batch is a dict of numpy arrays, B = per-host batch size:
    image              (B, H, W, 3) uint8 (default; `to_float` maps it to [-1, 1] on device, 4x less
                       host memory and transfer) or float32 in [-1, 1] with image_dtype='float32'
    caption            (B,) str, the caption chosen for this step (short or long, see below)
    h_div_w_template   (B,) float32, the batch's official h/w template (every example the same)
    index              (B,) int64, record index in the split
    spec               (B,) str, JSON image spec (shapes dataset; '' for others)
    tokens, token_mask (B, L) from `tokenizer(captions) -> (ids, mask)` when a tokenizer is given

How batches are formed (deterministic in (seed, epoch); independent of worker count):
  1. Each record has a template (the builder's run metadata, see sources.py). Per epoch the
     records are permuted by seed+epoch, grouped by template, cut into *global* batches of
     B * shard_count records of one template (remainders < one global batch per template are
     dropped that epoch), and the batches are permuted. A template with fewer records than one
     global batch is never used.
  2. Host `shard_index` takes columns [shard_index*B, (shard_index+1)*B) of every global batch:
     hosts are disjoint, cover the same records, and see the same template at every step (one
     shape across the pod).
  3. With `image_size` set, every record has the same fixed output size (one bucket), for small
     custom images such as the 64x64 shapes demo; otherwise the output size is the template's
     pixel size at pixel budget `pn` (schedules.image_size(schedules.official_schedule(t, pn))).
Per example: decode; resize preserving the aspect ratio so the image covers the target (Lanczos;
JPEGs are first decoded at a reduced DCT scale when at least 2x too large, `fast_decode`); center
crop; optional horizontal flip (p=0.5; shapes specs and their left/right captions are mirrored
too); caption: the short `text` with probability `short_cap_prob`, else `long_caption` (with
`dynamic_length_prompt`, the official sentence-truncation rule: a missing short caption is made
from the first 1-2 sentences, and long captions are cut to a random number of sentences);
anything after '--' in the chosen caption is dropped. All randomness comes from
(seed, epoch, batch, column), so a resumed iterator repeats it exactly.

An image that fails to decode is counted, logged (first and every `log_every`-th per process),
and replaced in its batch by a copy of another example of the same batch; a batch whose images
all fail is skipped. Iterator state (`it.get_state()`) checkpoints with orbax through
`grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` and resumes at the next batch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from typing import Any, Callable, Sequence

import grain
import numpy as np
from PIL import Image

from infinity_jax import schedules
from infinity_jax.data import shapes, sources

Tokenizer = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def default_worker_count() -> int:
    """Worker processes when DataConfig.worker_count is None: one per core, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Pipeline settings. path: a dataset built by `infinity-jax data prepare` (its --out folder or
    the dataset folder). batch_size is per host."""

    path: str
    batch_size: int
    split: str = sources.SPLIT
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    pn: str = "0.06M"  # pixel budget of the official templates
    image_size: int | tuple[int, int] | None = None  # fixed (H, W) output instead of templates
    random_flip: bool = False
    short_cap_prob: float = 0.2  # official code default (its train script uses 0.5)
    dynamic_length_prompt: bool = False  # official `enable_dynamic_length_prompt`
    image_dtype: str = "uint8"  # 'uint8' or 'float32' ([-1, 1])
    fast_decode: bool = True
    worker_count: int | None = None  # processes; None: default_worker_count(); 0: in-process
    worker_buffer_size: int = 2  # batches each worker keeps ready
    num_threads: int = 2  # threads per process decoding batches in parallel
    log_every: int = 100

    @classmethod
    def from_dict(cls, d) -> "DataConfig":
        """From a dict or ml_collections ConfigDict; unknown keys are an error."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown data config keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)


def to_float(images):
    """uint8 images (numpy or jax, also inside jit) -> float32 in [-1, 1]; float images -> float32."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    return images.astype(np.float32)


# ---------------------------------------------------------------- per-example transforms


def decode_resize_crop(data: bytes, size: tuple[int, int], fast: bool = True) -> np.ndarray:
    """Encoded image -> (H, W, 3) uint8: scale to cover (H, W) keeping the aspect ratio, center crop.

    The crop box is mapped back to source pixels and resized in one Lanczos pass (the same as
    resizing the whole image and cropping, without computing the cropped-away pixels).
    """
    th, tw = size
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        s = max(tw / w, th / h)
        if fast and min(w * s, h * s) * 2 <= min(w, h):
            im.draft("RGB", (int(np.ceil(w * s)), int(np.ceil(h * s))))  # JPEG only; >= the asked size
        im = im.convert("RGB")
    w, h = im.size
    if (w, h) == (tw, th):
        return np.asarray(im)
    s = max(tw / w, th / h)
    bw, bh = tw / s, th / s  # the crop window in source pixels
    box = (max(0.0, (w - bw) / 2), max(0.0, (h - bh) / 2), min(w, (w + bw) / 2), min(h, (h + bh) / 2))
    return np.asarray(im.resize((tw, th), Image.LANCZOS, box=box))


def _cut_dashes(text: str) -> str:
    head = text.split("--")[0]
    return head if head else text


def choose_caption(
    long: str, short: str, long_type: str, rng: np.random.Generator, short_prob: float, dynamic_length: bool
) -> str:
    """The caption for one training step, by the official rule (see module docstring)."""
    r = rng.random()
    if dynamic_length and long_type not in ("", "user_prompt"):
        sentences = [s for s in long.split(".") if s]
        first_words = [w for w in sentences[0].split(" ") if w] if sentences else []
        n_short = 1 if len(first_words) >= 15 else 2
        short = short or ".".join(sentences[:n_short])
        if r < short_prob:
            out = short
        elif len(sentences) <= n_short:
            out = long
        else:
            out = ".".join(sentences[: int(rng.integers(n_short + 1, len(sentences) + 1))])
    else:
        out = short if short and r < short_prob else long
    return _cut_dashes(out)


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------- the batch plan


def epoch_batches(templates: np.ndarray, global_batch: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """(num_batches, global_batch) record indices of one epoch; each row holds one template.

    templates: (N,) template per record. The number of rows is the same every epoch.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(len(templates)) if shuffle else np.arange(len(templates))
    rows = []
    for t in np.unique(templates):  # sorted, so the order does not depend on the data
        idx = order[templates[order] == t]
        nb = len(idx) // global_batch
        rows.append(idx[: nb * global_batch].reshape(nb, global_batch))
    rows = np.concatenate(rows) if rows else np.zeros((0, global_batch), np.int64)
    return rows[rng.permutation(len(rows))] if shuffle else rows


class _Plan(grain.MapDataset):
    """Element k: this host's record indices of global batch k (epochs laid end to end)."""

    def __init__(
        self,
        templates: np.ndarray,
        batch_size: int,
        shard_index: int,
        shard_count: int,
        seed: int,
        shuffle: bool,
        num_epochs: int | None,
    ):
        super().__init__()
        self._templates, self._B, self._shard, self._count = templates, batch_size, shard_index, shard_count
        self._seed, self._shuffle = seed, shuffle
        self.per_epoch = len(epoch_batches(templates, batch_size * shard_count, seed, 0, False))
        self._len = sys.maxsize if num_epochs is None else self.per_epoch * num_epochs
        self._cache: dict[int, np.ndarray] = {}  # this epoch's plan and the one before

    def __len__(self) -> int:
        return self._len

    def __str__(self) -> str:
        return f"_Plan(batches_per_epoch={self.per_epoch}, shard={self._shard}/{self._count})"

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        epoch, b = divmod(int(k), self.per_epoch)
        rows = self._cache.get(epoch)  # threads read concurrently: never index self._cache twice
        if rows is None:
            rows = epoch_batches(self._templates, self._B * self._count, self._seed, epoch, self._shuffle)
            self._cache = {**{e: r for e, r in self._cache.items() if e == epoch - 1}, epoch: rows}
        cols = slice(self._shard * self._B, (self._shard + 1) * self._B)
        idx = rows[b, cols]
        return {
            "indices": idx,
            "epoch": epoch,
            "batch": b,
            "col0": cols.start,
            "template": float(self._templates[idx[0]]),
        }

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}  # workers rebuild it
        return state


def _try_read(src, i: int):
    try:
        return src[i]
    except Exception as e:
        return e


class _LoadBatch:
    """Plan entry -> batch dict (runs inside the worker processes; picklable)."""

    def __init__(self, src, cfg: DataConfig, tokenizer: Tokenizer | None):
        self.src, self.cfg, self.tokenizer = src, cfg, tokenizer
        self.skips = sources.SkipCounter("data pipeline", cfg.log_every)

    def out_size(self, template: float) -> tuple[int, int]:
        if self.cfg.image_size is not None:
            s = self.cfg.image_size
            return (s, s) if isinstance(s, int) else tuple(s)
        return schedules.image_size(schedules.official_schedule(template, self.cfg.pn))

    def example(self, rec: dict, size, rng: np.random.Generator) -> dict:
        img = decode_resize_crop(rec["image"], size, self.cfg.fast_decode)
        long, spec = _text(rec.get("long_caption", "")), _text(rec.get("spec", ""))
        if self.cfg.random_flip and rng.random() < 0.5:
            img = img[:, ::-1]
            if spec:
                flipped = shapes.flip_spec(json.loads(spec))
                long, spec = flipped["caption"], shapes.dumps(flipped)
        cap = choose_caption(
            long,
            _text(rec.get("text", "")),
            _text(rec.get("long_caption_type", "")),
            rng,
            self.cfg.short_cap_prob,
            self.cfg.dynamic_length_prompt,
        )
        return {"image": np.ascontiguousarray(img), "caption": cap, "spec": spec}

    def __call__(self, plan: dict) -> dict | None:
        size = self.out_size(plan["template"])
        out: list[dict | None] = []
        try:  # one batched read (array_record reads them in parallel)
            recs = list(self.src.__getitems__([int(i) for i in plan["indices"]]))
        except Exception:  # fall back to single reads so one bad record costs one example
            recs = [_try_read(self.src, int(i)) for i in plan["indices"]]
        for j, (i, rec) in enumerate(zip(plan["indices"], recs)):
            rng = np.random.default_rng([self.cfg.seed, plan["epoch"], plan["batch"], plan["col0"] + j])
            try:
                if isinstance(rec, Exception):
                    raise rec
                out.append(self.example(rec, size, rng))
            except Exception as e:  # a bad record must not stop training
                self.skips.skip("undecodable", f"record {int(i)} ({type(e).__name__}: {e})")
                out.append(None)
        good = [k for k, o in enumerate(out) if o is not None]
        if not good:
            return None
        indices = np.asarray(plan["indices"], np.int64).copy()
        for n, k in enumerate([k for k, o in enumerate(out) if o is None]):
            src = good[n % len(good)]
            out[k], indices[k] = out[src], indices[src]
        images = np.stack([o["image"] for o in out])
        batch = {
            "image": to_float(images) if self.cfg.image_dtype == "float32" else images,
            "caption": np.array([o["caption"] for o in out], dtype=np.str_),
            "h_div_w_template": np.full(len(out), plan["template"], np.float32),
            "index": indices,
            "spec": np.array([o["spec"] for o in out], dtype=np.str_),
        }
        if self.tokenizer is not None:
            ids, mask = self.tokenizer(list(batch["caption"]))
            batch["tokens"], batch["token_mask"] = np.asarray(ids), np.asarray(mask)
        return batch


# ---------------------------------------------------------------- the dataset


def _shard(shard) -> tuple[int, int]:
    if shard is None:
        import jax

        return jax.process_index(), jax.process_count()
    if hasattr(shard, "shard_index"):  # grain.sharding.ShardOptions
        return int(shard.shard_index), int(shard.shard_count)
    index, count = (int(v) for v in shard)
    if not 0 <= index < count:
        raise ValueError(f"shard={shard}: expected (index, count) with 0 <= index < count")
    return index, count


def make_dataset(
    cfg: DataConfig, tokenizer: Tokenizer | None = None, shard=None, start_batch: int = 0
) -> grain.IterDataset:
    """The training input pipeline as a grain IterDataset (see the module docstring).

    tokenizer: captions -> (ids (B, L), mask (B, L)); must be picklable when worker_count > 0.
    shard: (shard_index, shard_count) or grain ShardOptions; default (jax.process_index(),
    jax.process_count()).
    start_batch: skip the first batches of the plan (counted across epochs). A resume that does
    not need the saved iterator state: start_batch=k gives what the k+1-th batch of a fresh
    iterator would be, under any worker count (unless a batch was dropped for having no
    decodable image). Restoring the saved state (grain.checkpoint) needs the same worker_count.
    """
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size={cfg.batch_size}: expected a positive per-host batch size")
    if cfg.image_dtype not in ("uint8", "float32"):
        raise ValueError(f"image_dtype={cfg.image_dtype!r}: expected 'uint8' or 'float32'")
    if cfg.image_size is None and cfg.pn not in schedules.PIXEL_BUDGETS:
        raise ValueError(
            f"pn={cfg.pn!r}: expected one of {sorted(schedules.PIXEL_BUDGETS)} "
            "(or set image_size for a fixed output size)"
        )
    if not 0.0 <= cfg.short_cap_prob <= 1.0:
        raise ValueError(f"short_cap_prob={cfg.short_cap_prob}: expected a probability in [0, 1]")
    index, count = _shard(shard)
    src, info = sources.open_split(cfg.path, cfg.split)
    if cfg.image_size is not None:
        s = cfg.image_size
        H, W = (s, s) if isinstance(s, int) else tuple(s)
        templates = np.full(len(src), H / W)  # one bucket
    else:
        templates = sources.record_h_div_w(src, info)
    plan = _Plan(templates, cfg.batch_size, index, count, cfg.seed, cfg.shuffle, cfg.num_epochs)
    if plan.per_epoch == 0:
        sizes = {float(t): int(n) for t, n in zip(*np.unique(templates, return_counts=True))}
        raise ValueError(
            f"dataset {cfg.path} split {cfg.split!r}: no template has enough examples for one "
            f"global batch of {cfg.batch_size}x{count}; examples per template: {sizes}"
        )
    if start_batch < 0:
        raise ValueError(f"start_batch={start_batch}: expected >= 0")
    ds = (plan[start_batch:] if start_batch else plan).map(_LoadBatch(src, cfg, tokenizer))
    threads = max(1, cfg.num_threads)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads + 1))
    workers = default_worker_count() if cfg.worker_count is None else cfg.worker_count
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=cfg.worker_buffer_size)
        )
    return ds


def batches_per_epoch(cfg: DataConfig, shard=None) -> int:
    """Steps in one epoch for this config (the same on every host)."""
    _, count = _shard(shard)
    src, info = sources.open_split(cfg.path, cfg.split)
    if cfg.image_size is not None:
        templates = np.zeros(len(src))
    else:
        templates = sources.record_h_div_w(src, info)
    return len(epoch_batches(templates, cfg.batch_size * count, 0, 0, False))


def describe(batch: dict[str, Any]) -> str:
    """One line per field: name, shape, dtype (for logs and the CLI)."""
    return "\n".join(f"  {k:<17} {tuple(v.shape)} {v.dtype}" for k, v in batch.items())
