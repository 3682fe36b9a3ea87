"""Text-to-image on the synthetic shapes dataset: the built-in demo and the scaling-sweep base.

usage: infinity-jax train --config configs/shapes.py[:ARG] --workdir runs/shapes [--config.key=value ...]
ARG: '' (the demo size), 'tiny' (seconds-long CI/test runs), 'layers=N,width=C,heads=H,bits=D'
(sweep points; any subset), 'batch=B' (the global batch; the peak lr stays 3e-3).

Everything is small enough for a 2-core CPU: 32x32 images, the stride-4 VAE of
configs/tokenizer_shapes.py (8x8 latents, scales 1,2,4,8; random unless `vae.params` names the
weights `infinity-jax train-tokenizer` wrote), a byte-level
T5 text encoder (frozen, random unless `text.path` names a Hugging Face folder), and a
transformer a few layers deep. Data comes from `infinity-jax data prepare --source shapes`
(the demo builds it with `--layout slots`).
"""

from __future__ import annotations

import ml_collections

from infinity_jax.config_util import int_arg, parse_arg
from infinity_jax.configs import infinity as infinity_configs
from infinity_jax.configs import t5, tokenizer_shapes, train_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, {"tiny", "layers", "width", "heads", "bits", "batch"}, "shapes")
    tiny = "tiny" in opts
    c = train_defaults.get_config("tiny" if tiny else None)
    c.name = "shapes"

    t = c.train
    t.total_steps = 6 if tiny else 3000
    # batch 32: batch 16 in the same time (twice the steps) did not raise prompt adherence
    t.global_batch = int_arg(opts, "batch", 8 if tiny else 32, "shapes")
    t.compute_dtype = "float32"
    t.log_every = 1 if tiny else 25
    t.hook_every = 1000
    # peak lr = base_lr * global_batch / 256 = 3e-3 at any batch=B (a lower held-out loss than 1e-3)
    c.optim.base_lr = 3e-3 * 256 / t.global_batch
    c.optim.warmup_steps = 2 if tiny else 100
    c.optim.final_frac = 0.1
    c.optim.weight_decay = 0.005
    c.optim.grad_clip = 5.0
    c.parallel.rules = "dp"
    c.checkpoint.every = 3 if tiny else 500
    c.checkpoint.keep = 2
    c.checkpoint.async_save = not tiny

    # transformer: the official block structure at a small size
    m = infinity_configs.get_config("tiny").model
    # 3 blocks, not 4: at the same FLOPs the extra steps score higher prompt adherence
    m.depth = int_arg(opts, "layers", 2 if tiny else 3, "shapes")
    m.embed_dim = int_arg(opts, "width", 64 if tiny else 128, "shapes")
    m.num_heads = int_arg(opts, "heads", 2 if tiny else 4, "shapes")
    m.block_chunks = 1
    m.codebook_dim = int_arg(opts, "bits", 8, "shapes")  # the tokenizer's d (configs/tokenizer_shapes.py: why 8)
    m.text_channels = 128  # a multiple of the official text-pool head width (128)
    m.text_maxlen = 64
    m.drop_path_rate = 0.0
    # one traced block, stacked params: XLA CPU fuses an unrolled backward's residual chain into every consumer
    m.scan_layers = True
    # and recomputed in the backward: cheaper on CPU than writing and reading the stacked per-block residuals
    m.remat = "full"
    # ours, no export (model/extensions.py): each token knows its place, so a small model learns where the
    # first-named object goes
    m.extension = "abs_pos_embed"
    c.model = m

    # tokenizer: the BSQ-VAE of configs/tokenizer_shapes.py (random until `vae.params` names trained
    # weights, e.g. runs/tok/vae_params.npz with vae.config=runs/tok/vae_config.json)
    tok = tokenizer_shapes.get_config(f"bits={m.codebook_dim}")
    c.vae = v = ml_collections.ConfigDict()
    v.config = "bsq_vae:shapes"  # config_util spec, or the config.json that train-tokenizer saves
    v.overrides = tuple(f"{k}={tok.vae[k]!r}" for k in ("codebook_dim", "z_channels"))  # applied to v.config
    v.params = ""  # npz/msgpack of our params or an official .pth; '' = random
    c.schedule = tok.schedule  # 'HxW,...' up to the latent grid, or an official budget, e.g. '0.06M'

    # text: a frozen byte-level T5 (no files needed)
    # (the configs/t5.py schema: `path` names a local Hugging Face T5 folder, '' = random init from the preset)
    c.text = x = t5.get_config(f"tiny-byt5,tokenizer=bytes,max_length={m.text_maxlen}")
    x.model.d_model = m.text_channels

    # data: built by `infinity-jax data prepare --source shapes --image-size 32 --out data/shapes`
    c.data = d = ml_collections.ConfigDict()
    d.path = "data/shapes"
    d.latent_cache = ""  # a folder: encode the data once with the frozen VAE, train on the latents
    d.image_size = tok.data.image_size
    d.worker_count = 0
    d.num_threads = 2
    d.short_cap_prob = 0.0
    d.random_flip = False

    # loss: official self-correction and CFG dropout: train.step.StepOptions' defaults (run_config fills them in)
    c.step = ml_collections.ConfigDict()

    # sampling: the periodic grids of fixed prompts during training (every 0: off), and the defaults of
    # `infinity-jax sample` for this run: the demo's (data/shapes.py SAMPLE_CFG / SAMPLE_TAU)
    c.sample = sp = ml_collections.ConfigDict()
    sp.every = 2 if tiny else 500
    sp.cfg = 1.5
    sp.tau = 0.2
    sp.top_k = 900
    sp.top_p = 0.97
    sp.prompts = (
        "a photo of a red circle",
        "a photo of two squares",
        "a photo of a blue triangle left of a circle",
        "a photo of a yellow square and a purple circle",
    )

    c.eval = e = ml_collections.ConfigDict()
    e.val_batches = 1 if tiny else max(1, 256 // t.global_batch)  # held-out batches (seed + 1): 256 examples
    return c
