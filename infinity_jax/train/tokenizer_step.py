"""Training the BSQ-VAE itself: reconstruction, the BSQ quantizer terms, optional GAN and LPIPS.

    loss_fn = make_loss_fn(vae, schedule, TokenizerLossOptions(...))
    loss, metrics = loss_fn(params, batch, rng)       # for train.loop.run_training

params: {'vae': BSQVAE params, 'disc': PatchDiscriminator params (only when gan_weight > 0)}.
batch:  'image' (B, H, W, 3) uint8 or float in [-1, 1]; 'step' (B,) int32, the optimizer step
        (read only by the GAN, to start it at `disc_start`; see StepCounter).
frozen: {'lpips': LPIPS params} when perceptual_weight > 0 (load_frozen(options) reads them once,
        from loss.lpips_weights; the loop passes them to every step as a non-trained input).

Quantizer (one quantizer: the forward is infinity_jax.tokenizer.bsq.multiscale_quantize, whose bits
are signs and carry no gradient). Training adds the official straight-through path: at scale k
the quantizer sees the residual r_k (z minus the codes of earlier scales, which are constants for
the gradient, area-downsampled to (h_k, w_k)); its l2-normalised n_k = r_k / |r_k| is replaced by
the codes c_k = (2 bits - 1) / sqrt(d) in value but not in gradient, q_k = n_k + sg(c_k - n_k),
and z_q = sum_k upsample(q_k). The value of z_q is exactly bsq's z_hat. Per scale, as BSQ
(Zhao et al. 2024, arXiv 2406.07548) and the official quantizer define them:
    commit_k    = mean over elements of (n_k - sg(c_k))^2          (0 when n_k is a codeword)
    p           = sigmoid(4 * inv_temperature * n_k / sqrt(d))     soft probability that a bit is 1
    H_sample_k  = mean over positions of sum over bits of H(p)     (low: confident bits)
    H_book_k    = sum over bits of H(mean over batch and positions of p)   (high: bits used evenly;
                  the factorised codebook entropy, d*ln 2 at most)
    aux_k       = commit_weight * commit_k
                  + entropy_weight * zeta * (gamma0 * H_sample_k - gamma * H_book_k) / inv_temperature
and the quantizer loss is quantizer_weight * mean_k aux_k.

Total loss = recon_weight * recon (l1 or l2 on the unclamped decoder output)
           + prefix_weight * recon of the straight-through codes of the first k scales only, k drawn
             per image from 1..K-1 (ours, off by default: it makes the coarse scales draw the image
             — layout and colour — so a transformer decides them coarse to fine; measured on the
             shapes demo in docs/demo_experiments.md)
           + quantizer loss + perceptual_weight * mean LPIPS(recon, image) (VGG16,
           infinity_jax/tokenizer/lpips.py, in the VAE's compute dtype; its params frozen)
           + the GAN terms (hinge, PatchGAN). The GAN
           runs in the same update: the generator term sees the discriminator's params through
           stop_gradient and the discriminator term sees the reconstruction through stop_gradient,
           so one gradient of the sum is the usual pair of updates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from infinity_jax import schedules
from infinity_jax.convert import lpips as lpips_convert
from infinity_jax.data.pipeline import to_float
from infinity_jax.tokenizer import bsq
from infinity_jax.tokenizer import lpips as lpips_lib
from infinity_jax.tokenizer import vae as vae_lib

sg = jax.lax.stop_gradient
_ENTROPY_EPS = 1e-8  # probabilities are clipped to [eps, 1 - 1e-7] in the codebook entropy


@dataclasses.dataclass(frozen=True)
class TokenizerLossOptions:
    """Loss weights and settings (defaults: the official tokenizer's arguments where it has them)."""

    recon: str = "l1"  # 'l1' (official recon_loss_type) or 'l2'
    recon_weight: float = 4.0  # official l1_weight
    quantizer_weight: float = 1.0  # official lfq_weight (the trainer's setting; the inference stub has 0)
    commit_weight: float = 0.25  # official commitment_loss_weight
    entropy_weight: float = 0.1  # official entropy_loss_weight
    inv_temperature: float = 100.0  # official inv_temperature
    gamma0: float = 1.0  # weight of the per-sample entropy
    gamma: float = 1.0  # weight of the codebook entropy
    zeta: float = 1.0  # weight of the whole entropy penalty
    prefix_weight: float = 0.0  # ours: + weight * recon loss of the codes of a random prefix of scales
    perceptual_weight: float = 0.0  # LPIPS (VGG16); needs lpips_weights
    lpips_weights: str = ""  # local files: 'VGG16.pth,LIN.pth' or our .npz (infinity_jax/convert/lpips.py)
    gan_weight: float = 0.0  # generator hinge loss weight; 0 = no discriminator
    disc_start: int = 0  # optimizer step from which the GAN terms are on
    disc_channels: int = 64  # official base_ch_disc
    disc_layers: int = 3  # official disc_layers
    disc_weights: str = ""  # optional initial discriminator params (.npz/.msgpack of ours)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "TokenizerLossOptions":
        cfg = dict(cfg or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(names))
        if unknown:
            raise ValueError(f"tokenizer loss options {unknown} unknown; expected some of {names}")
        return cls(**cfg).checked()

    def checked(self) -> "TokenizerLossOptions":
        """Raises ValueError for bad values and for losses whose networks are missing."""
        if self.recon not in ("l1", "l2"):
            raise ValueError(f"loss.recon={self.recon!r}: expected 'l1' or 'l2'")
        if self.inv_temperature <= 0:
            raise ValueError(f"loss.inv_temperature={self.inv_temperature}: expected > 0")
        if self.perceptual_weight < 0:
            raise ValueError(f"loss.perceptual_weight={self.perceptual_weight}: expected >= 0")
        if self.perceptual_weight > 0:
            if not self.lpips_weights:
                raise ValueError(
                    f"loss.perceptual_weight={self.perceptual_weight} needs loss.lpips_weights: "
                    "'VGG16_FILE,LIN_FILE' (torchvision's VGG16 state dict, the LPIPS lin heads) or "
                    "one .npz from `infinity-jax convert lpips` (local files: nothing is downloaded); "
                    "or set loss.perceptual_weight=0"
                )
            try:
                lpips_convert.parse_spec(self.lpips_weights)
            except ValueError as e:
                raise ValueError(f"loss.lpips_weights: {e}") from None
        if self.gan_weight > 0 and self.disc_channels % 16:
            raise ValueError(f"loss.disc_channels={self.disc_channels}: expected a multiple of 16 (GroupNorm)")
        if self.gan_weight > 0 and self.disc_weights and not self.disc_weights.endswith((".npz", ".msgpack")):
            raise ValueError(f"loss.disc_weights={self.disc_weights!r}: expected our .npz or .msgpack params")
        return self


# ----------------------------------------------------------------------------- quantizer terms


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / |x| over the last axis (floored as torch's F.normalize and bsq.quantize_scale)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), bsq._L2_EPS)


def _binary_entropy(p: jax.Array) -> jax.Array:
    """H(p) in nats; p clipped away from 0 and 1 (where XLA's fused log(1 - p) can give NaN)."""
    p = jnp.clip(p, _ENTROPY_EPS, 1.0 - 1e-7)
    return -(p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p))


def _binary_entropy_of_logits(a: jax.Array) -> jax.Array:
    """H(sigmoid(a)) in nats, stable for any a: p * softplus(-a) + (1 - p) * softplus(a)."""
    p = jax.nn.sigmoid(a)
    return p * jax.nn.softplus(-a) + (1.0 - p) * jax.nn.softplus(a)


def soft_entropies(n: jax.Array, inv_temperature: float = 100.0) -> tuple[jax.Array, jax.Array]:
    """(per-sample entropy, codebook entropy) of BSQ's soft quantization, in nats.

    n: (..., d) l2-normalised quantizer inputs; every leading axis counts as a sample.
    per-sample: mean over samples of sum over bits of H(p); codebook: sum over bits of H(mean p),
    with p = sigmoid(4 * inv_temperature * n / sqrt(d)).
    """
    d = n.shape[-1]
    a = 4.0 * inv_temperature * n.astype(jnp.float32) / math.sqrt(d)
    per_sample = _binary_entropy_of_logits(a).sum(-1).mean()
    marginal = jax.nn.sigmoid(a).reshape(-1, d).mean(0)
    return per_sample, _binary_entropy(marginal).sum()


def commitment(n: jax.Array, codes: jax.Array) -> jax.Array:
    """mean((n - sg(codes))^2): n (..., d) normalised inputs, codes the same shape (on the sphere)."""
    return jnp.mean(jnp.square(n.astype(jnp.float32) - sg(codes)))


def quantize_for_training(z: jax.Array, schedule, options: TokenizerLossOptions = TokenizerLossOptions()):
    """z: (B, h, w, d) raw latent -> (z_q (B, h, w, d), bits per scale, terms, parts).

    z_q has the value of bsq.multiscale_quantize(z).z_hat and the per-scale straight-through
    gradient (module docstring); parts[k] (B, h, w, d) is scale k's share of it, with the same
    straight-through gradient (z_q = sum(parts) up to rounding). terms: {'quant_loss', 'commit',
    'entropy_sample', 'entropy_codebook'} (scalars, means over scales; quant_loss already weighted).
    """
    o = options
    tokens = bsq.multiscale_quantize(z, schedule)
    hw = tuple(z.shape[1:3])
    st, commits, h_sample, h_book, parts = 0.0, [], [], [], []
    for bits, r in zip(tokens.bits, tokens.quant_inputs):
        n = l2_normalize(r)
        codes = bsq.bits_to_codes(bits)
        up = n if tuple(n.shape[1:3]) == hw else bsq.bilinear_resize(n, hw)
        st = st + up
        parts.append(sg(bsq.bilinear_resize(codes, hw) - up) + up)
        commits.append(commitment(n, codes))
        hs, hb = soft_entropies(n, o.inv_temperature)
        h_sample.append(hs)
        h_book.append(hb)
    commit, hs, hb = (jnp.mean(jnp.stack(v)) for v in (commits, h_sample, h_book))
    z_q = sg(tokens.z_hat) + st - sg(st)
    aux = o.commit_weight * commit + o.entropy_weight * o.zeta * (o.gamma0 * hs - o.gamma * hb) / o.inv_temperature
    terms = {"quant_loss": o.quantizer_weight * aux, "commit": commit, "entropy_sample": hs, "entropy_codebook": hb}
    return z_q, tokens.bits, terms, parts


# ----------------------------------------------------------------------------- discriminator


class PatchDiscriminator(nn.Module):
    """PatchGAN: image (B, H, W, 3) in [-1, 1] -> logits (B, H', W', 1), one per overlapping patch.

    4x4 convs: `layers` stride-2 convs widening to channels * min(2**i, 8) (GroupNorm after the
    first), one more stride-1 conv, then a 1-channel stride-1 conv; leaky ReLU 0.2. GroupNorm
    instead of BatchNorm keeps it a pure function of params (no batch statistics to carry).
    """

    channels: int = 64
    layers: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        def conv(features, stride, name):
            return nn.Conv(
                features,
                (4, 4),
                strides=stride,
                padding=((1, 1), (1, 1)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), vae_lib._CONV_AXES),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                name=name,
            )

        h = nn.leaky_relu(conv(self.channels, 2, "conv_0")(x.astype(self.dtype)), 0.2)
        for i in range(1, self.layers + 1):
            h = conv(self.channels * min(2**i, 8), 2 if i < self.layers else 1, f"conv_{i}")(h)
            h = nn.leaky_relu(vae_lib.GroupNorm(name=f"norm_{i}")(h), 0.2)
        return conv(1, 1, "conv_out")(h).astype(jnp.float32)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator hinge loss: mean relu(1 - D(real)) + mean relu(1 + D(fake)), halved."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def make_discriminator(options: TokenizerLossOptions) -> PatchDiscriminator | None:
    if options.gan_weight <= 0:
        return None
    return PatchDiscriminator(channels=options.disc_channels, layers=options.disc_layers)


# ----------------------------------------------------------------------------- the loss


def psnr(mse: jax.Array) -> jax.Array:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) from their mean squared error."""
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def _decode_unclamped(module, latent):
    return module.decoder(latent).astype(jnp.float32)


def init_params(
    vae: vae_lib.BSQVAE,
    rng: jax.Array,
    options: TokenizerLossOptions = TokenizerLossOptions(),
    image_hw: tuple[int, int] = (64, 64),
):
    """Boxed params {'vae': ..., ['disc': ...]} (logical axis names on every leaf)."""
    k_vae, k_disc = jax.random.split(rng)
    params = {"vae": vae_lib.init_params(vae, k_vae)}
    disc = make_discriminator(options)
    if disc is not None:
        params["disc"] = disc.init(k_disc, jnp.zeros((1, *image_hw, vae.in_channels), jnp.float32))["params"]
    return params


def load_frozen(options: TokenizerLossOptions) -> dict | None:
    """The loss's non-trained inputs, read once at setup: {'lpips': params} (numpy) when
    perceptual_weight > 0, else None. Pass them as run_training(frozen=...)."""
    if options.perceptual_weight <= 0:
        return None
    return {"lpips": lpips_convert.load(options.lpips_weights)}


def make_loss_fn(vae: vae_lib.BSQVAE, schedule, options: TokenizerLossOptions = TokenizerLossOptions()):
    """loss_fn(params, batch, rng, frozen=None) -> (loss, metrics) for the loop (module docstring).

    vae: the BSQVAE module; schedule: the quantizer's (static) scale schedule, last scale = latent.
    frozen: load_frozen(options) (needed when perceptual_weight > 0).
    metrics (scalars): recon_l1, recon_mse, psnr (clamped output), quant_loss, commit, prefix_recon
    (with prefix_weight),
    entropy_sample, entropy_codebook, bit_balance (mean over bits of |P(bit=1) - 1/2|), with
    LPIPS lpips (mean over images), and with a GAN g_loss, d_loss, d_real, d_fake, gan_on.
    """
    options = options.checked()
    schedule = schedules.validate(schedule)
    if options.prefix_weight > 0 and len(schedule) < 2:
        raise ValueError(
            f"loss.prefix_weight={options.prefix_weight} needs a schedule of at least 2 scales; got {len(schedule)}"
        )
    disc = make_discriminator(options)
    perceptual = lpips_lib.LPIPS(dtype=vae.dtype) if options.perceptual_weight > 0 else None
    o = options

    def loss_fn(params, batch, rng, frozen=None):
        if perceptual is not None and (not frozen or "lpips" not in frozen):
            raise ValueError(
                f"loss.perceptual_weight={o.perceptual_weight}: loss_fn needs frozen['lpips'] "
                f"(load_frozen(options) reads {o.lpips_weights!r}); got frozen keys "
                f"{sorted(frozen or {})}"
            )
        x = to_float(batch["image"])
        v = {"params": params["vae"]}
        z = vae.apply(v, x, method="encode")
        z_q, bits, terms, parts = quantize_for_training(z, schedule, o)
        recon = vae.apply(v, z_q, method=_decode_unclamped)
        err = recon - x
        l1, mse = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
        loss = o.recon_weight * (l1 if o.recon == "l1" else mse) + terms["quant_loss"]
        if o.prefix_weight > 0:  # the first `keep` scales alone must already draw the image
            keep = jax.random.randint(rng, (x.shape[0], 1, 1, 1), 1, len(parts))
            z_p = sum(jnp.where(k < keep, p, 0.0) for k, p in enumerate(parts))
            err_p = vae.apply(v, z_p, method=_decode_unclamped) - x
            prefix = jnp.mean(jnp.abs(err_p)) if o.recon == "l1" else jnp.mean(jnp.square(err_p))
            loss = loss + o.prefix_weight * prefix
            terms = {**terms, "prefix_recon": prefix}
        last_bits = bits[-1].astype(jnp.float32)
        metrics = {
            "recon_l1": l1,
            "recon_mse": mse,
            "psnr": psnr(jnp.mean(jnp.square(jnp.clip(recon, -1.0, 1.0) - x))),
            "bit_balance": jnp.mean(jnp.abs(last_bits.reshape(-1, last_bits.shape[-1]).mean(0) - 0.5)),
            **terms,
        }
        if perceptual is not None:
            d = jnp.mean(perceptual.apply({"params": sg(frozen["lpips"])}, recon, x))
            loss = loss + o.perceptual_weight * d
            metrics["lpips"] = d
        if disc is not None:
            on = (batch["step"][0] >= o.disc_start).astype(jnp.float32) if "step" in batch else jnp.float32(1.0)
            d_fixed = {"params": sg(params["disc"])}
            g_loss = -jnp.mean(disc.apply(d_fixed, recon))
            d_train = {"params": params["disc"]}
            logits_real = disc.apply(d_train, x)
            logits_fake = disc.apply(d_train, sg(recon))
            d_loss = hinge_d_loss(logits_real, logits_fake)
            loss = loss + on * (o.gan_weight * g_loss + d_loss)
            metrics.update(
                g_loss=g_loss, d_loss=d_loss, d_real=jnp.mean(logits_real), d_fake=jnp.mean(logits_fake), gan_on=on
            )
        return loss, metrics

    return loss_fn


def reconstruct(vae: vae_lib.BSQVAE, vae_params, images: jax.Array, schedule) -> jax.Array:
    """The inference path: images (B, H, W, 3) uint8 or [-1, 1] -> bits -> decoded (B, H, W, 3) in [-1, 1]."""
    x = to_float(images)
    bits = vae.apply({"params": vae_params}, x, schedule, method="tokenize")
    return vae.apply({"params": vae_params}, bits, schedule, method="decode_bits")


class StepCounter:
    """Wraps a data iterator: adds 'step' (B,) int32 (the optimizer step each batch feeds) and keeps
    only `keys`; get_state/set_state carry the inner iterator's state and the count."""

    def __init__(self, iterator, keys=("image",), start: int = 0):
        self._it, self._keys, self.step = iterator, tuple(keys), int(start)

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self._it)
        out = {k: np.asarray(b[k]) for k in self._keys}
        n = len(next(iter(out.values())))
        out["step"] = np.full((n,), self.step, np.int32)
        self.step += 1
        return out

    def get_state(self):
        return {"inner": self._it.get_state(), "step": self.step}

    def set_state(self, state):
        self._it.set_state(state["inner"])
        self.step = int(state["step"])
