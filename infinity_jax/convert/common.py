"""Helpers shared by the torch <-> JAX converters: param-tree flattening, path renames, layouts.

A converter is a table: for every official key, the path of our param (a '/'-joined string,
e.g. 'encoder/down_1/block_0/conv1/conv/kernel') and how the array is laid out. The helpers here
build such tables from an abstract param tree and move arrays between layouts exactly (pure
transposes and exact casts: a round trip is bit-identical).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import ml_dtypes
import numpy as np

from infinity_jax.errors import UsageError

# our leaf name -> the official one
TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


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
            raise ValueError(f"{what}: casting {x.dtype} -> {dtype} would change {bad} values; pass a wider dtype")
    return y


def float_dtype(name: str | None, flag: str = "--dtype") -> np.dtype | None:
    """A dtype name (float32, fp32, bfloat16, bf16, float16, fp16) -> np.dtype; None stays None."""
    if name is None:
        return None
    if str(name) in ("bfloat16", "bf16"):
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dtype = np.dtype({"fp32": "float32", "fp16": "float16"}.get(str(name), str(name)))
    except TypeError:
        dtype = None
    if dtype is None or not np.issubdtype(dtype, np.floating):
        raise UsageError(f"{flag} {name!r}: expected a floating-point dtype (float32, bfloat16, float16)")
    return dtype
