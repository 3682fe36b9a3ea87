"""Reading and writing official state dicts (.pth/.bin via torch, .safetensors, .npz), and strict key checks.

Shared by every converter. torch is imported lazily, only for .pth/.bin files, with a clear message
when it is missing. Writes are atomic: a temp file in the target folder, then os.replace.
"""

from __future__ import annotations

import os
from typing import Mapping

import ml_dtypes
import numpy as np

from infinity_jax.errors import UsageError
from infinity_jax.fileio import atomic_files

StateDict = dict[str, np.ndarray]
READ_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".npz")
WRITE_EXTENSIONS = (".pth", ".pt", ".safetensors", ".npz")
TORCH_HINT = "pip install torch==2.13.0  (the CPU wheel; a plain `pip install torch` pulls a CUDA build)"


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading/writing .pth files needs torch: {TORCH_HINT}") from e
    return torch


def as_numpy(x) -> np.ndarray:
    """A numpy array from numpy/jax arrays or torch tensors (bf16 kept, as ml_dtypes.bfloat16)."""
    return _to_numpy(x) if hasattr(x, "detach") else np.asarray(x)


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: go through ml_dtypes (what jnp.bfloat16 is)
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _from_numpy(a: np.ndarray):
    torch = _torch()
    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def load_state_dict(path: str, key: str | None = None) -> StateDict:
    """A flat {name: array} from .pth/.pt/.bin (torch), .safetensors or .npz.

    `key` picks a sub-dict of a training checkpoint (e.g. 'trainer' or 'model'); by default a
    checkpoint holding a single dict of tensors under one of the usual keys is unwrapped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state dict {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext not in READ_EXTENSIONS:
        raise ValueError(
            f"state dict {path!r}: unknown extension {ext!r}; expected .pth/.pt/.bin, .safetensors or .npz"
        )
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        torch = _torch()
        obj = _parse(path, "a torch checkpoint", lambda: torch.load(path, map_location="cpu", weights_only=True))
        if not isinstance(obj, Mapping):
            raise ValueError(f"state dict {path!r} holds a {type(obj).__name__}: expected a dict of tensors")
        if key is not None:
            if key not in obj:
                keys = sorted(map(str, obj))
                raise KeyError(f"{path}: no key {key!r}; its {len(keys)} top-level keys start {keys[:5]}")
            obj = obj[key]
        else:
            for k in ("state_dict", "model", "module", "ema"):
                if isinstance(obj, Mapping) and k in obj and isinstance(obj[k], Mapping):
                    obj = obj[k]
                    break
        if not isinstance(obj, Mapping):
            raise ValueError(f"state dict {path!r}: {key!r} holds a {type(obj).__name__}: expected a dict of tensors")
        bad = [k for k, v in obj.items() if not hasattr(v, "detach")]
        if bad:
            raise ValueError(f"{path}: entries {bad[:10]} are not tensors; pass `key=` to pick the state dict")
        return {k: _to_numpy(v) for k, v in obj.items()}
    if ext == ".npz":

        def read_npz():
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}

        return _parse(path, "an .npz archive of arrays", read_npz)
    from safetensors.numpy import load_file

    def read_safetensors():
        try:
            return dict(load_file(path))
        except TypeError:  # bf16 tensors: safetensors' numpy loader cannot make them; go through torch
            from safetensors.torch import load_file as load_torch

            return {k: _to_numpy(v) for k, v in load_torch(path).items()}

    return _parse(path, "a .safetensors file", read_safetensors)


def _parse(path: str, kind: str, read):
    """read(), with any failure to parse the file (its reader raises many kinds: KeyError from a text
    file unpickled, SafetensorError, zipfile errors, np.load on an .npy) as one ValueError naming it."""
    try:
        return read()
    except (MemoryError, ImportError):
        raise
    except Exception as e:
        first = " ".join(str(e).split()).split(". ")[0][:160]  # torch's unpickling errors run to a page
        raise ValueError(f"state dict {path!r} is not {kind} ({type(e).__name__}: {first})") from e


def check_output_path(path: str, what: str = "output") -> str:
    """The extension of a state dict to write (.pth/.pt, .safetensors or .npz); else a UsageError (a ValueError)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in WRITE_EXTENSIONS:
        raise UsageError(f"{what} {path!r}: expected a .pth, .safetensors or .npz file name")
    return ext


def save_state_dict(sd: Mapping[str, np.ndarray], path: str) -> None:
    """Writes {name: array} atomically as .pth (torch), .safetensors or .npz (by extension)."""
    save_state_dicts({path: sd})


def save_state_dicts(files: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Writes {path: state dict} all or none: every file to a temp file beside it, then all renamed at
    the end (fileio.atomic_files); on any failure nothing is left behind."""
    for path in files:
        check_output_path(path)
    with atomic_files(list(files)) as tmps:
        for tmp, sd in zip(tmps, files.values()):
            _write_state_dict(sd, tmp)


def _write_state_dict(sd: Mapping[str, np.ndarray], path: str) -> None:
    ext = check_output_path(path)
    if ext == ".npz":
        with open(path, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in sd.items()})
    elif ext == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: _from_numpy(np.asarray(v)).contiguous() for k, v in sd.items()}, path)
    else:
        torch = _torch()
        torch.save({k: _from_numpy(np.asarray(v)) for k, v in sd.items()}, path)


class StateDictMismatch(ValueError):
    """Strict loading failed: str() lists every missing, unexpected and mis-shaped key, one a line;
    brief() says the same in one line (the first few of each kind), for the command line."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str], shapes: list[str]):
        self.what, self.missing, self.unexpected, self.shapes = what, missing, unexpected, shapes
        parts = [f"{what}: the state dict does not match the model"]
        for title, items in self._kinds():
            if items:
                parts.append(f"  {title} ({len(items)}):\n" + "\n".join(f"    {x}" for x in items))
        super().__init__("\n".join(parts))

    def _kinds(self):
        return (("missing keys", self.missing), ("unexpected keys", self.unexpected), ("shape mismatches", self.shapes))

    def brief(self, limit: int = 5) -> str:
        def some(items):
            more = len(items) - limit
            return "; ".join(items[:limit]) + (f"; ... {more:,} more" if more > 0 else "")

        kinds = [f"{title} ({len(items):,}): {some(items)}" for title, items in self._kinds() if items]
        return f"{self.what}: the state dict does not match the model: " + " | ".join(kinds)


def check_state_dict(given: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raises one StateDictMismatch (a ValueError) listing every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: got {tuple(np.shape(given[k]))}, expected {tuple(expected[k])}"
        for k in set(given) & set(expected)
        if tuple(np.shape(given[k])) != tuple(expected[k])
    )
    if missing or unexpected or shapes:
        raise StateDictMismatch(what, missing, unexpected, shapes)
