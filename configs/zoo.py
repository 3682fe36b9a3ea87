"""The model zoo: a full training config for every official Infinity size, tokenizer and pixel budget.

usage: infinity-jax train --config zoo:NAME[,vae=D][,pn=P][,mesh=M][,scan][,remat=R][,dtype=T][,attention=A]
           --workdir DIR [--config.data.path=...]
  NAME  infinity_2b | infinity_8b | infinity_20b | infinity_layer{12,16,24,32,40,48}
        (short forms: 2b, 8b, 20b, layer12, ...), sizes from configs/infinity.py
  vae   tokenizer, configs/bsq_vae.py: d16 | d24 | d32 | d32reg | d64 (patch 16, d bits per token:
        2^d implicit codes; default d32) | d56 (the released 8B's: 14 bits at patch 8, read 2x2 per
        token; infinity_8b's default and only there); sets model.codebook_dim (d, or 4 x 14 = 56 with
        model.apply_spatial_patchify=1 for d56) to match
  pn    pixel budget, infinity_jax/schedules.py: 0.06M (default; the official pre-training
        stage) | 0.25M | 0.60M | 1M; square images of 256 / 512 / 768 / 1024 px
  mesh  a configs/mesh_presets.py preset (sharding rules, mesh shape, global batch, remat, bf16),
        e.g. h100x8-fsdp, v5p-128; without it: train_defaults (fsdp over all devices, batch 256)
  scan, remat=, dtype=, attention=  execution options passed to configs/infinity.py

Files the run reads (put them there or override the keys): the official VAE weights
weights/infinity_vae_d{D}.pth (d56: infinity_vae_d56_f8_14_patchify.pth; vae.params), a Flan-T5-XL
Hugging Face folder weights/flan-t5-xl (text.path), and a dataset built by `infinity-jax data prepare`
(data.path). Training images are square crops at the budget's 1:1 size (the trainer runs one
schedule); a transformer token covers 16 x 16 pixels either way (d56: 2 x 2 positions of stride 8),
so the image sizes above hold for every tokenizer. infinity_8b is the released 8B (vae=d56,
apply_spatial_patchify=1); zoo:8b,vae=d32 is the 8B size on a patch-16 tokenizer (no patchify). The
optimizer settings are train_defaults' (official code defaults); see DESIGN.md for where the official
script differs.
"""

from __future__ import annotations

import ml_collections

from infinity_jax import schedules
from infinity_jax.config_util import parse_named_arg
from infinity_jax.configs import bsq_vae, mesh_presets, t5, train_defaults
from infinity_jax.configs import infinity as infinity_configs

MODELS = tuple(n for n in infinity_configs.NAMES if n != "tiny")
ALIASES = {n.removeprefix("infinity_"): n for n in MODELS}
# the released tokenizers: patch 16, and the patch-8 ones (d56) that need model.apply_spatial_patchify
VAES = tuple(n for n in bsq_vae.NAMES if n not in ("tiny", "tiny_patchify", "shapes"))
PATCHIFY_VAES = ("d56",)  # 4 positions per token: only the model whose released recipe reads them
PATCHIFY_MODELS = tuple(n for n, (_, patchify) in infinity_configs.RECIPES.items() if patchify)  # infinity_8b
PIXEL_BUDGETS = tuple(schedules.PIXEL_BUDGETS)
_OPTIONS = {"vae", "pn", "mesh", "scan", "remat", "dtype", "attention"}


def image_size(pn: str) -> int:
    """Side of the square image whose latent is the last scale of the 1:1 template at `pn`."""
    _, h, _ = schedules.official_schedule(1.0, pn)[-1]
    return h * schedules.VAE_STRIDE


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name, opts = parse_named_arg(
        arg, "zoo", names=MODELS, default="infinity_2b", aliases=ALIASES, allowed=_OPTIONS, kind="model"
    )
    default_vae = PATCHIFY_VAES[0] if name in PATCHIFY_MODELS else "d32"
    vae_name, pn, mesh = opts.get("vae", default_vae), opts.get("pn", "0.06M"), opts.get("mesh")
    if vae_name not in VAES:
        raise ValueError(f"zoo vae={vae_name!r}: expected one of {VAES}")
    if vae_name in PATCHIFY_VAES and name not in PATCHIFY_MODELS:
        raise ValueError(
            f"zoo vae={vae_name!r} with {name}: a patch-8 tokenizer read 2x2 per token (apply_spatial_patchify=1), "
            f"the released recipe of {', '.join(PATCHIFY_MODELS)} only; pick one of "
            f"{tuple(v for v in VAES if v not in PATCHIFY_VAES)} for {name}"
        )
    if pn not in PIXEL_BUDGETS:
        raise ValueError(f"zoo pn={pn!r}: expected one of {PIXEL_BUDGETS}")

    c = train_defaults.get_config()
    c.name = f"zoo/{name}"
    exec_keys = ("scan", "remat", "dtype", "attention")
    exec_opts = [k if v == "1" else f"{k}={v}" for k, v in opts.items() if k in exec_keys]
    m = infinity_configs.get_config(",".join([name] + exec_opts)).model
    if "dtype" not in opts:
        m.dtype = "bfloat16"
    vcfg = bsq_vae.get_config(vae_name)
    m.apply_spatial_patchify = int(vae_name in PATCHIFY_VAES)
    m.codebook_dim = int(vcfg.codebook_dim) * (4 if m.apply_spatial_patchify else 1)
    c.model = m

    c.vae = v = ml_collections.ConfigDict()
    v.config = f"bsq_vae:{vae_name}"
    v.overrides = ()
    v.params = f"weights/{vcfg.checkpoint}"
    c.schedule = pn

    c.text = x = t5.get_config("flan-t5-xl,path=weights/flan-t5-xl")  # the configs/t5.py schema
    x.model.d_model = 2048  # Flan-T5-XL's width (the released recipe)
    m.text_channels, m.text_maxlen = x.model.d_model, x.max_length  # the model reads what this encoder gives

    c.data = d = ml_collections.ConfigDict()
    d.path = "data/infinity"
    d.pn = pn
    d.image_size = image_size(pn)
    d.h_div_w = 1.0
    d.short_cap_prob = 0.5  # official train script
    d.dynamic_length_prompt = True  # official train script
    d.random_flip = False
    d.num_threads = 8

    # official train script defaults (self-correction, CFG text dropout, per-scale reweighting):
    # train.step.StepOptions' defaults, which run_config fills in
    c.step = ml_collections.ConfigDict()

    c.sample = sp = ml_collections.ConfigDict()  # periodic sample grids: off by default at these sizes
    sp.every = 0
    sp.cfg = 3.0
    sp.prompts = ("a photo of a cat", "an oil painting of a lighthouse at dusk")

    c.eval = ml_collections.ConfigDict(dict(val_batches=8))

    if mesh is not None:
        p = mesh_presets.get_config(mesh)
        c.parallel.update(p.parallel.to_dict())
        c.train.global_batch = p.train.global_batch
        c.train.compute_dtype = p.train.compute_dtype
        if "remat" not in opts:
            m.remat = p.model.remat
        c.mesh_preset = mesh
    return c
