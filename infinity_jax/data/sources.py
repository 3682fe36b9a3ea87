"""tfds dataset builders (array_record files, no TensorFlow) and readers of built datasets.

Three builders write the same features, so one pipeline reads them all:

    image              encoded bytes exactly as read (JPEG/PNG/...; shapes: PNG), decoded by the pipeline
    h_div_w            float32, the image's height / width (from the jsonl, else from the image header)
    long_caption       str, the caption
    text               str, the short caption ('' when there is none)
    long_caption_type  str ('' when absent; the official 'user_prompt' disables dynamic-length captions)
    spec               str, JSON description of the image (shapes only; '' otherwise)
    source             str, where the example came from (image path, or 'shapes:<index>')

* `infinity_jsonl`: the official Infinity training format, unchanged: a folder of
  `<h_div_w_template>_<count>.jsonl` files (the folder itself or its `splits/` subfolder), one JSON
  object per line with `image_path`, `h_div_w`, `long_caption`, optional `text` and
  `long_caption_type`. Relative image paths are tried against `image_root`, the working
  directory, and the dataset folder and its parents, also with leading components stripped
  (the official example writes `data/<name>/images/x.jpg`).
* `image_folder`: images (any depth) with captions in a sidecar: `metadata.jsonl` /
  `captions.jsonl` or `metadata.csv` / `captions.csv` (image key `file_name`, `image`,
  `image_path` or `path`; caption key `caption` or `long_caption`; optional `text`), or a
  `<stem>.txt` beside each image.
* `shapes`: `shapes.render(i, seed, size)` for i < num_examples (see shapes.py).

Examples are written sorted by their nearest official h/w template (`schedules.nearest_h_div_w`)
and the builder stores the runs in `metadata.json` ("templates": [[template, start, count], ...]),
so the pipeline buckets by aspect ratio without reading the records. Unreadable, missing or
undecodable images and bad caption records are counted, logged once per `log_every`, and left out;
metadata.json keeps the counts ("skipped") and the first SkipCounter.KEEP of them, each naming its
file (and line) and what was wrong ("skipped_examples"). A source with no usable example is an error.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import glob
import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from infinity_jax import schedules
from infinity_jax.data import shapes
from infinity_jax.errors import UsageError

log = logging.getLogger(__name__)

KINDS = ("infinity_jsonl", "image_folder", "shapes")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLIT = "train"
VERSION = "1.0.0"


class SkipCounter:
    """Counts skipped items by reason and keeps the first KEEP ("reason: detail"); logs the first and then
    every `log_every`-th skip."""

    KEEP = 50  # enough to see the pattern; the counts cover the rest (metadata.json stays small)

    def __init__(self, what: str, log_every: int = 100):
        self.what, self.log_every, self.counts = what, max(1, int(log_every)), {}
        self.examples: list[str] = []

    def skip(self, reason: str, detail: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < self.KEEP:
            self.examples.append(f"{reason}: {detail}")
        total = self.total
        if total == 1 or total % self.log_every == 0:
            log.warning("%s: skipped (%s) %s; skipped so far: %s", self.what, reason, detail, self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """'3 {counts}: first; second; ...' for one-line errors."""
        more = f"; ... {self.total - len(self.examples)} more" if self.total > len(self.examples) else ""
        return f"{self.total} {self.counts}: {'; '.join(self.examples)}{more}" if self.total else "none"


def check_image(data: bytes, verify: str = "decode") -> tuple[int, int]:
    """(height, width) of encoded image bytes; raises if they are not a readable image.

    verify: 'header' reads the header only; 'decode' also decodes the pixels (JPEGs at reduced
    DCT scale, which is fast but still reads every byte, so truncated files are caught).
    """
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if verify == "decode":
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    if w < 1 or h < 1:
        raise ValueError(f"image has size {w}x{h}")
    return h, w


@dataclass
class _Item:
    """One candidate example: its aspect ratio (for sorting) and how to get its bytes and fields."""

    h_div_w: float
    load: Callable[[], bytes]
    fields: dict
    source: str
    verify: bool = True


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "h_div_w": tfds.features.Scalar(np.float32),
            "long_caption": tfds.features.Text(),
            "text": tfds.features.Text(),
            "long_caption_type": tfds.features.Text(),
            "spec": tfds.features.Text(),
            "source": tfds.features.Text(),
        }
    )


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: template-sorted generation, skip counting, run metadata."""

    VERSION = tfds.core.Version(VERSION)
    DESCRIPTION = ""
    # No checksums or package resources: tfds would otherwise look them up beside this module
    # (and need the importlib_resources package to do it).
    code_path = None

    def __init__(
        self,
        *,
        data_dir: str,
        options: dict,
        verify: str = "decode",
        log_every: int = 100,
        progress: bool = True,
        threads: int | None = None,
        **kwargs,
    ):
        self._options, self._verify, self._progress = dict(options), verify, progress
        self._threads = threads or os.cpu_count() or 1
        self._skips = SkipCounter(f"prepare {self.name}", log_every)
        super().__init__(data_dir=data_dir, file_format="array_record", **kwargs)

    # tfds prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and prepared"
    # for every build; nothing is downloaded here, and `data prepare` reports what it wrote itself
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        # disable_shuffling: records stay in key order, i.e. sorted by template (see module doc).
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=_features(),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        return {SPLIT: self._generate_examples()}

    def _items(self) -> list[_Item]:
        raise NotImplementedError

    def _load_checked(self, it: _Item) -> tuple[bytes | None, tuple[str, str] | None]:
        """(bytes, None), or (None, (reason, detail)) for an unreadable or undecodable image."""
        try:
            data = it.load()
        except OSError as e:
            return None, ("unreadable", str(e))
        if it.verify and self._verify != "none":
            try:
                check_image(data, self._verify)
            except Exception as e:  # PIL raises many types for bad data
                return None, ("corrupt", f"{type(e).__name__}: {e}")
        return data, None

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        items = self._items()
        if not items:
            raise UsageError(
                f"{self.name}: the source {self._options.get('source')!r} lists no examples; skipped "
                f"{self._skips.summary()}"
            )
        templates = [schedules.nearest_h_div_w(it.h_div_w) for it in items]
        order = sorted(range(len(items)), key=lambda i: templates[i])  # stable: source order within a template
        runs: list[list] = []
        kept = 0
        loaded = _ordered_map(self._load_checked, (items[i] for i in order), self._threads)
        for i, (data, err) in zip(_progress(order, self._progress, f"{self.name}: reading"), loaded):
            it = items[i]
            if err is not None:
                self._skips.skip(err[0], f"{it.source} ({err[1]})")
                continue
            if runs and runs[-1][0] == templates[i]:
                runs[-1][2] += 1
            else:
                runs.append([templates[i], kept, 1])
            yield (
                kept,
                {
                    "image": data,
                    "h_div_w": np.float32(it.h_div_w),
                    "source": it.source,
                    **{k: it.fields.get(k, "") for k in ("long_caption", "text", "long_caption_type", "spec")},
                },
            )
            kept += 1
        if kept == 0:
            raise UsageError(
                f"{self.name}: no usable example in {self._options.get('source')!r}; skipped {self._skips.summary()}"
            )
        # Runs into metadata.json (written by tfds after generation finishes).
        self.info.metadata.update(
            templates=runs,
            num_examples=kept,
            skipped=dict(self._skips.counts),
            skipped_examples=list(self._skips.examples),
            prepare={"kind": self.name, **self._options},
        )
        log.info(
            "%s: wrote %d examples in %d aspect-ratio runs; skipped %s", self.name, kept, len(runs), self._skips.counts
        )


def _ordered_map(fn, items, threads: int, window: int = 256):
    """fn over items in threads (PIL and file reads release the GIL), results in input order,
    at most `window` in flight so memory stays bounded on big sources."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        pending: collections.deque = collections.deque()
        for x in items:
            pending.append(ex.submit(fn, x))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _progress(seq, enabled: bool, desc: str):
    if not enabled:
        return seq
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit="img", smoothing=0.1)


def _read_bytes(path: str) -> Callable[[], bytes]:
    def load() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return load


# ---------------------------------------------------------------- the official jsonl format

_SIDECARS = ("metadata.jsonl", "captions.jsonl")  # image_folder caption files, not official splits


def jsonl_split_files(folder: str) -> list[str]:
    """The official split files of a dataset folder (the folder or its splits/ subfolder)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"dataset path {folder!r} does not exist or is not a folder")
    for d in (folder, os.path.join(folder, "splits")):
        files = sorted(f for f in glob.glob(os.path.join(d, "*.jsonl")) if os.path.basename(f) not in _SIDECARS)
        if files:
            return files
    raise FileNotFoundError(
        f"no *.jsonl split files in {folder!r} or {os.path.join(folder, 'splits')!r}; "
        "expected the official <h_div_w_template>_<count>.jsonl files"
    )


class _PathResolver:
    """Finds the file an official `image_path` names, trying roots and stripped prefixes; remembers
    the (strip, root) rule that worked last, since a dataset uses one layout throughout."""

    def __init__(self, roots: list[str]):
        self.roots = [r for i, r in enumerate(roots) if r and r not in roots[:i]]
        self.rule: tuple[int, str] | None = None

    def __call__(self, path: str) -> str | None:
        if os.path.isabs(path):
            return path if os.path.isfile(path) else None
        parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
        rules = ([self.rule] if self.rule else []) + [(k, r) for k in range(len(parts)) for r in self.roots]
        for k, root in rules:
            cand = os.path.join(root, *parts[k:])
            if os.path.isfile(cand):
                self.rule = (k, root)
                return cand
        return None


class InfinityJsonl(_Builder, skip_registration=True):
    """The official Infinity jsonl splits (see module docstring). options: source, image_root, limit."""

    name = "infinity_jsonl"
    DESCRIPTION = "Infinity training data in the official jsonl split format."

    def _items(self) -> list[_Item]:
        src = os.path.abspath(self._options["source"])
        files = jsonl_split_files(src)
        roots = [self._options.get("image_root") or "", os.getcwd(), src]
        parent = src
        for _ in range(3):
            parent = os.path.dirname(parent)
            roots.append(parent)
        resolve = _PathResolver(roots)
        limit = self._options.get("limit")
        items: list[_Item] = []
        for f in files:
            n_before = len(items)
            with open(f, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if limit and len(items) >= limit:
                        break
                    if not line.strip():
                        continue
                    where = f"{os.path.basename(f)}:{lineno}"
                    try:
                        rec = json.loads(line)
                        path, h_div_w, cap = rec["image_path"], float(rec["h_div_w"]), rec["long_caption"]
                        schedules.nearest_h_div_w(h_div_w)
                    except (ValueError, KeyError, TypeError) as e:
                        self._skips.skip("bad record", f"{where} ({type(e).__name__}: {e})")
                        continue
                    full = resolve(path)
                    if full is None:
                        self._skips.skip("missing image", f"{where} ({path})")
                        continue
                    fields = {
                        "long_caption": cap,
                        "text": rec.get("text") or "",
                        "long_caption_type": rec.get("long_caption_type") or "",
                    }
                    items.append(_Item(h_div_w, _read_bytes(full), fields, full))
            if len(items) == n_before:
                log.warning("infinity_jsonl: split file %s gave no examples", f)
        return items


# ---------------------------------------------------------------- image folder + captions

_PATH_KEYS = ("file_name", "image", "image_path", "path", "file")
_CAPTION_KEYS = ("caption", "long_caption")


def _sidecar_rows(folder: str) -> tuple[str, list[tuple[int, dict | str]]] | None:
    """The caption sidecar's path and its rows as (line number, row), a row that does not parse being the
    reason (a string) instead; None without a sidecar."""
    for name in _SIDECARS:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            rows: list[tuple[int, dict | str]] = []
            with open(p, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        rows.append((lineno, f"not JSON: {e.msg} at column {e.colno}"))
                        continue
                    rows.append((lineno, row if isinstance(row, dict) else f"expected a JSON object, got {row!r}"))
            return p, rows
    for name in ("metadata.csv", "captions.csv"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            with open(p, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                return p, [(reader.line_num, row) for row in reader]
    return None


def _first(row: dict, keys) -> str | None:
    for k in keys:
        if row.get(k):
            return str(row[k])
    return None


class ImageFolder(_Builder, skip_registration=True):
    """Images plus captions (see module docstring). options: source, limit."""

    name = "image_folder"
    DESCRIPTION = "Images with captions from a sidecar file or per-image .txt files."

    def _items(self) -> list[_Item]:
        src = os.path.abspath(self._options["source"])
        if not os.path.isdir(src):
            raise FileNotFoundError(f"image folder {src!r} does not exist or is not a folder")
        sidecar = _sidecar_rows(src)
        pairs: list[tuple[str, dict, str]] = []  # (image path, fields, where it was listed)
        if sidecar is not None:
            sidecar_path, rows = sidecar
            for lineno, row in rows:
                where = f"{sidecar_path}:{lineno}"
                if isinstance(row, str):  # a line that is not a JSON object: its file, line and why
                    self._skips.skip("bad record", f"{where} ({row})")
                    continue
                rel, cap = _first(row, _PATH_KEYS), _first(row, _CAPTION_KEYS)
                if not rel or cap is None:
                    self._skips.skip("bad record", f"{where} ({row}); expected keys {_PATH_KEYS} and {_CAPTION_KEYS}")
                    continue
                pairs.append((os.path.join(src, rel), {"long_caption": cap, "text": row.get("text") or ""}, where))
        else:
            for dirpath, _, names in sorted(os.walk(src)):
                for n in sorted(names):
                    if not n.lower().endswith(IMAGE_EXTENSIONS):
                        continue
                    txt = os.path.join(dirpath, os.path.splitext(n)[0] + ".txt")
                    if not os.path.isfile(txt):
                        self._skips.skip("no caption", os.path.join(dirpath, n))
                        continue
                    with open(txt, encoding="utf-8") as f:
                        pairs.append((os.path.join(dirpath, n), {"long_caption": f.read().strip()}, txt))
        limit = self._options.get("limit")
        items: list[_Item] = []
        for path, fields, where in pairs[:limit] if limit else pairs:
            try:  # the header gives the aspect ratio for sorting; pixels are checked while writing
                with Image.open(path) as im:
                    w, h = im.size
            except FileNotFoundError:
                self._skips.skip("missing image", f"{path} (from {where})")
                continue
            except Exception as e:
                self._skips.skip("corrupt", f"{path} ({type(e).__name__}: {e}; from {where})")
                continue
            items.append(_Item(h / w, _read_bytes(path), fields, path))
        return items


# ---------------------------------------------------------------- procedural shapes


class Shapes(_Builder, skip_registration=True):
    """shapes.render(i, seed, size, categories, layout) for i < num_examples. options: num_examples,
    image_size, seed, layout (absent = 'random'), categories (absent = all of shapes.CATEGORIES)."""

    name = "shapes"
    DESCRIPTION = "Procedural coloured shapes with GenEval-style captions and a JSON spec per image."

    def _items(self) -> list[_Item]:
        n, size, seed = int(self._options["num_examples"]), self._options["image_size"], int(self._options["seed"])
        layout = self._options.get("layout", "random")
        categories = tuple(self._options.get("categories", shapes.CATEGORIES))
        H, W = (size, size) if isinstance(size, int) else size

        def loader(i: int) -> Callable[[], bytes]:
            def load() -> bytes:
                img, _, _ = shapes.render(i, seed, (H, W), categories, layout)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                return buf.getvalue()

            return load

        items = []
        for i in range(n):
            spec = shapes.make_spec(i, seed, (H, W), categories, layout)
            items.append(
                _Item(
                    H / W,
                    loader(i),
                    {"long_caption": spec["caption"], "spec": shapes.dumps(spec)},
                    f"shapes:{i}",
                    verify=False,
                )
            )
        return items


BUILDERS = {"infinity_jsonl": InfinityJsonl, "image_folder": ImageFolder, "shapes": Shapes}


def detect_kind(source: str) -> str:
    """'shapes' for the word shapes; infinity_jsonl for a folder of .jsonl splits; else image_folder."""
    if source == "shapes":
        return "shapes"
    if not os.path.isdir(source):
        raise FileNotFoundError(
            f"source {source!r} does not exist; expected 'shapes', a folder of official "
            "jsonl splits, or an image folder"
        )
    try:
        jsonl_split_files(source)
        return "infinity_jsonl"
    except FileNotFoundError:
        return "image_folder"


def prepare(
    kind: str,
    out: str,
    *,
    source: str | None = None,
    image_root: str | None = None,
    limit: int | None = None,
    num_examples: int = 1000,
    image_size: int | tuple[int, int] = 64,
    seed: int = 0,
    layout: str = "random",
    categories: tuple[str, ...] | None = None,
    verify: str = "decode",
    overwrite: bool = False,
    progress: bool = True,
    log_every: int = 100,
    threads: int | None = None,
) -> str:
    """Builds dataset `kind` under `out` (tfds data_dir) and returns the dataset directory
    (`out/<kind>/1.0.0`), which `open_split` and the pipeline take.

    source: the folder to read (infinity_jsonl, image_folder); shapes takes num_examples,
    image_size (int or (H, W)), seed, layout (shapes.LAYOUTS) and categories (a subset of
    shapes.CATEGORIES; None: all). verify: 'decode' | 'header' | 'none'
    (see check_image).
    threads: images read and checked in parallel (default: one per core).
    """
    if kind not in BUILDERS:
        raise UsageError(f"kind={kind!r}: expected one of {KINDS}")
    if verify not in ("decode", "header", "none"):
        raise UsageError(f"verify={verify!r}: expected 'decode', 'header' or 'none'")
    if kind == "shapes":
        options = {"num_examples": int(num_examples), "image_size": image_size, "seed": int(seed)}
        if options["num_examples"] < 1:
            raise UsageError(f"num_examples={num_examples}: expected at least 1")
        if layout not in shapes.LAYOUTS:
            raise UsageError(f"layout={layout!r}: expected one of {shapes.LAYOUTS}")
        if layout != "random":  # datasets built before layouts existed stay reusable
            options["layout"] = layout
        if categories is not None and tuple(categories) != shapes.CATEGORIES:  # likewise
            options["categories"] = list(shapes.check_categories(categories))
    else:
        if not source:
            raise UsageError(f"kind {kind!r} needs a source folder")
        if not os.path.exists(source):
            raise FileNotFoundError(f"source {source!r} does not exist")
        options = {"source": os.path.abspath(source), "limit": limit}
        if kind == "infinity_jsonl":
            options["image_root"] = image_root
    builder = BUILDERS[kind](
        data_dir=out, options=options, verify=verify, progress=progress, log_every=log_every, threads=threads
    )
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    elif os.path.isfile(os.path.join(str(builder.data_dir), "dataset_info.json")):
        had = dict((tfds.builder_from_directory(str(builder.data_dir)).info.metadata or {}).get("prepare", {}))
        want = json.loads(json.dumps({"kind": kind, **options}))  # as stored (tuples become lists)
        if had != want:
            raise UsageError(
                f"{builder.data_dir} already holds a {kind} dataset built with {had}; asked for "
                f"{want}: expected another --out, or overwrite=True (--overwrite)"
            )
        log.info("%s: reusing the dataset already built in %s", kind, builder.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return str(builder.data_dir)


# ---------------------------------------------------------------- reading a built dataset


def find_dataset_dir(path: str) -> str:
    """The built dataset directory (holding dataset_info.json) at or below `path` (3 levels)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"dataset path {path!r} does not exist; build one with `infinity-jax data prepare --source ... --out ...`"
        )
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    found = sorted(
        {
            os.path.dirname(p)
            for depth in ("*", "*/*", "*/*/*")
            for p in glob.glob(os.path.join(path, depth, "dataset_info.json"))
        }
    )
    found = [d for d in found if "incomplete" not in os.path.basename(d)]
    if not found:
        raise FileNotFoundError(
            f"no built dataset (dataset_info.json) at or below {path!r}; build one with "
            "`infinity-jax data prepare --source ... --out ...`"
        )
    if len(found) > 1:
        raise UsageError(f"{path!r} holds several built datasets {found}; expected a path to one of them")
    return found[0]


def open_split(path: str, split: str = SPLIT):
    """(data source, DatasetInfo) of a built split; image bytes stay encoded (the pipeline decodes).

    The source is random-access: `len(src)`, `src[i]` -> dict of the features above (text as bytes).
    """
    builder = tfds.builder_from_directory(find_dataset_dir(path))
    splits = builder.info.splits
    if split not in splits:
        raise KeyError(f"split {split!r} not in dataset {builder.data_dir}; expected one of {sorted(splits)}")
    if splits[split].num_examples == 0:
        raise ValueError(f"split {split!r} of {builder.data_dir} is empty; expected at least one example")
    src = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    return src, builder.info


def record_h_div_w(src, info) -> np.ndarray:
    """Aspect ratio template per record, (N,) float: from the builder's run metadata when present,
    otherwise by reading every record's h_div_w (slow for big datasets, fine for foreign small ones)."""
    runs = (info.metadata or {}).get("templates")
    n = len(src)
    if runs and sum(r[2] for r in runs) == n:
        out = np.empty(n, np.float64)
        for tmpl, start, count in runs:
            out[start : start + count] = tmpl
        return out
    log.warning("dataset has no template runs in metadata.json; reading h_div_w of all %d records", n)
    return np.array([schedules.nearest_h_div_w(float(src[i]["h_div_w"])) for i in range(n)])
