"""Training a small BSQ-VAE on the synthetic 64x64 shapes dataset (CPU-sized, minutes).

usage: infinity-jax train-tokenizer --config configs/tokenizer_shapes.py[:ARG] --workdir runs/tok
       [--config.key=value ...]
ARG: '' (the demo), 'tiny' (seconds-long test runs), or 'size=N,bits=D,stride=S,width=C,prefix=W,mult=M' (any
subset; prefix=W sets loss.prefix_weight, see infinity_jax/train/tokenizer_step.py; mult=122 sets the
channel multipliers, one digit per level).

The default VAE (32x32 images, stride 4, d = 8 bits: 8x8 latents, scales 1,2,4,8) is the one the
demo trains and configs/shapes.py expects; the transformer trains on it with
    --config.vae.config=runs/tok/vae_config.json --config.vae.params=runs/tok/vae_params.npz
size=64,stride=8 is the same latent grid at 64x64 (about 4x the compute per image). Data comes from
`infinity-jax data prepare --source shapes --image-size 32 --out data/shapes`.
"""

from __future__ import annotations

import ml_collections

from infinity_jax import schedules
from infinity_jax.config_util import int_arg, parse_arg
from infinity_jax.configs import bsq_vae, train_defaults

# VAE stride -> channel multipliers (one stride-2 level per entry after the first). The first two levels
# stay at base width: (1, 1, 2) steps in 0.6x the time of (1, 2, 2) (the decoder's convolutions dominate)
# and so reconstructs better in the same minutes
CH_MULT = {4: (1, 1, 2), 8: (1, 1, 2, 2), 16: (1, 1, 2, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, {"tiny", "size", "bits", "stride", "width", "prefix", "mult"}, "tokenizer_shapes")
    tiny = "tiny" in opts
    c = train_defaults.get_config("tiny" if tiny else None)
    c.name = "tokenizer_shapes"

    t = c.train
    t.total_steps = 30 if tiny else 600
    t.global_batch = 8 if tiny else 16
    t.compute_dtype = "float32"
    t.log_every = 5 if tiny else 25
    c.optim.base_lr = 2e-3 * 256 / t.global_batch  # peak lr 2e-3 (peak = base_lr * global_batch / 256)
    c.optim.b1, c.optim.b2 = 0.9, 0.95  # official tokenizer betas (beta1 0.9, beta2 0.95)
    c.optim.warmup_steps = 3 if tiny else 30
    c.optim.final_frac = 0.1
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0  # official max_grad_norm
    c.parallel.rules = "dp"
    c.checkpoint.every = 15 if tiny else 200
    c.checkpoint.keep = 2
    c.checkpoint.async_save = not tiny

    # the VAE: the official architecture, narrow and shallow
    size, stride = int_arg(opts, "size", 32, "tokenizer_shapes"), int_arg(opts, "stride", 4, "tokenizer_shapes")
    if stride not in CH_MULT:
        raise ValueError(f"tokenizer_shapes stride={stride}: expected one of {sorted(CH_MULT)}")
    if size < 32 or size % stride:
        raise ValueError(
            f"tokenizer_shapes size={size}: expected at least 32 (the shapes data) and a multiple of stride={stride}"
        )
    v = bsq_vae.get_config("shapes")  # 32 channels, stride 4, d 8: the defaults below
    v.name = f"shapes_s{stride}"
    # GroupNorm: a multiple of 32 or 24
    v.base_ch = int_arg(opts, "width", 24 if tiny else v.base_ch, "tokenizer_shapes")
    v.ch_mult = CH_MULT[stride]
    if "mult" in opts:
        mult = str(opts["mult"])
        if not mult.isdigit() or "0" in mult or len(mult) != len(v.ch_mult):
            raise ValueError(
                f"tokenizer_shapes mult={mult}: expected {len(v.ch_mult)} digits 1-9, one "
                f"channel multiplier per level of stride={stride} (default "
                f"{''.join(map(str, v.ch_mult))})"
            )
        v.ch_mult = tuple(int(m) for m in mult)
    v.patch_size = stride
    # d = 8, not 16: a bitwise classifier samples each bit on its own, so a half-learned
    # transformer mixes the bits of several codes. With 8 bits nearly all 256 codes occur in the
    # data and decode to something plausible; with 16 bits such mixtures are codes the decoder never
    # saw (garbled colours).
    v.codebook_dim = v.z_channels = int_arg(opts, "bits", v.codebook_dim, "tokenizer_shapes")
    c.vae = v
    # quantizer scales: doubling from 1x1 up to the latent grid (size // stride)
    c.schedule = ",".join(f"{h}x{w}" for _, h, w in schedules.custom_schedule((size, size), stride=stride))

    c.init = ml_collections.ConfigDict()
    c.init.vae_params = ""  # start from these VAE params (.npz/.msgpack of ours, or an official .pth)

    c.loss = o = ml_collections.ConfigDict()
    # l2, not the official l1 (weight 4): on these mostly-background images l1 (a median) learns to
    # paint the background and drops the small shapes
    o.recon = "l2"
    o.recon_weight = 1.0
    o.quantizer_weight = 1.0
    o.commit_weight = 0.25
    o.entropy_weight = 0.0  # off: the d=8 recipe was measured without it (on/off not compared)
    o.inv_temperature = 100.0
    o.gamma0 = 1.0
    o.gamma = 1.0
    o.zeta = 1.0
    # ours, not official: the codes of a random prefix of scales must draw the image too, so the coarse
    # scales carry the objects' places and colours and the transformer decides them coarse to fine.
    # Without it the objects live in the last scale's bits and the background's codes are noise there.
    # Weight 0.3: weight 1 blurs the shapes (docs/demo_experiments.md)
    o.prefix_weight = float(opts.get("prefix", 0.3))
    o.perceptual_weight = 0.0  # > 0: + weight * LPIPS(recon, image) (VGG16; taming's VQGAN uses 1.0)
    # local files (nothing is downloaded): 'vgg16-397923af.pth,vgg.pth' (torchvision's VGG16, then the
    # lpips package's weights/v0.1/vgg.pth lin heads) or one .npz from `infinity-jax convert lpips`
    o.lpips_weights = ""
    o.gan_weight = 0.0  # > 0: a PatchGAN discriminator trained from scratch (hinge loss)
    o.disc_start = 0
    o.disc_channels = 16 if tiny else 32
    o.disc_layers = 3
    o.disc_weights = ""

    c.data = d = ml_collections.ConfigDict()
    d.path = "data/shapes"
    d.image_size = size
    d.worker_count = 0
    d.num_threads = 2
    d.random_flip = True

    c.eval = e = ml_collections.ConfigDict()
    e.num_images = 16 if tiny else 256  # held-out (seed + 1) images reconstructed at the end
    return c
