"""The Infinity training loss (train/step.py): the official teacher-forced loss and gradients when
self-correction and text dropout are off, and self-correction really on the training path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax.convert import infinity as conv
from infinity_jax.model import transformer as T
from infinity_jax.tokenizer import bsq
from infinity_jax.train import step as S
from tests.conftest import load_fixture, state_dict


def _load(name):
    f = load_fixture(name)
    m, s = f["meta"], f["meta"]["settings"]
    patchify = int(s.get("patchify", 0))  # the 8B's path: 4d bits per token, latents on the doubled grid
    cfg = T.InfinityConfig(
        depth=s["depth"],
        embed_dim=s["embed_dim"],
        num_heads=s["num_heads"],
        block_chunks=s["block_chunks"],
        codebook_dim=4 * s["d"] if patchify else s["d"],
        apply_spatial_patchify=patchify,
        text_channels=m["text_channels"],
        text_maxlen=m["text_maxlen"],
    )
    sched = tuple(tuple(int(v) for v in x) for x in m["schedule"])
    batch = {
        "latent": jnp.asarray(f["vae/out/h"].transpose(0, 2, 3, 1)),
        "text_features": jnp.asarray(f["in/text_padded"]),
        "text_mask": jnp.asarray(f["in/text_mask"]),
    }
    return f, T.Infinity(cfg), conv.torch_to_params(state_dict(f, "gpt"), cfg), sched, batch


@pytest.fixture(scope="module")
def tiny():
    return _load("tiny")


@pytest.fixture(scope="module", params=["tiny", "tiny-patchify"])
def official(request, tiny):
    return tiny if request.param == "tiny" else _load(request.param)


def test_without_flips_or_dropout_loss_and_grads_match_official_trainer(official):
    f, model, params, sched, batch = official
    opts = S.StepOptions(bsc_strength=0.0, cond_drop=0.0)
    loss_fn = S.make_loss_fn(model, sched, opts)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch, jax.random.key(0))
    np.testing.assert_allclose(float(loss), float(f["tf/loss"]), rtol=1e-5)
    grads_sd = {k[5:]: v for k, v in f.items() if k.startswith("grad/")}
    grads_sd.update({k: v for k, v in state_dict(f, "gpt").items() if k.endswith("zero_k_bias")})  # buffers
    ref = conv.torch_to_params(grads_sd, model.cfg)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref)):
        scale = max(float(np.abs(r).max()), 1e-12)
        assert float(np.abs(np.asarray(g) - r).max()) <= 5e-5 * scale, jax.tree_util.keystr(path)
    assert all(np.shape(v) == () for v in metrics.values())
    assert {f"bit_acc/s{k:02d}" for k in range(len(sched))} <= set(metrics)
    assert 0.3 < float(metrics["bit_acc"]) < 0.7  # random weights: chance level


def test_self_correction_changes_inputs_and_labels_on_the_training_path(tiny):
    f, model, params, sched, batch = tiny
    z = batch["latent"]
    x0, y0, _ = bsq.self_correction(z, sched, jax.random.key(1), strength=0.0)
    x1, y1, masks = bsq.self_correction(z, sched, jax.random.key(1), strength=0.3, num_layers=13)
    n0 = sched[0][1] * sched[0][2]
    assert float(jnp.abs(x1 - x0).max()) > 0.1  # corrupted inputs
    assert bool((y1[:, n0:] != y0[:, n0:]).any())  # later labels correct earlier flips
    flipped = float(jnp.mean(jnp.concatenate([m.reshape(-1) for m in masks]).astype(jnp.float32)))
    assert 0.0 < flipped < 0.3
    on = S.make_loss_fn(model, sched, S.StepOptions(bsc_strength=0.3, cond_drop=0.0))
    off = S.make_loss_fn(model, sched, S.StepOptions(bsc_strength=0.0, cond_drop=0.0))
    l_on = float(jax.jit(on)(params, batch, jax.random.key(2))[0])
    l_off = float(jax.jit(off)(params, batch, jax.random.key(2))[0])
    assert l_on != l_off


def test_training_loss_with_the_official_flips_is_the_official_loss(official, monkeypatch):
    """The training path (train/step.py) fed the official trainer's recorded bit flips instead of
    drawing its own gives the official self-corrected loss (their losses differ by ~0.008 from the
    flip-free one, so only an exact comparison tells the paths apart)."""
    f, model, params, sched, batch = official
    masks = [jnp.asarray(f[f"bsc/flip_mask_{k}"][:, 0]) for k in range(len(sched))]  # (B, h_k, w_k, d)

    def recorded(z, schedule, rng, **kw):
        x, labels = bsq.self_correction_with_flips(
            z, schedule, masks, requant=kw.get("requant", True), patchify=kw.get("patchify", 0)
        )
        return x, labels, masks

    monkeypatch.setattr(S.bsq, "self_correction", recorded)
    loss_fn = S.make_loss_fn(model, sched, S.StepOptions(bsc_strength=0.3, cond_drop=0.0))
    loss = float(jax.jit(loss_fn)(params, batch, jax.random.key(2))[0])
    np.testing.assert_allclose(loss, float(f["bsc/loss"]), rtol=1e-5)
    assert abs(loss - float(f["tf/loss"])) > 1e-3  # the flips matter at this tolerance


def test_text_dropout_uses_the_null_text(tiny):
    f, model, params, sched, batch = tiny
    all_drop = S.make_loss_fn(model, sched, S.StepOptions(bsc_strength=0.0, cond_drop=1.0))
    null = dict(
        batch,
        text_features=jnp.broadcast_to(
            params["cfg_uncond"][None, : batch["text_mask"].shape[1]], batch["text_features"].shape
        ),
    )
    no_drop = S.make_loss_fn(model, sched, S.StepOptions(bsc_strength=0.0, cond_drop=0.0))
    a = float(all_drop(params, batch, jax.random.key(0))[0])
    b = float(no_drop(params, null, jax.random.key(0))[0])
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_missing_inputs_raise_clear_errors(tiny):
    f, model, params, sched, batch = tiny
    loss_fn = S.make_loss_fn(model, sched)
    with pytest.raises(ValueError, match="no 'latent'"):
        loss_fn(params, {"image": jnp.zeros((2, 256, 256, 3))}, jax.random.key(0))


def test_bench_train_prints_a_row_and_its_profile(capsys, tmp_path):
    from infinity_jax import commands

    assert (
        commands.main(
            [
                "bench",
                "train",
                "--config",
                "infinity:tiny",
                "--schedule",
                "1x1,2x2,4x4",
                "--batch",
                "8",
                "--steps",
                "1",
                "--text-len",
                "4",
                "--rules",
                "dp",
                "--profile",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    header, row = out[:2]
    assert "img/s" in header and "MFU" in header
    assert row.split()[1] == "64x64" and float(row.split()[5]) > 0  # step seconds
    assert out[2].startswith("matmul FLOPs by operand dtypes: float32 x float32 100.0%")  # an fp32 model
    # the profile of two more steps (a real CPU trace): the blocks' matmuls forward and backward
    assert out[3].startswith("infinity:tiny: profile, per call (2 recorded):")
    table = out[
        out.index("  kind          ms/call   share   ops/call") + 1 : next(
            i for i, ln in enumerate(out) if ln.startswith("  scope")
        )
    ]
    kinds = {ln.split()[0]: float(ln.split()[1]) for ln in table}
    assert kinds["matmul"] > 0 and kinds["fusion"] > 0
    scopes = " ".join(out)
    assert "bwd Infinity._blocks/blocks/sa" in scopes and "Infinity._blocks/blocks/ffn" in scopes
