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
the released recipe: Flan-T5-XL text (2048 wide, 512 tokens), shared AdaLN, cosine attention, RoPE
normalised by hw (mode 2), level embedding in the first block only; d = 32 bits (a patch-16
tokenizer), except infinity_8b: the released 8B reads the d56 tokenizer (configs/bsq_vae.py, 14 bits
at patch 8) through official apply_spatial_patchify=1, 2x2 tokenizer positions per token, so
codebook_dim = 4 x 14 = 56.

The model section states only the size and what differs from InfinityConfig's defaults (the released
recipe); the commands complete it from InfinityConfig when they load it (infinity_jax.run_config.load).

Parameter counts of the official class built with these arguments (torch, 'meta' device), which
`infinity-jax params` reproduces from our shapes (tests/test_zoo_configs.py checks every size):
  infinity_2b 2,204,564,032   infinity_8b 8,375,791,824   infinity_20b 19,952,199,784
  layer12 125,185,696   layer16 361,633,792   layer24 940,944,832
  layer32 2,256,694,912   layer40 4,716,421,888   layer48 8,767,198,528
infinity_8b is counted at its released recipe (d 56, apply_spatial_patchify 1; vae_local a stand-in
with embed_dim 14). The 8B size at d = 32 (a patch-16 tokenizer, zoo:8b,vae=d32) has
8,375,533,728 (OFFICIAL_PARAMS_8B_D32): only the bit embedding and the bit head depend on d.
"""

from __future__ import annotations

import ml_collections

from infinity_jax.config_util import parse_named_arg

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
    "infinity_2b": 2_204_564_032,
    "infinity_8b": 8_375_791_824,  # d 56, apply_spatial_patchify 1 (the released 8B)
    "infinity_20b": 19_952_199_784,
    "infinity_layer12": 125_185_696,
    "infinity_layer16": 361_633_792,
    "infinity_layer24": 940_944_832,
    "infinity_layer32": 2_256_694_912,
    "infinity_layer40": 4_716_421_888,
    "infinity_layer48": 8_767_198_528,
    "tiny": 272_836,  # meta/json params.gpt of the tiny fixtures
}
OFFICIAL_PARAMS_8B_D32 = 8_375_533_728  # the official class at the 8B size with d 32, no patchify
# name -> (codebook_dim, apply_spatial_patchify) where not the default (32, 0): the released 8B
RECIPES = {"infinity_8b": (56, 1)}
NAMES = tuple(SIZES)
ALIASES = {n.removeprefix("infinity_"): n for n in NAMES if n.startswith("infinity_")}  # '2b' -> 'infinity_2b'
EXEC_OPTIONS = ("scan", "remat", "dtype", "attention")  # a flag and model/transformer.py's execution fields


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name, opts = parse_named_arg(
        arg, "infinity", names=NAMES, default="infinity_2b", aliases=ALIASES, allowed=EXEC_OPTIONS
    )
    depth, width, heads, chunks = SIZES[name]
    c = ml_collections.ConfigDict()
    c.name = name
    c.official_params = OFFICIAL_PARAMS[name]
    m = c.model = ml_collections.ConfigDict()
    m.depth, m.embed_dim, m.num_heads, m.block_chunks = depth, width, heads, chunks
    if name in RECIPES:
        m.codebook_dim, m.apply_spatial_patchify = RECIPES[name]
    if name == "tiny":
        m.text_channels = 128  # the fixtures' text width (the released recipe's Flan-T5-XL: 2048)
    m.extension = ""  # official: none; model/extensions.py names the opt-in additions (no export)
    if name != "tiny":
        m.drop_path_rate = 0.25 if name == "infinity_20b" else 0.1
    # execution options (defaults: float32 compute, no remat, unscanned blocks, attention 'auto');
    # dtype: compute dtype (bfloat16 on TPU/GPU; params, norms, softmax, loss stay fp32); remat: a
    # model/transformer.py REMAT_MODES name; attention: a model/attention.py kernel
    for k, v in opts.items():
        if k == "scan":
            m.scan_layers = True
        else:
            m[k] = v
    return c
