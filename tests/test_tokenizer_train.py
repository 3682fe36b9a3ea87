"""BSQ-VAE training (`infinity-jax train-tokenizer`): the quantizer's training terms on hand-made
inputs, the straight-through gradient, a short CPU run that learns and resumes, the saved
params loading into the transformer's trainer, and the optional losses' switches."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

from infinity_jax import config_util, parallel, runs, schedules
from infinity_jax.tokenizer import bsq
from infinity_jax.tokenizer import vae as vae_lib
from infinity_jax.train import tokenizer_step as ts
from tests import train_helpers

compile_cache = train_helpers.compile_cache  # fixture: the resumed run reuses the compiled step

D = 4
ALL_CODES = np.array([[1.0 if (i >> b) & 1 else -1.0 for b in range(D)] for i in range(2**D)], np.float32)


def small_vae():
    return vae_lib.BSQVAE(base_ch=32, ch_mult=(1, 1), num_res_blocks=0, z_channels=8, codebook_dim=8, patch_size=2)


def quick_params(vae, options=ts.TokenizerLossOptions(), image_hw=(16, 16)):
    """Random params of the right shapes without compiling an init: kernels ~ N(0, 1/fan_in),
    norm scales 1, biases 0 (compiling flax's init costs seconds on this CPU)."""
    abstract = jax.eval_shape(lambda k: nn.unbox(ts.init_params(vae, k, options, image_hw)), jax.random.key(0))
    rng = np.random.default_rng(0)

    def fill(path, a):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1])), jnp.float32)
        return jnp.ones(a.shape) if name == "scale" else jnp.zeros(a.shape)

    return jax.tree_util.tree_map_with_path(fill, abstract)


# ----------------------------------------------------------------------------- loss terms


def test_codebook_entropy_is_d_ln2_for_uniform_codes_and_zero_when_collapsed():
    uniform = ALL_CODES / math.sqrt(D)  # every code once, on the sphere
    per_sample, book = ts.soft_entropies(jnp.asarray(uniform))
    assert float(book) == pytest.approx(D * math.log(2), abs=1e-5)
    assert float(per_sample) < 1e-6  # |n_i| = 1/sqrt(d): sigmoid(+-100) -> confident bits
    collapsed = np.repeat(uniform[3:4], 16, axis=0)
    per_sample, book = ts.soft_entropies(jnp.asarray(collapsed))
    assert float(book) < 1e-4 and float(per_sample) < 1e-6
    # undecided inputs (n = 0) are maximally uncertain per sample
    per_sample, book = ts.soft_entropies(jnp.zeros((5, D)))
    assert float(per_sample) == pytest.approx(D * math.log(2), abs=1e-6)
    # a soft input: p = sigmoid(4 * T * n / sqrt(d)) by hand
    n = np.array([[0.01, -0.02, 0.0, 0.005]], np.float32)
    p = 1 / (1 + np.exp(-4 * 100 * n / math.sqrt(D)))
    want = float(np.sum(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    per_sample, book = ts.soft_entropies(jnp.asarray(n))
    assert float(per_sample) == pytest.approx(want, rel=1e-5) and float(book) == pytest.approx(want, rel=1e-4)


def test_commitment_is_zero_on_the_codebook_and_matches_hand_values_off_it():
    sched = ((1, 2, 2),)  # one scale: the quantizer sees z itself
    rng = np.random.default_rng(0)
    on_book = ALL_CODES[rng.integers(0, 16, (2, 2, 2))] * 3.7  # any positive scale of a codeword
    _, _, terms, _ = ts.quantize_for_training(jnp.asarray(on_book), sched)
    assert float(terms["commit"]) < 1e-12
    z = rng.normal(size=(2, 2, 2, D)).astype(np.float32)
    n = z / np.linalg.norm(z, axis=-1, keepdims=True)
    want = np.mean((n - np.sign(n) / math.sqrt(D)) ** 2)
    _, _, terms, _ = ts.quantize_for_training(jnp.asarray(z), sched)
    assert float(terms["commit"]) == pytest.approx(want, rel=1e-5)
    o = ts.TokenizerLossOptions()
    hs, hb = ts.soft_entropies(jnp.asarray(n))
    aux = o.commit_weight * want + o.entropy_weight * (float(hs) - float(hb)) / o.inv_temperature
    assert float(terms["quant_loss"]) == pytest.approx(aux, rel=1e-4)


def test_straight_through_value_is_bsq_z_hat_and_gradient_goes_through_each_scale():
    sched = ((1, 1, 1), (1, 2, 2), (1, 4, 4))
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    z_q, bits, _, _ = ts.quantize_for_training(z, sched)
    ref = bsq.multiscale_quantize(z, sched)
    np.testing.assert_allclose(np.asarray(z_q), np.asarray(ref.z_hat), atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(bits, ref.bits))
    # one scale: d(sum w * z_q)/dz is the Jacobian of the l2 normalisation applied to w
    w = jax.random.normal(jax.random.key(1), z.shape)
    g = jax.jit(jax.grad(lambda z: jnp.sum(w * ts.quantize_for_training(z, ((1, 4, 4),))[0])))(z)
    _, vjp = jax.vjp(ts.l2_normalize, z)
    np.testing.assert_allclose(np.asarray(g), np.asarray(vjp(w)[0]), rtol=1e-5, atol=1e-6)
    # several scales: every scale adds its own path (earlier codes are constants)
    g3 = jax.jit(jax.grad(lambda z: jnp.sum(w * ts.quantize_for_training(z, sched)[0])))(z)
    assert np.all(np.isfinite(np.asarray(g3)))
    assert float(jnp.abs(g3 - g).max()) > 1e-3


# ----------------------------------------------------------------------------- optional losses


def test_prefix_loss_decodes_the_codes_of_the_first_scales_drawn_per_image():
    vae = small_vae()
    sched = schedules.custom_schedule((16, 16), stride=2)  # 1, 2, 4, 8
    plain, with_prefix = ts.TokenizerLossOptions(recon="l2"), ts.TokenizerLossOptions(recon="l2", prefix_weight=0.5)
    params = quick_params(vae, plain)
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3), minval=-1, maxval=1)
    rng = jax.random.key(7)
    loss0, _ = jax.jit(ts.make_loss_fn(vae, sched, plain))(params, {"image": x}, rng)
    loss1, m = jax.jit(ts.make_loss_fn(vae, sched, with_prefix))(params, {"image": x}, rng)
    keep = np.asarray(jax.random.randint(rng, (3, 1, 1, 1), 1, len(sched))).ravel()
    assert set(keep) <= {1, 2, 3}
    z = vae.apply({"params": params["vae"]}, x, method="encode")
    bits = bsq.multiscale_quantize(z, sched).bits
    prefix_recons = []  # image i decoded from its first keep_i scales' codes (bsq's accumulation)
    for i, k in enumerate(keep):
        acc = jnp.zeros_like(z[i : i + 1])
        for b in bits[:k]:
            acc = bsq.accumulate_codes(acc, b[i : i + 1])
        prefix_recons.append(vae.apply({"params": params["vae"]}, acc, method=ts._decode_unclamped))
    want = [float(jnp.mean(jnp.square(r - x[i : i + 1]))) for i, r in enumerate(prefix_recons)]
    assert float(m["prefix_recon"]) == pytest.approx(np.mean(want), rel=1e-4)
    assert float(loss1) == pytest.approx(float(loss0) + 0.5 * np.mean(want), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2 scales"):
        ts.make_loss_fn(vae, ((1, 8, 8),), with_prefix)


def test_shapes_tokenizer_channel_multipliers_default_and_argument():
    assert tuple(config_util.load_config("tokenizer_shapes").vae.ch_mult) == (1, 1, 2)
    assert tuple(config_util.load_config("tokenizer_shapes:mult=122").vae.ch_mult) == (1, 2, 2)
    assert tuple(config_util.load_config("tokenizer_shapes:stride=8,mult=1124").vae.ch_mult) == (1, 1, 2, 4)
    for bad in ("mult=12", "mult=1x2", "mult=102"):
        with pytest.raises(config_util.ConfigError, match=f"{bad}: expected 3 digits 1-9"):
            config_util.load_config(f"tokenizer_shapes:{bad}")


def test_perceptual_and_adversarial_losses_are_off_by_default_and_lpips_needs_weights():
    o = ts.TokenizerLossOptions()
    assert o.perceptual_weight == 0 and o.gan_weight == 0
    cfg = config_util.load_config("tokenizer_shapes:tiny")
    assert cfg.loss.perceptual_weight == 0 and cfg.loss.gan_weight == 0
    with pytest.raises(ValueError, match="lpips_weights"):
        ts.TokenizerLossOptions.from_config({"perceptual_weight": 1.0})
    with pytest.raises(ValueError, match="VGG16_FILE,LIN_FILE"):  # one file must be our .npz (tests/test_lpips.py)
        ts.TokenizerLossOptions.from_config({"perceptual_weight": 1.0, "lpips_weights": "vgg16.pth"})
    with pytest.raises(ValueError, match="unknown"):
        ts.TokenizerLossOptions.from_config({"lpips": 1.0})


@pytest.fixture(scope="module")
def gan_grads():
    """Loss, metrics and grads of a small VAE + PatchGAN, before (step 9) and at disc_start (step 10):
    one compiled program for both (the switch is the batch's 'step')."""
    vae = small_vae()
    sched = schedules.custom_schedule((16, 16), stride=2)
    o = ts.TokenizerLossOptions(gan_weight=0.5, disc_start=10, disc_channels=16, disc_layers=2)
    params = quick_params(vae, o)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    grad = jax.jit(jax.value_and_grad(ts.make_loss_fn(vae, sched, o), has_aux=True))
    return [grad(params, {"image": x, "step": np.full((2,), s, np.int32)}, None) for s in (9, 10)]


def test_encoder_receives_gradients_through_the_quantizer(gan_grads):
    (loss, m), g = gan_grads[0]  # GAN still off: the plain loss
    assert float(loss) == pytest.approx(4.0 * float(m["recon_l1"]) + float(m["quant_loss"]), rel=1e-5)
    enc = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g["vae"]["encoder"])])
    assert np.all(np.isfinite(enc)) and np.linalg.norm(enc) > 1e-3
    assert float(jnp.abs(g["vae"]["encoder"]["conv_in"]["conv"]["kernel"]).max()) > 0
    assert {"recon_l1", "recon_mse", "psnr", "commit", "entropy_sample", "entropy_codebook", "quant_loss"} <= set(m)


def test_gan_trains_the_discriminator_from_disc_start_on(gan_grads):
    ((before, m0), g0), ((after, m1), g1) = gan_grads
    assert float(m0["gan_on"]) == 0 and float(m1["gan_on"]) == 1
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g0["disc"]))
    assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g1["disc"])) > 0
    assert float(after) == pytest.approx(float(before) + 0.5 * float(m1["g_loss"]) + float(m1["d_loss"]), rel=1e-5)
    # the generator term reaches the decoder and the encoder
    diff = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1["vae"]), jax.tree.leaves(g0["vae"]))]
    assert max(diff) > 0


def test_step_counter_adds_the_step_and_resumes_it():
    class It:
        def __init__(self):
            self.i = 0

        def __next__(self):
            self.i += 1
            return {"image": np.zeros((2, 4, 4, 3), np.uint8), "caption": np.array(["a", "b"])}

        def get_state(self):
            return {"i": self.i}

        def set_state(self, s):
            self.i = s["i"]

    c = ts.StepCounter(It())
    next(c), next(c)
    state = c.get_state()
    b = next(c)
    assert set(b) == {"image", "step"} and b["step"].tolist() == [2, 2]
    c2 = ts.StepCounter(It())
    c2.set_state(json.loads(json.dumps(state)))
    assert next(c2)["step"].tolist() == [2, 2]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory, compile_cache):
    """The tiny config on a 48-image shapes set: 15 steps, stop, then resume to 30 (one process)."""
    from infinity_jax.data import sources
    from infinity_jax.eval import shapes as shapes_eval
    from infinity_jax.train import tokenizer_trainer

    data = sources.prepare(
        "shapes", str(tmp_path_factory.mktemp("shapes")), num_examples=48, image_size=32, seed=3, progress=False
    )
    workdir = tmp_path_factory.mktemp("tok")
    cfg = config_util.load_config(
        "configs/tokenizer_shapes.py:tiny,stride=16", [f"data.path={data!r}", "eval.num_images=16"]
    )
    assert cfg.schedule == "1x1,2x2" and cfg.data.image_size == 32
    mesh = parallel.make_mesh(-1, 1, 1, devices=jax.devices()[:2])  # data parallel over 2 devices
    first = tokenizer_trainer.run(cfg, str(workdir), until_step=15, mesh=mesh, score_images=shapes_eval.evaluate)
    second = tokenizer_trainer.run(cfg, str(workdir), mesh=mesh, score_images=shapes_eval.evaluate)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return cfg, workdir, first, second, [r for r in rows if "recon_l1" in r]


@pytest.mark.slow  # shares a ~36 s training run: keeps the suite inside its 10 minutes; CI runs it with -m slow
def test_short_cpu_run_reduces_reconstruction_loss_and_resumes(tokenizer_run):
    _, workdir, first, second, rows = tokenizer_run
    assert first["stopped"] == "until_step" and first["step"] == 15 and "recon" not in first
    assert second["start_step"] == 15 and second["step"] == 30 and second["stopped"] == "done"
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["recon_l1"] < 0.5 * rows[0]["recon_l1"], [r["recon_l1"] for r in rows]
    assert rows[-1]["psnr"] > rows[0]["psnr"] + 3.0
    # held-out reconstructions through tokenize -> decode_bits
    r = second["recon"]
    assert r["images"] == 16 and r["psnr"] == pytest.approx(10 * math.log10(4 / r["mse"]))
    assert r["psnr"] > 12.0
    assert second["shapes_eval"]["originals"]["overall"] == 1.0
    assert json.load(open(workdir / "final.json"))["recon"] == r
    assert Image.open(workdir / "reconstructions.png").size[0] == 8 * (32 * 2 + 6)  # 8 tiles a row


@pytest.mark.slow  # shares a ~36 s training run: keeps the suite inside its 10 minutes; CI runs it with -m slow
def test_saved_vae_loads_into_the_transformer_trainer(tokenizer_run):
    cfg, workdir, _, second, _ = tokenizer_run
    tcfg = config_util.load_config(
        "shapes:tiny",
        [f"vae.config={str(workdir / 'vae_config.json')!r}", f"vae.params={str(workdir / 'vae_params.npz')!r}"],
    )
    vae, vcfg, params = runs.build_vae(tcfg)
    assert (vae.patch_size, vae.codebook_dim, vae.base_ch) == (16, 8, 24)
    want = jax.tree.map(lambda a: a.shape, nn.unbox(vae_lib.abstract_params(vae)))
    assert jax.tree.map(np.shape, params) == want
    assert second["vae_params"] == str(workdir / "vae_params.npz")
