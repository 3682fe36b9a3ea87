"""Infinity transformer configs: every official model size, and the test fixtures' 'tiny'.

usage: get_config('infinity_2b') -> ConfigDict with a `model` section (InfinityConfig fields);
names: infinity_2b, infinity_8b, infinity_20b, infinity_layer{12,16,24,32,40,48}, tiny
(short forms as in configs/zoo.py: 2b, 8b, 20b, layer12, ...).
Append ',scan' / ',remat=full' / ',dtype=bfloat16' / ',attention=chunked' to an argument for
execution options, e.g. get_config('infinity_2b,scan,remat=full,dtype=bfloat16').

Sizes are the official ones: depth / width / heads from the factory functions at the bottom of
the official infinity/models/infinity.py (and tools/run_infinity.py for 8b, which has no factory),
block_chunks from tools/run_infinity.py (2b and 8b: 8; the layer ladder: 4); infinity_20b has no
chunk count anywhere official (58 layers), so it gets 1 (weight names `blocks.{i}`). All sizes use
the released recipe: Flan-T5-XL text (2048 wide, 512 tokens), d = 32 bits, shared AdaLN, cosine
attention, RoPE normalised by hw (mode 2), level embedding in the first block only.

Parameter counts of the official class built with these arguments (torch, 'meta' device), which
`python configs/infinity.py` reproduces from our shapes:
  infinity_2b 2,204,564,032   infinity_8b 8,375,533,728   infinity_20b 19,952,199,784
  layer12 125,185,696   layer16 361,633,792   layer24 940,944,832
  layer32 2,256,694,912   layer40 4,716,421,888   layer48 8,767,198,528
"""
from __future__ import annotations

import ml_collections

# name -> (depth, embed_dim, num_heads, block_chunks); drop path: 0.25 for 20b, else 0.1 (factory defaults)
SIZES = {
    "infinity_2b": (32, 2048, 16, 8),
    "infinity_8b": (40, 3584, 28, 8),
    "infinity_20b": (58, 4608, 36, 1),
    "infinity_layer12": (12, 768, 8, 4),
    "infinity_layer16": (16, 1152, 12, 4),
    "infinity_layer24": (24, 1536, 16, 4),
    "infinity_layer32": (32, 2080, 20, 4),
    "infinity_layer40": (40, 2688, 24, 4),
    "infinity_layer48": (48, 3360, 28, 4),
    "tiny": (2, 64, 2, 2),  # tests/fixtures tiny / tiny-wide (text 128 wide)
}
OFFICIAL_PARAMS = {
    "infinity_2b": 2_204_564_032, "infinity_8b": 8_375_533_728, "infinity_20b": 19_952_199_784,
    "infinity_layer12": 125_185_696, "infinity_layer16": 361_633_792, "infinity_layer24": 940_944_832,
    "infinity_layer32": 2_256_694_912, "infinity_layer40": 4_716_421_888, "infinity_layer48": 8_767_198_528,
    "tiny": 272_836,  # meta/json params.gpt of the tiny fixtures
}
NAMES = tuple(SIZES)
ALIASES = {n.removeprefix("infinity_"): n for n in NAMES if n.startswith("infinity_")}  # '2b' -> 'infinity_2b'


def _parse(arg: str | None) -> tuple[str, dict]:
    parts = [p.strip() for p in (arg or "infinity_2b").split(",") if p.strip()]
    name, opts = parts[0], {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        opts[k] = v if v else True
    return name, opts


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name, opts = _parse(arg)
    name = ALIASES.get(name, name)
    if name not in SIZES:
        raise ValueError(f"infinity config {name!r}: expected one of {NAMES} or {tuple(ALIASES)}")
    depth, width, heads, chunks = SIZES[name]
    c = ml_collections.ConfigDict()
    c.name = name
    c.official_params = OFFICIAL_PARAMS[name]
    m = c.model = ml_collections.ConfigDict()
    m.depth, m.embed_dim, m.num_heads, m.block_chunks = depth, width, heads, chunks
    m.mlp_ratio = 4.0
    m.codebook_dim = 32
    m.text_channels = 128 if name == "tiny" else 2048
    m.text_maxlen = 512
    m.norm_eps = 1e-6
    m.rms_norm = False
    m.shared_aln = True
    m.cos_attn = True
    m.tau = 1.0
    m.cross_attn_layer_scale = -1.0
    m.rope2d_normalized_by_hw = 2
    m.lvl_embed_first_block_only = True
    m.abs_pos_embed = False  # ours (model/transformer.py); the official models have no such weights
    m.drop_path_rate = 0.0 if name == "tiny" else (0.25 if name == "infinity_20b" else 0.1)
    m.dtype = "float32"      # compute dtype (bfloat16 on TPU/GPU); params, norms, softmax, loss stay fp32
    m.remat = "none"         # model/transformer.py REMAT_MODES: none | full | attn | dots | save_qkv_attn_mlp | ...
    m.scan_layers = False
    m.attention = "auto"     # model/attention.py: auto (cuDNN on GPU, splash on TPU, chunked on CPU) | xla | ...
    for k, v in opts.items():
        if k == "scan":
            m.scan_layers = True
        elif k in ("remat", "dtype", "attention"):
            m[k] = v
        else:
            raise ValueError(f"infinity config option {k!r} (from {arg!r}): expected scan, remat=..., dtype=..., "
                             "attention=...")
    return c


if __name__ == "__main__":  # prints our parameter counts beside the official ones
    from infinity_jax.model.transformer import InfinityConfig, count_params
    for n in NAMES:
        cfg = get_config(n)
        ours = count_params(InfinityConfig.from_dict(cfg.model))
        print(f"{n:18s} {ours:>15,d}  official {cfg.official_params:>15,d}  {'ok' if ours == cfg.official_params else 'DIFF'}")
