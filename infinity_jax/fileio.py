"""Files that appear whole: atomic writes of files, folders and groups of files, and params files.

Every output of the project (params, checkpoints' side files, images, metrics, JSON summaries) is written
to a temporary sibling and renamed into place, so a reader never sees half a file and a crash leaves the
old one. Params files are our param trees as .npz ('/'-joined keys) or .msgpack (flax serialization).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import linen as nn
from flax import serialization, traverse_util

from infinity_jax.errors import UsageError

PARAMS_EXTENSIONS = (".npz", ".msgpack")


# ---------------------------------------------------------------- param trees
def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}; boxed (logically partitioned) leaves are unboxed."""
    return {sep.join(k): v for k, v in traverse_util.flatten_dict(nn.unbox(dict(tree))).items()}


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}}."""
    return traverse_util.unflatten_dict({tuple(k.split(sep)): v for k, v in flat.items()})


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
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder: expected a file name")
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{flag} {path!r} exists: pass --overwrite to replace it")


def params_file(path: str, flag: str = "--out") -> str:
    """Checks that `path` names a params file save_params can write (.npz / .msgpack)."""
    if os.path.splitext(path)[1].lower() not in PARAMS_EXTENSIONS:
        raise UsageError(f"{flag} {path!r}: expected a .npz or .msgpack file name")
    return path


def save_params(params: Mapping[str, Any], path: str) -> None:
    """Our param tree -> .npz ('/'-joined keys) or .msgpack (flax serialization), atomically."""
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        atomic_write(path, lambda f: np.savez(f, **flat))
    elif ext == ".msgpack":
        atomic_write(path, lambda f: f.write(serialization.msgpack_serialize(unflatten(flat))))
    else:
        raise ValueError(f"params file {path!r}: expected a .npz or .msgpack file name")


def load_params(path: str) -> dict[str, Any]:
    """The param tree written by save_params (numpy leaves)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"params file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext not in PARAMS_EXTENSIONS:
        raise ValueError(f"params file {path!r}: expected a .npz or .msgpack file name")
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return unflatten({k: f[k] for k in f.files})
        with open(path, "rb") as f:
            return serialization.msgpack_restore(f.read())
    except (MemoryError, ImportError, OSError):
        raise
    except Exception as e:  # the readers raise many kinds for a file that is not what its name says
        raise ValueError(
            f"params file {path!r} is not a {ext} params file ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from e


def write_json(path: str, obj: Any, indent: int | None = 1) -> None:
    """`obj` as a JSON file, written atomically (summaries, benchmark rows)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode()))
