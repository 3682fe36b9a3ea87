"""Helpers shared by the torch <-> JAX converters: param-tree flattening, path renames, layouts.

A converter is a table: for every official key, the path of our param (a '/'-joined string,
e.g. 'encoder/down_1/block_0/conv1/conv/kernel') and how the array is laid out. The helpers here
build such tables from an abstract param tree and move arrays between layouts exactly (pure
transposes and exact casts: a round trip is bit-identical).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import linen as nn
from flax import traverse_util

# our leaf name -> the official one
TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


# ---------------------------------------------------------------- param trees
def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}; boxed (logically partitioned) leaves are unboxed."""
    return {sep.join(k): v for k, v in traverse_util.flatten_dict(nn.unbox(dict(tree))).items()}


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}}."""
    return traverse_util.unflatten_dict({tuple(k.split(sep)): v for k, v in flat.items()})


def rename(path: str, rules: Iterable[tuple[str, str]]) -> str:
    """Applies regex substitutions in order (e.g. [(r'blocks_(\\d+)', r'blocks.\\1'), ('/', '.')])."""
    for pattern, repl in rules:
        path = re.sub(pattern, repl, path)
    return path


def torch_key(path: str, rules: Iterable[tuple[str, str]] = ()) -> str:
    """Our '/'-path -> the official dotted key: the rules first, then '/' -> '.', leaf names mapped."""
    *parents, leaf = rename(path, rules).split("/")
    return ".".join(parents + [TORCH_LEAF.get(leaf, leaf)])


# ---------------------------------------------------------------- layouts
def conv_to_flax(w: np.ndarray) -> np.ndarray:
    """torch conv weight (O, I, kh, kw) -> flax kernel (kh, kw, I, O)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def conv_to_torch(k: np.ndarray) -> np.ndarray:
    """flax kernel (kh, kw, I, O) -> torch conv weight (O, I, kh, kw)."""
    return np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1)))


def dense_to_flax(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> flax kernel (in, out)."""
    return np.ascontiguousarray(np.asarray(w).T)


def dense_to_torch(k: np.ndarray) -> np.ndarray:
    """flax kernel (in, out) -> torch Linear weight (out, in)."""
    return np.ascontiguousarray(np.asarray(k).T)


def identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)


# name -> (to flax, to torch, torch shape from our shape)
LAYOUTS: dict[str, tuple[Callable, Callable, Callable]] = {
    "conv": (conv_to_flax, conv_to_torch, lambda s: (s[3], s[2], s[0], s[1])),
    "dense": (dense_to_flax, dense_to_torch, lambda s: tuple(reversed(s))),
    "same": (identity, identity, tuple),
}


def as_numpy(x: Any) -> np.ndarray:
    """A numpy array from numpy/jax arrays or torch tensors (bf16 kept, as ml_dtypes.bfloat16)."""
    if hasattr(x, "detach"):
        from infinity_jax.convert.torch_io import _to_numpy
        return _to_numpy(x)
    return np.asarray(x)


def cast_exact(x: np.ndarray, dtype: Any, what: str) -> np.ndarray:
    """Casts float arrays to `dtype`; refuses a narrowing cast that would change values."""
    x = np.asarray(x)
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"):
        raise TypeError(f"{what}: dtype {x.dtype}; expected a floating-point array")
    y = x.astype(dtype)
    if x.dtype.itemsize > dtype.itemsize:
        back = y.astype(x.dtype)
        if not np.array_equal(back, x, equal_nan=True):
            bad = int(np.sum(back != x))
            raise ValueError(f"{what}: casting {x.dtype} -> {dtype} would change {bad} values; "
                             f"pass a wider dtype")
    return y


# ---------------------------------------------------------------- files
def default_mode(folder: bool = False) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask (mkstemp and
    mkdtemp create 0600 / 0700, which other users of a shared file system cannot read)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Calls write(binary file) on a temp file beside `path`, then renames it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str):
    """Yields a new temp folder beside `path` to fill; when the block ends without error it is renamed
    to `path` (an existing folder there is replaced only then), otherwise it is removed."""
    path = os.path.abspath(path)
    parent, base = os.path.dirname(path), os.path.basename(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
    try:
        os.chmod(tmp, default_mode(folder=True))
        yield tmp
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: str, out: str) -> None:
    """Renames the finished temporary folder to `out`, replacing an old one (kept aside until then)."""
    if not os.path.isdir(out):
        os.rename(tmp, out)
        return
    trash = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".{os.path.basename(out)}.old-")
    os.rename(out, os.path.join(trash, "old"))
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(paths: Iterable[str]):
    """Yields one temp file path beside each of `paths` to write; when the block ends without error they
    are renamed into place together, otherwise removed. All or none: if one rename fails, the files
    already renamed are taken back (what was there before is restored from a hard link where it can be)."""
    paths = [os.path.abspath(p) for p in paths]
    tmps, backups, placed = [], {}, []
    was_there = {p for p in paths if os.path.exists(p)}
    try:
        for p in paths:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(p), prefix=".tmp-", suffix=os.path.splitext(p)[1])
            os.close(fd)
            tmps.append(tmp)
        yield list(tmps)
        for tmp, p in zip(tmps, paths):
            os.chmod(tmp, default_mode())
            if os.path.isfile(p):
                with contextlib.suppress(OSError):  # no hard links here (some mounts): no way back for p
                    os.link(p, tmp + ".old")
                    backups[p] = tmp + ".old"
        for tmp, p in zip(tmps, paths):
            os.replace(tmp, p)
            placed.append(p)
    except BaseException:
        for p in placed:  # a later rename failed: take back the earlier ones
            with contextlib.suppress(OSError):
                if p in backups:
                    os.replace(backups[p], p)
                elif p not in was_there:  # new: remove it; an old file without a backup stays replaced
                    os.remove(p)
        raise
    finally:
        for f in tmps + list(backups.values()):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f)


def refuse_existing(path: str, flag: str = "--out", overwrite: bool = False) -> None:
    """Bad input: an output file that exists (unless overwrite) or is a folder; checked before any work."""
    from infinity_jax.errors import UsageError
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder: expected a file name")
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{flag} {path!r} exists: pass --overwrite to replace it")


def params_file(path: str, flag: str = "--out") -> str:
    """Checks that `path` names a params file save_params can write (.npz / .msgpack)."""
    from infinity_jax.errors import UsageError
    if os.path.splitext(path)[1].lower() not in (".npz", ".msgpack"):
        raise UsageError(f"{flag} {path!r}: expected a .npz or .msgpack file name")
    return path


def float_dtype(name: str | None, flag: str = "--dtype") -> np.dtype | None:
    """A dtype name (float32, fp32, bfloat16, bf16, float16, fp16) -> np.dtype; None stays None."""
    if name is None:
        return None
    if str(name) in ("bfloat16", "bf16"):
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dtype = np.dtype({"fp32": "float32", "fp16": "float16"}.get(str(name), str(name)))
    except TypeError:
        dtype = None
    if dtype is None or not np.issubdtype(dtype, np.floating):
        from infinity_jax.errors import UsageError
        raise UsageError(f"{flag} {name!r}: expected a floating-point dtype (float32, bfloat16, float16)")
    return dtype


def check_conversion_args(args, official_out: bool) -> None:
    """The files of a convert-* command (args.inp, args.out, args.dtype, args.overwrite), checked before any
    work: --in exists with a known extension, --out has one and does not exist (unless --overwrite).
    official_out: --to-torch (our params in, an official state dict out) rather than the other way."""
    from infinity_jax.convert import torch_io
    from infinity_jax.errors import UsageError
    if os.path.isdir(args.inp):
        raise UsageError(f"--in {args.inp!r} is a folder: expected a file")
    if not os.path.isfile(args.inp):
        raise FileNotFoundError(f"--in {args.inp!r} does not exist: expected "
                                + ("our params (.npz / .msgpack)" if official_out else "an official state dict "
                                   "(.pth / .safetensors / .npz)"))
    ext = os.path.splitext(args.inp)[1].lower()
    if official_out and ext not in (".npz", ".msgpack"):
        raise UsageError(f"--in {args.inp!r}: expected our params (.npz / .msgpack) with --to-torch")
    if not official_out and ext not in torch_io.READ_EXTENSIONS:
        raise UsageError(f"--in {args.inp!r}: unknown extension {ext!r}; expected an official state dict "
                         f"(.pth / .pt / .bin / .safetensors / .npz), or pass --to-torch for our params")
    if official_out:
        torch_io.check_output_path(args.out, "--out")
    else:
        params_file(args.out)
    refuse_existing(args.out, "--out", args.overwrite)
    if args.dtype is not None and not official_out:
        raise UsageError(f"--dtype {args.dtype!r} applies to --to-torch only (imported params are float32)")
    float_dtype(args.dtype)


def one_line(e: BaseException) -> str:
    """An exception's message as one line, for the command line: a state-dict mismatch as its summary
    (torch_io.StateDictMismatch.brief), any other message with its line breaks folded."""
    if callable(getattr(e, "brief", None)):
        return e.brief()
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() quotes
    return "; ".join(line.strip() for line in msg.splitlines() if line.strip()) or type(e).__name__


def save_params(params: Mapping[str, Any], path: str) -> None:
    """Our param tree -> .npz ('/'-joined keys) or .msgpack (flax serialization), atomically."""
    flat = {k: as_numpy(v) for k, v in flatten(params).items()}
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        atomic_write(path, lambda f: np.savez(f, **flat))
    elif ext == ".msgpack":
        from flax import serialization
        atomic_write(path, lambda f: f.write(serialization.msgpack_serialize(unflatten(flat))))
    else:
        raise ValueError(f"params file {path!r}: expected a .npz or .msgpack file name")


def load_params(path: str) -> dict[str, Any]:
    """The param tree written by save_params (numpy leaves)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"params file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".msgpack"):
        raise ValueError(f"params file {path!r}: expected a .npz or .msgpack file name")
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return unflatten({k: f[k] for k in f.files})
        from flax import serialization
        with open(path, "rb") as f:
            return serialization.msgpack_restore(f.read())
    except (MemoryError, ImportError, OSError):
        raise
    except Exception as e:  # the readers raise many kinds for a file that is not what its name says
        raise ValueError(f"params file {path!r} is not a {ext} params file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from e
