"""The bitwise multi-scale quantizer against the official implementation's fixtures, and its properties.

Parity follows the protocol of the reference README: quantizer inputs atol 1e-5 and bits exact
wherever the reference margin |x|/||x|| >= 1e-5 (stop at the first scale with a legitimate
near-tie flip), z from the reference bits atol 1e-5, teacher-forcing / self-correction / sampler
inputs atol 1e-5 with labels exact. Measured: every error <= 3.6e-7, every bit equal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax import schedules as S
from infinity_jax.tokenizer import bsq
from tests.conftest import load_fixture

ATOL = 1e-5
NEAR_TIE = 1e-5
# the parity fixtures; tiny-patchify is the official apply_spatial_patchify=1 path (the 8B's): the quantizer
# runs on the doubled grid, inputs and labels are pixel_unshuffled to 4d bits per transformer token
PARITY_FIXTURES = ("tiny", "tiny-wide", "tiny-patchify")


def _schedule(ref) -> tuple:
    return tuple(tuple(int(v) for v in s) for s in ref["meta/schedule"])


def _patchify(ref) -> int:
    return int(ref.get("meta/patchify", 0))


@pytest.fixture(scope="session", params=PARITY_FIXTURES)
def parity_ref(request):
    return load_fixture(request.param)


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _ref_bits(ref, prefix: str) -> list[np.ndarray]:
    """Per-scale (B, h_k, w_k, d) arrays from the fixture's (B, 1, h_k, w_k, d) ones."""
    return [ref[f"{prefix}_{k}"][:, 0] for k in range(len(_schedule(ref)))]


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)))) if np.size(b) else 0.0


@pytest.fixture(scope="session")
def encoded(parity_ref):
    """Our multi-scale quantization of the reference encoder latent (once per fixture)."""
    ref = parity_ref
    return bsq.multiscale_quantize(jnp.asarray(_nhwc(ref["vae/out/h"])), _schedule(ref), _patchify(ref))


def _smooth_latent(seed: int, batch: int, hw, d: int, std: float) -> jax.Array:
    """A random latent with structure at every scale (white noise has none for coarse scales to catch):

    random cosines of every frequency on the grid, amplitude ~ (1 + |f|)^-1.5, scaled to `std`.
    """
    rng = np.random.default_rng(seed)
    h, w = int(hw[0]), int(hw[1])
    fi, fj = np.meshgrid(np.arange(h // 2 + 1), np.arange(w // 2 + 1), indexing="ij")
    fi, fj = fi.ravel(), fj.ravel()
    amp = rng.standard_normal((batch, fi.size, d)) / (1.0 + fi + fj)[None, :, None] ** 1.5
    phase = rng.uniform(0, 2 * np.pi, (batch, fi.size, d))
    arg = (
        2
        * np.pi
        * (fi[:, None, None] * np.arange(h)[None, :, None] / h + fj[:, None, None] * np.arange(w)[None, None, :] / w)
    )  # (F, h, w)
    z = np.einsum("bfd,fhwbd->bhwd", amp, np.cos(arg[..., None, None] + phase.transpose(1, 0, 2)[:, None, None]))
    return jnp.asarray(std * z / z.std(), jnp.float32)


# ----------------------------------------------------------------------------- parity with the fixtures


def test_quantizer_reproduces_reference_inputs_and_bits(parity_ref, encoded):
    reference = parity_ref
    sched = _schedule(reference)
    compared = 0
    for k in range(len(sched)):
        ref_in = _nhwc(reference[f"vae/out/quant_input_{k}"])
        ref_bits = reference[f"vae/out/bits_{k}"][:, 0]
        assert _max_err(encoded.quant_inputs[k], ref_in) < ATOL, f"scale {k}"
        ours = np.asarray(encoded.bits[k])
        assert ours.dtype == np.uint8 and ours.shape == ref_bits.shape
        differ = ours != ref_bits
        margin = np.asarray(bsq.bit_margins(jnp.asarray(ref_in)))
        assert not np.any(differ & (margin >= NEAR_TIE)), f"scale {k}: a bit with a clear margin differs"
        compared += 1
        if differ.any():  # a legitimate near-tie flip: later residuals diverge, stop here
            break
    assert compared >= 1


def test_latent_from_reference_bits_matches_reference_z(parity_ref, encoded):
    reference = parity_ref
    sched, p = _schedule(reference), _patchify(reference)
    z = bsq.bits_to_latent([jnp.asarray(b) for b in _ref_bits(reference, "vae/out/bits")], sched, p)
    assert z.dtype == jnp.float32
    assert _max_err(z, _nhwc(reference["vae/out/z"])) < ATOL
    assert _max_err(encoded.z_hat, _nhwc(reference["vae/out/z"])) < ATOL


def test_teacher_forcing_inputs_and_labels_match_official_trainer(parity_ref):
    reference = parity_ref
    sched, p = _schedule(reference), _patchify(reference)
    bits = [jnp.asarray(b) for b in _ref_bits(reference, "vae/out/bits")]
    x = bsq.teacher_forcing_inputs(bits, sched, p)
    assert x.shape == reference["tf/x_wo_prefix"].shape
    assert _max_err(x, reference["tf/x_wo_prefix"]) < ATOL
    np.testing.assert_array_equal(np.asarray(bsq.flatten_tokens(bits, p)), reference["tf/labels"])
    # the same through self-correction with no flips, straight from the latent
    x2, labels2 = bsq.self_correction_with_flips(jnp.asarray(_nhwc(reference["vae/out/h"])), sched, [], patchify=p)
    assert _max_err(x2, reference["tf/x_wo_prefix"]) < ATOL
    np.testing.assert_array_equal(np.asarray(labels2), reference["tf/labels"])


def test_self_correction_with_recorded_flips_matches_reference(parity_ref):
    reference = parity_ref
    sched, p = _schedule(reference), _patchify(reference)
    masks = [jnp.asarray(m) for m in _ref_bits(reference, "bsc/flip_mask")]
    x, labels = bsq.self_correction_with_flips(jnp.asarray(_nhwc(reference["vae/out/h"])), sched, masks, patchify=p)
    assert _max_err(x, reference["bsc/x_wo_prefix"]) < ATOL
    np.testing.assert_array_equal(np.asarray(labels), reference["bsc/labels"])
    # the flips matter: the corrupted inputs are far from the clean ones
    assert _max_err(x, reference["tf/x_wo_prefix"]) > 0.1


def test_sampler_inputs_from_sampled_bits_match_reference(parity_ref):
    """The sampler's step (accumulate_codes, next_scale_input) rebuilds sample/x_wo_prefix; under patchify
    the sampled transformer rows are pixel-shuffled onto the VAE grid (sample/bits_k)."""
    reference = parity_ref
    sched, p = _schedule(reference), _patchify(reference)
    hws = bsq.scale_hws(sched)
    vae_hw = bsq.scale_hws(bsq.vae_schedule(sched, p))[-1]
    bits = bsq.split_tokens(jnp.asarray(reference["sample/bits"]), sched, p)
    for b, ref_b in zip(bits, _ref_bits(reference, "sample/bits")):
        np.testing.assert_array_equal(np.asarray(b), ref_b)
    np.testing.assert_array_equal(np.asarray(bsq.flatten_tokens(bits, p)), reference["sample/bits"])
    acc = jnp.zeros((bits[0].shape[0], *vae_hw, bits[0].shape[-1]), jnp.float32)
    xs = []
    for k in range(len(hws) - 1):
        acc = bsq.accumulate_codes(acc, bits[k])
        xs.append(bsq.next_scale_input(acc, hws[k + 1], p))
    x = jnp.concatenate(xs, axis=1)
    assert _max_err(x, reference["sample/x_wo_prefix"]) < ATOL
    np.testing.assert_array_equal(np.asarray(x), np.asarray(bsq.teacher_forcing_inputs(bits, sched, p)))


def test_pixel_unshuffle_is_torch_order_and_shuffle_inverts_it():
    """Channel 4c + 2i + j of the unshuffled map is channel c at offset (i, j) of each 2x2 block."""
    x = np.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
    y = np.asarray(bsq.pixel_unshuffle(jnp.asarray(x)))
    assert y.shape == (2, 2, 3, 12)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(y[..., 4 * c + 2 * i + j], x[:, i::2, j::2, c])
    np.testing.assert_array_equal(np.asarray(bsq.pixel_shuffle(jnp.asarray(y))), x)
    assert bsq.vae_schedule(((1, 1, 2), (1, 3, 6)), 1) == ((1, 2, 4), (1, 6, 12))
    with pytest.raises(ValueError, match="even"):
        bsq.pixel_unshuffle(jnp.zeros((1, 3, 4, 2)))


# ----------------------------------------------------------------------------- resizing as PyTorch does it

_RESIZES = [
    ((16, 16), (6, 6)),
    ((16, 16), (12, 12)),
    ((11, 22), (5, 10)),
    ((11, 22), (3, 6)),
    ((16, 16), (1, 1)),
    ((2, 4), (11, 22)),
    ((3, 3), (16, 16)),
    ((12, 12), (16, 16)),
    ((5, 7), (5, 3)),
]


@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_resize_matches_torch_interpolate(mode):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ours = bsq.area_resize if mode == "area" else bsq.bilinear_resize
    rng = np.random.default_rng(0)
    for (h, w), (H, W) in _RESIZES:
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        got = np.asarray(ours(jnp.asarray(_nhwc(x)), (H, W)))
        assert got.shape == (2, H, W, 3)
        t = torch.from_numpy(x)
        if mode == "area":
            want2d = F.interpolate(t, size=(H, W), mode="area")
            want3d = F.interpolate(t[:, :, None], size=(1, H, W), mode="area")[:, :, 0]
        else:  # the official code calls trilinear on a (1, h, w) volume
            want2d = F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)
            want3d = F.interpolate(t[:, :, None], size=(1, H, W), mode="trilinear", align_corners=False)[:, :, 0]
        for want in (want2d, want3d):
            assert _max_err(got, _nhwc(want.numpy())) < 1e-6, f"{mode} {(h, w)} -> {(H, W)}"


def test_resize_to_same_size_is_exact_identity():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    np.testing.assert_array_equal(np.asarray(bsq.area_resize(x, (5, 7))), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(bsq.bilinear_resize(x, (5, 7))), np.asarray(x))


# ----------------------------------------------------------------------------- properties


def test_quantize_scale_is_sign_in_float32_and_codes_are_unit_vectors():
    x = jax.random.normal(jax.random.key(1), (2, 3, 4, 16)).astype(jnp.bfloat16)
    bits = bsq.quantize_scale(x)
    assert bits.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(bits), (np.asarray(x.astype(jnp.float32)) > 0).astype(np.uint8))
    codes = np.asarray(bsq.bits_to_codes(bits))
    assert codes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(codes, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.abs(codes), np.float32(0.25))  # 1/sqrt(16)


# Property tests reuse the fixtures' shapes (B=2; 1:1 with d=32, 1:2 with d=16) so eager ops are compiled once.
SQUARE, WIDE = S.official_schedule(1.0, "0.06M"), S.official_schedule(0.5, "0.06M")


def test_reconstruction_error_decreases_with_every_scale(reference):
    """Each scale lowers the error while residuals exceed the code step 1/sqrt(d), as realistic latents do.

    (A latent of std well below the step, e.g. 0.3 at d=16, can rise again: fixed-size codes overshoot.)
    """
    sched = _schedule(reference)
    hw, d = tuple(sched[-1][1:]), int(reference["vae/out/h"].shape[1])
    latents = [jnp.asarray(_nhwc(reference["vae/out/h"])), _smooth_latent(0, 2, hw, d, 1.0)]
    for z in latents:
        bits = bsq.multiscale_quantize(z, sched).bits
        errs = [float(jnp.mean((bsq.bits_to_latent(bits[:k], sched) - z) ** 2)) for k in range(1, len(sched) + 1)]
        assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_zero_strength_self_correction_equals_teacher_forcing():
    z = _smooth_latent(2, 2, WIDE[-1][1:], 16, 1.0)
    tokens = bsq.multiscale_quantize(z, WIDE)
    x_tf, labels_tf = bsq.teacher_forcing_inputs(tokens.bits, WIDE), bsq.flatten_scales(tokens.bits)
    x, labels, masks = bsq.self_correction(z, WIDE, jax.random.key(3), strength=0.0)
    assert sum(int(m.sum()) for m in masks) == 0
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x_tf))
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(labels_tf))
    # the official trainer ignores flips without re-quantization
    x, labels, masks = bsq.self_correction(z, WIDE, jax.random.key(3), strength=0.3, requant=False)
    assert sum(int(m.sum()) for m in masks) > 0
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x_tf))
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(labels_tf))


def test_later_labels_correct_earlier_flips():
    """After flipping scale-2 bits, the re-quantized labels of later scales reconstruct better than clean ones."""
    z = _smooth_latent(4, 2, SQUARE[-1][1:], 32, 1.0)
    clean = bsq.multiscale_quantize(z, SQUARE).bits
    flip = (jax.random.uniform(jax.random.key(5), clean[1].shape) < 0.3).astype(jnp.uint8)
    _, labels = bsq.self_correction_with_flips(z, SQUARE, [None, flip])
    relabelled = bsq.split_scales(labels, SQUARE)
    np.testing.assert_array_equal(np.asarray(relabelled[1]), np.asarray(clean[1]))  # labels stay unflipped
    err = lambda bits: float(jnp.mean((bsq.bits_to_latent(bits, SQUARE) - z) ** 2))
    corrected = err([relabelled[0], relabelled[1] ^ flip, *relabelled[2:]])
    uncorrected = err([clean[0], clean[1] ^ flip, *clean[2:]])
    assert corrected < 0.9 * uncorrected, (corrected, uncorrected)


def test_flip_rate_matches_drawn_strength():
    hws = bsq.scale_hws(SQUARE)
    batch, d, layers = 2, 32, 5
    masks, strengths = bsq.draw_flip_masks(jax.random.key(6), hws, batch, d, strength=0.3, num_layers=layers)
    strengths = np.asarray(strengths)
    assert strengths[:layers].max() > 0
    for k, (m, s) in enumerate(zip(masks, strengths)):
        assert m.shape == (batch, *hws[k], d) and m.dtype == jnp.uint8
        rate = float(np.asarray(m).mean())
        if k >= layers:
            assert s == 0 and rate == 0
        else:  # binomial, 5 sigma
            assert abs(rate - s) <= 5 * np.sqrt(max(s * (1 - s), 1e-4) / m.size) + 1e-6, (k, rate, s)
    # self_correction uses exactly the flips the draw gives for the same key
    z = _smooth_latent(7, batch, hws[-1], d, 1.0)
    _, _, used = bsq.self_correction(z, SQUARE, jax.random.key(6), strength=0.3, num_layers=layers)
    for a, b in zip(used, masks):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_flip_strengths_follow_official_distribution():
    """Official draw: randint(0, 100*p + 1) * 0.01 per scale, i.e. uniform on {0, 0.01, ..., 0.30} for p=0.3."""

    def strengths(keys, strength):
        draw = lambda key: bsq.draw_flip_masks(key, ((1, 1), (2, 2)), 1, 1, strength=strength)[1]
        return np.asarray(jax.jit(jax.vmap(draw))(keys)).ravel()

    keys = jax.random.split(jax.random.key(8), 4000)
    s = strengths(keys, 0.3)
    levels = np.round(s * 100).astype(int)
    np.testing.assert_allclose(s, levels * 0.01, atol=1e-7)
    counts = np.bincount(levels, minlength=31)
    assert len(counts) == 31 and counts.min() > 0  # 0 .. 30, every level drawn
    expected = s.size / 31
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts
    assert abs(s.mean() - 0.15) < 0.005
    # numpy truncates the float bound 100*0.29+1 = 29.999..., as the official draw does: 0 .. 0.28
    assert strengths(keys[:500], 0.29).max() == pytest.approx(0.28)


def test_jit_matches_eager():
    z = _smooth_latent(9, 2, WIDE[-1][1:], 16, 1.0)
    rng = jax.random.key(10)
    eager = (bsq.multiscale_quantize(z, WIDE), bsq.self_correction(z, WIDE, rng))
    jitted = (
        jax.jit(bsq.multiscale_quantize, static_argnums=1)(z, WIDE),
        jax.jit(functools.partial(bsq.self_correction, schedule=WIDE))(z, rng=rng),
    )
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_flatten_and_split_scales_round_trip():
    xs = [np.full((2, h, w, 3), k, np.float32) for k, (_, h, w) in enumerate(WIDE)]
    flat = np.asarray(bsq.flatten_scales(xs))
    assert flat.shape == (2, S.num_tokens(WIDE), 3)
    offsets = S.scale_offsets(WIDE)
    assert flat[0, offsets[3], 0] == 3.0 and flat[0, offsets[3] - 1, 0] == 2.0
    for a, b in zip(bsq.split_scales(flat, WIDE), xs):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_bad_inputs_raise_clear_value_errors():
    z = np.zeros((2, 16, 16, 32), np.float32)  # SQUARE's last scale is 16x16
    with pytest.raises(ValueError, match="does not match the latent size"):
        bsq.multiscale_quantize(z[:, :12], SQUARE)
    with pytest.raises(ValueError, match=r"expected a latent \(B, h, w, d\)"):
        bsq.multiscale_quantize(z[0], SQUARE)
    with pytest.raises(ValueError, match="t = 1"):
        bsq.multiscale_quantize(z, ((1, 1, 1), (2, 16, 16)))
    with pytest.raises(ValueError, match="expected a sequence"):
        bsq.multiscale_quantize(z, 16)
    bits = [np.zeros((2, h, w, 32), np.uint8) for _, h, w in SQUARE]
    with pytest.raises(ValueError, match="bits of scale 2"):
        bsq.teacher_forcing_inputs([*bits[:2], bits[3], *bits[3:]], SQUARE)
    with pytest.raises(ValueError, match="expected 7"):
        bsq.teacher_forcing_inputs(bits[:3], SQUARE)
    with pytest.raises(ValueError, match=r"expected \(B, 521, C\)"):
        bsq.split_scales(np.zeros((2, 520, 32)), SQUARE)
    with pytest.raises(ValueError, match="flip mask of scale 1"):
        bsq.self_correction_with_flips(z, SQUARE, [None, np.zeros((2, 3, 3, 32), np.uint8)])
    with pytest.raises(ValueError, match="strength"):
        bsq.self_correction(z, SQUARE, jax.random.key(0), strength=1.5)
