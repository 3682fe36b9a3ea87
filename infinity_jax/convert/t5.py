"""T5 encoder weights from a local Hugging Face model folder (no network), and back.

Reads `model.safetensors`, a sharded `model.safetensors.index.json`, `pytorch_model.bin` or a
sharded `pytorch_model.bin.index.json` (in that order of preference). Only the encoder is kept:
`shared.weight` (or `encoder.embed_tokens.weight`) and `encoder.*`; `decoder.*` and `lm_head.*`
of full T5ForConditionalGeneration checkpoints are skipped without being read. Everything else
is checked strictly: a missing, unexpected or mis-shaped key is an error naming it.

Safetensors are read with a small header parser, so bf16/fp16 checkpoints load without torch
and only the encoder's bytes are read; .bin files need torch (lazily imported).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Iterable, Mapping

import numpy as np

from infinity_jax.convert.torch_io import _to_numpy, _torch, check_state_dict
from infinity_jax.text.t5 import T5Config

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SKIPPED_PREFIXES = ("decoder.", "lm_head.")
_EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


def key_table(config: T5Config) -> list[tuple[str, tuple[str, ...], bool]]:
    """(Hugging Face key, our param path, transpose?) for every encoder weight."""
    rows: list[tuple[str, tuple[str, ...], bool]] = [("shared.weight", ("shared", "embedding"), False)]
    ff = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
    for i in range(config.num_layers):
        hf, ours = f"encoder.block.{i}.layer", f"block_{i}"
        for n in ("q", "k", "v", "o"):
            rows.append((f"{hf}.0.SelfAttention.{n}.weight", (ours, "layer_0", "SelfAttention", n, "kernel"), True))
        if i == 0:
            rows.append(
                (
                    f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                    (ours, "layer_0", "SelfAttention", "relative_attention_bias", "embedding"),
                    False,
                )
            )
        rows.append((f"{hf}.0.layer_norm.weight", (ours, "layer_0", "layer_norm", "scale"), False))
        for n in ff:
            rows.append((f"{hf}.1.DenseReluDense.{n}.weight", (ours, "layer_1", "DenseReluDense", n, "kernel"), True))
        rows.append((f"{hf}.1.layer_norm.weight", (ours, "layer_1", "layer_norm", "scale"), False))
    rows.append(("encoder.final_layer_norm.weight", ("final_layer_norm", "scale"), False))
    return rows


def expected_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """Hugging Face key -> shape (PyTorch layout) of every encoder weight."""
    C, HD, F = config.d_model, config.num_heads * config.d_kv, config.d_ff
    shapes = {}
    for key, _, _ in key_table(config):
        name = key.rsplit(".", 2)[-2]
        shapes[key] = {
            "shared": (config.vocab_size, C),
            "q": (HD, C),
            "k": (HD, C),
            "v": (HD, C),
            "o": (C, HD),
            "relative_attention_bias": (config.relative_attention_num_buckets, config.num_heads),
            "layer_norm": (C,),
            "final_layer_norm": (C,),
            "wi_0": (F, C),
            "wi_1": (F, C),
            "wi": (F, C),
            "wo": (C, F),
        }[name]
    return shapes


def hf_to_params(sd: Mapping[str, np.ndarray], config: T5Config, where: str = "T5 state dict") -> dict:
    """Our (unboxed, float32 numpy) param tree from an encoder state dict; strict on keys and shapes."""
    sd = dict(sd)
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    sd.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight in every T5 checkpoint
    check_state_dict(sd, expected_shapes(config), where)
    params: dict = {}
    for key, path, transpose in key_table(config):
        a = np.asarray(sd[key], dtype=np.float32)
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(a.T) if transpose else a
    return params


def params_to_hf(params: Mapping, config: T5Config) -> dict[str, np.ndarray]:
    """The Hugging Face `T5EncoderModel` state dict (float32 numpy) of our params."""
    sd = {}
    for key, path, transpose in key_table(config):
        node = params
        for p in path:
            if p not in node:
                raise KeyError(f"T5 params: no {'/'.join(path)} (expected by a {config.num_layers}-layer config)")
            node = node[p]
        a = np.asarray(node, dtype=np.float32)
        sd[key] = np.ascontiguousarray(a.T) if transpose else a
    return sd


def _wanted(key: str) -> bool:
    return not key.startswith(_SKIPPED_PREFIXES)


_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file (all, or the given keys) as numpy; BF16 comes back as float32."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        out = {}
        for key in header if keys is None else keys:
            if key not in header:
                raise KeyError(f"{path}: no tensor {key!r}")
            info = header[key]
            begin, end = info["data_offsets"]
            f.seek(8 + n + begin)
            raw = f.read(end - begin)
            if info["dtype"] == "BF16":  # bf16 -> f32 is a 16-bit shift of the bit pattern
                a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] in _ST_DTYPES:
                a = np.frombuffer(raw, _ST_DTYPES[info["dtype"]])
            else:
                raise ValueError(
                    f"{path}: tensor {key!r} has dtype {info['dtype']}; expected one of {sorted(_ST_DTYPES) + ['BF16']}"
                )
            out[key] = a.reshape(info["shape"]).copy()
    return out


def _safetensors_keys(path: str) -> list[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return [k for k in json.loads(f.read(n)) if k != "__metadata__"]


def _read_bin(path: str) -> dict[str, np.ndarray]:
    torch = _torch()
    try:  # mmap: only the encoder's tensors get paged in
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _to_numpy(v.float() if v.dtype == torch.bfloat16 else v) for k, v in obj.items() if _wanted(k)}


def find_weights(folder: str) -> str:
    """The weights file (or index) to read in a Hugging Face model folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"T5 weights: folder {folder!r} does not exist")
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(
        f"T5 weights: {folder!r} holds none of {list(WEIGHT_FILES)} (it has {sorted(os.listdir(folder))[:20]})"
    )


def read_encoder_state_dict(folder: str) -> dict[str, np.ndarray]:
    """The encoder part of the checkpoint in `folder` (Hugging Face names, source dtypes)."""
    path = find_weights(folder)
    if path.endswith(".index.json"):
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
        by_file: dict[str, list[str]] = {}
        for key, file in weight_map.items():
            if _wanted(key):
                by_file.setdefault(file, []).append(key)
        sd = {}
        for file, keys in sorted(by_file.items()):
            shard = os.path.join(folder, file)
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"T5 weights: {path} lists shard {file!r}, which is not in {folder!r}")
            if file.endswith(".safetensors"):
                sd.update(read_safetensors(shard, keys))
            else:
                part = _read_bin(shard)
                sd.update({k: part[k] for k in keys if k in part})
        return sd
    if path.endswith(".safetensors"):
        return read_safetensors(path, [k for k in _safetensors_keys(path) if _wanted(k)])
    return _read_bin(path)


def load_t5(folder: str, **config_overrides) -> tuple[T5Config, dict]:
    """(config, params) of the T5 encoder in a Hugging Face model folder; params are float32 numpy.

    `config_overrides` set our own fields, e.g. dtype='bfloat16' for the compute dtype.
    """
    find_weights(folder)  # a missing folder or weights file is reported before the config
    config = T5Config.from_hf(folder, **config_overrides)
    sd = read_encoder_state_dict(folder)
    return config, hf_to_params(sd, config, where=f"T5 encoder in {folder}")


def save_t5(folder: str, config: T5Config, params: Mapping) -> None:
    """Writes config.json + model.safetensors that `load_t5` and transformers' T5EncoderModel read."""
    os.makedirs(folder, exist_ok=True)
    hf = {k: v for k, v in config.to_dict().items() if k != "dtype"}
    hf.update(
        model_type="t5",
        architectures=["T5EncoderModel"],
        is_encoder_decoder=False,
        num_decoder_layers=config.num_layers,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    from safetensors.numpy import save_file  # numpy writer: no torch needed

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(params_to_hf(params, config), tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(folder, "model.safetensors"))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
