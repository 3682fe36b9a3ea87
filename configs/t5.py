"""Text-encoder configs: what `infinity_jax.text.encoder.build_text_encoder` reads.

usage: get_config('flan-t5-xl,path=weights/flan-t5-xl,dtype=bfloat16') -> ConfigDict.
The first item names a shape preset (infinity_jax/text/t5.py PRESETS: flan-t5-{small,base,large,
xl,xxl}, byt5-{small,base}, tiny-byt5); options after commas set fields. With `path` set the
weights, shapes and tokenizer come from that local Hugging Face folder and the preset is only a
label; without it the encoder is random-initialised from the preset (plus `model` overrides),
which is what demos and benchmarks without weights use.

The official recipe is Flan-T5-XL (2048 wide), max 512 tokens, padding/truncation as in
tokenizers.py. (The official code runs T5 in fp16; we default to fp32 compute and suggest bf16
on TPU/GPU.)
"""

from __future__ import annotations

import ml_collections

from infinity_jax.config_util import parse_named_arg

OPTIONS = ("path", "tokenizer", "max_length", "buckets", "dtype", "cache_size", "seed", "rules")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # presets are infinity_jax/text/t5.py's to check (configs import no model code)
    preset, opts = parse_named_arg(arg, "t5", default="flan-t5-xl", allowed=OPTIONS)
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.path = ""  # local Hugging Face folder (config.json + weights [+ spiece.model]); "" = random init
    c.model = ml_collections.ConfigDict()  # T5Config field overrides for random init, e.g. num_layers
    c.tokenizer = "auto"  # 'auto' | 'bytes' | a spiece.model path / folder
    c.max_length = 512  # official `tlen`
    c.buckets = (16, 32, 64, 128, 256, 512)  # padded lengths (one compile each); (512,) = fixed shapes
    c.dtype = "float32"  # compute dtype; 'bfloat16' on TPU/GPU. Params stay fp32.
    c.cache_size = 64  # LRU prompt -> features entries (null/negative prompts); 0 disables
    c.seed = 0  # random init only
    c.rules = "dp"  # parallel.RULES preset for the encoder's params
    if c.preset == "tiny-byt5":
        c.tokenizer = "bytes"
        c.max_length = 128
        c.buckets = (16, 32, 64, 128)
    for k, v in opts.items():  # buckets: lengths joined by '/', e.g. buckets=16/128
        try:
            c[k] = type(c[k])(v) if not isinstance(c[k], tuple) else tuple(int(x) for x in v.split("/"))
        except ValueError:
            raise ValueError(
                f"t5 {k}={v!r}: expected {'lengths joined by /' if k == 'buckets' else 'an integer'}, "
                f"like {k}={'/'.join(map(str, c[k])) if k == 'buckets' else c[k]}"
            ) from None
    return c
