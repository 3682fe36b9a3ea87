"""Reading and writing official state dicts (.pth/.bin via torch, .safetensors, .npz), and strict key checks.

Shared by every converter. torch is imported lazily, only for .pth/.bin files, with a clear message
when it is missing. Writes are atomic: a temp file in the target folder, then os.replace.
"""
from __future__ import annotations

import os
import tempfile
from typing import Mapping

import numpy as np

StateDict = dict[str, np.ndarray]
TORCH_HINT = "pip install torch==2.13.0  (the CPU wheel; a plain `pip install torch` pulls a CUDA build)"


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading/writing .pth files needs torch: {TORCH_HINT}") from e
    return torch


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: go through ml_dtypes (what jnp.bfloat16 is)
        import ml_dtypes
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
    if ext == ".safetensors":
        from safetensors.numpy import load_file
        try:
            return dict(load_file(path))
        except TypeError:  # bf16 tensors: safetensors' numpy loader cannot make them; go through torch
            from safetensors.torch import load_file as load_torch
            return {k: _to_numpy(v) for k, v in load_torch(path).items()}
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        torch = _torch()
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if key is not None:
            if key not in obj:
                raise KeyError(f"{path}: no key {key!r}; top-level keys are {sorted(obj)[:20]}")
            obj = obj[key]
        else:
            for k in ("state_dict", "model", "module", "ema"):
                if isinstance(obj, Mapping) and k in obj and isinstance(obj[k], Mapping):
                    obj = obj[k]
                    break
        bad = [k for k, v in obj.items() if not hasattr(v, "detach")]
        if bad:
            raise ValueError(f"{path}: entries {bad[:10]} are not tensors; pass `key=` to pick the state dict")
        return {k: _to_numpy(v) for k, v in obj.items()}
    raise ValueError(f"state dict {path!r}: unknown extension {ext!r}; expected .pth/.pt/.bin, .safetensors or .npz")


def save_state_dict(sd: Mapping[str, np.ndarray], path: str) -> None:
    """Writes {name: array} atomically as .pth (torch), .safetensors or .npz (by extension)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".pth", ".pt", ".safetensors", ".npz"):
        raise ValueError(f"output {path!r}: expected a .pth, .safetensors or .npz file name")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=ext)
    os.close(fd)
    try:
        if ext == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in sd.items()})
        elif ext == ".safetensors":
            from safetensors.torch import save_file
            save_file({k: _from_numpy(np.asarray(v)).contiguous() for k, v in sd.items()}, tmp)
        else:
            torch = _torch()
            torch.save({k: _from_numpy(np.asarray(v)) for k, v in sd.items()}, tmp)
        from infinity_jax.convert.common import default_mode
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_state_dict(given: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raises one ValueError listing every missing, unexpected and mis-shaped key (strict loading)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(f"{k}: got {tuple(np.shape(given[k]))}, expected {tuple(expected[k])}"
                    for k in set(given) & set(expected) if tuple(np.shape(given[k])) != tuple(expected[k]))
    if missing or unexpected or shapes:
        parts = [f"{what}: the state dict does not match the model"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(f"  {title} ({len(items)}):\n" + "\n".join(f"    {x}" for x in items))
        raise ValueError("\n".join(parts))
