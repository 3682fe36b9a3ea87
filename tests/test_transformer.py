"""The Infinity transformer against the official implementation's fixtures (tiny, tiny-wide).

Tolerances (float32, see the reference README's parity protocol): teacher-forced logits atol 1e-4
(measured ~6e-6 / ~1e-5 with self-correction inputs), loss rtol 1e-5, gradients per tensor
max|diff| <= 5e-5 * max|g| (measured ~3.9e-6 relative), KV-cache decode vs teacher forcing atol 1e-5,
CFG sampler logits atol 2e-4 (measured ~1.4e-5).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from infinity_jax import parallel, schedules
from infinity_jax.convert import infinity as conv
from infinity_jax.model import extensions, layers
from infinity_jax.model import loss as L
from infinity_jax.model import transformer as T
from tests.conftest import load_fixture, state_dict

# tiny-patchify: the official apply_spatial_patchify=1 (the 8B's path): 4d bits per token
FIXTURES = ("tiny", "tiny-wide", "tiny-patchify")


def fixture_config(meta, **kw) -> T.InfinityConfig:
    s = meta["settings"]
    patchify = int(s.get("patchify", 0))
    return T.InfinityConfig(
        depth=s["depth"],
        embed_dim=s["embed_dim"],
        num_heads=s["num_heads"],
        block_chunks=s["block_chunks"],
        codebook_dim=4 * s["d"] if patchify else s["d"],
        apply_spatial_patchify=patchify,
        text_channels=meta["text_channels"],
        text_maxlen=meta["text_maxlen"],
        **kw,
    )


class Case:
    """One fixture with our model built from its official weights; each jitted function compiles once."""

    def __init__(self, name):
        self.name = name
        self.f = f = load_fixture(name)
        self.meta = f["meta"]
        self.cfg = fixture_config(self.meta)
        self.sched = tuple(tuple(int(v) for v in x) for x in self.meta["schedule"])
        self.params = conv.torch_to_params(state_dict(f, "gpt"), self.cfg)
        self.model = T.Infinity(self.cfg)
        self.text, self.mask = jnp.asarray(f["in/text_padded"]), jnp.asarray(f["in/text_mask"])
        sched, model = self.sched, self.model
        self.forward = jax.jit(lambda p, t, m, x: model.apply({"params": p}, t, m, x, sched))
        self._cache = {}

    def once(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def tf_logits(self):
        return self.once(
            "tf", lambda: np.asarray(self.forward(self.params, self.text, self.mask, self.f["tf/x_wo_prefix"]))
        )

    def loss_and_grads(self, cfg=None, params=None):
        """(loss, logits, grads as an official state dict) of the fixture's training loss."""
        cfg, params = cfg or self.cfg, params if params is not None else self.params
        model, f, sched = T.Infinity(cfg), self.f, self.sched

        def loss_fn(p):
            lg = model.apply({"params": p}, self.text, self.mask, f["tf/x_wo_prefix"], sched)
            return L.bitwise_loss(lg, f["tf/labels"], sched), lg

        (loss, lg), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
        return float(loss), np.asarray(lg), conv.params_to_torch(g, cfg)

    @property
    def decoded(self):
        """KV-cache decode of one batch of 3B: [cond text on sample inputs, null text on sample inputs,
        cond text on the teacher-forcing inputs]."""

        def run():
            f = self.f
            null = T.null_text(self.params, self.mask)
            text = jnp.concatenate([self.text, null, self.text])
            mask = jnp.concatenate([self.mask] * 3)
            xs = jnp.concatenate([f["sample/x_wo_prefix"], f["sample/x_wo_prefix"], f["tf/x_wo_prefix"]])
            fn = jax.jit(lambda p, t, m, x: decode_all(self.model, self.cfg, p, t, m, x, self.sched))
            return np.asarray(fn(self.params, text, mask, xs))

        return self.once("decoded", run)


def decode_all(model, cfg, params, text, mask, x_wo_prefix, sched, text_kv_once=False):
    """Runs the scales one by one through a preallocated KV cache: (B, L, 2d). text_kv_once: the text's
    cross-attention keys/values made once (decode_context), as the sampler does."""
    ctx = model.apply({"params": params}, text, mask, method=T.Infinity.encode_text)
    if text_kv_once:
        ctx = model.apply({"params": params}, ctx, method=T.Infinity.decode_context)
    cache = T.init_cache(cfg, text.shape[0], sched)
    offs, lens = schedules.scale_offsets(sched), schedules.scale_lengths(sched)
    outs = []
    for k in range(len(sched)):
        xk = None if k == 0 else x_wo_prefix[:, offs[k] - 1 : offs[k] - 1 + lens[k]]
        lg, cache = model.apply({"params": params}, ctx, xk, cache, sched, k, method=T.Infinity.decode_scale)
        outs.append(lg)
    return jnp.concatenate(outs, 1)


_CASES: dict[str, Case] = {}


@pytest.fixture(scope="session", params=FIXTURES)
def case(request) -> Case:
    if request.param not in _CASES:
        _CASES[request.param] = Case(request.param)
    return _CASES[request.param]


@pytest.fixture(scope="session")
def tiny() -> Case:
    if "tiny" not in _CASES:
        _CASES["tiny"] = Case("tiny")
    return _CASES["tiny"]


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_rope2d_table_equals_official(case):
    table = layers.rope2d_table(case.sched, case.cfg.head_dim, mode=2)
    assert table.shape == case.f["aux/rope"].shape
    assert max_abs(table, case.f["aux/rope"]) <= 1e-6


def test_teacher_forced_logits_match_official(case):
    assert case.tf_logits.shape == case.f["tf/logits"].shape
    assert max_abs(case.tf_logits, case.f["tf/logits"]) <= 1e-4


def test_self_correction_inputs_give_official_logits(case):
    got = case.forward(case.params, case.text, case.mask, case.f["bsc/x_wo_prefix"])
    assert max_abs(got, case.f["bsc/logits"]) <= 1e-4


def test_bitwise_loss_matches_official_trainer(case):
    f = case.f
    got = float(L.bitwise_loss(case.tf_logits, f["tf/labels"], case.sched))
    np.testing.assert_allclose(got, float(f["tf/loss"]), rtol=1e-5)
    np.testing.assert_allclose(L.scale_token_weights(case.sched), f["tf/loss_token_weights"], rtol=1e-6)
    np.testing.assert_allclose(
        L.bit_cross_entropy(case.tf_logits, f["tf/labels"]), f["tf/loss_per_token"], rtol=1e-4, atol=1e-5
    )
    bsc_logits = case.forward(case.params, case.text, case.mask, f["bsc/x_wo_prefix"])
    np.testing.assert_allclose(
        float(L.bitwise_loss(bsc_logits, f["bsc/labels"], case.sched)), float(f["bsc/loss"]), rtol=1e-5
    )


@pytest.mark.parametrize("name", ["tiny", "tiny-patchify"])
def test_gradients_match_official(name):
    if name not in _CASES:
        _CASES[name] = Case(name)
    tiny = _CASES[name]
    _, _, grads = tiny.once("grads", tiny.loss_and_grads)
    ref = {k[len("grad/") :]: v for k, v in tiny.f.items() if k.startswith("grad/")}
    assert set(ref) == {k for k in grads if not k.endswith("zero_k_bias")}
    worst = {k: np.abs(grads[k] - g).max() / max(np.abs(g).max(), 1e-12) for k, g in ref.items()}
    assert max(worst.values()) <= 5e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:5]  # measured 3.9e-6
    assert not np.any(grads["cfg_uncond"])  # the null text is not used without dropped prompts


def test_kv_cache_decode_equals_teacher_forcing(case):
    b = case.mask.shape[0]
    assert max_abs(case.decoded[2 * b :], case.tf_logits) <= 1e-5


def test_cfg_decode_reproduces_official_sampler_logits(case):
    """cond and uncond halves of one batch; uncond text = cfg_uncond[:len] per prompt; CFG on logits."""
    f, b = case.f, case.mask.shape[0]
    null = np.asarray(T.null_text(case.params, case.mask))
    packed = np.concatenate([null[i, :n] for i, n in enumerate(f["in/text_lens"])])
    np.testing.assert_array_equal(packed, f["sample/uncond_text_features"])
    cfg, tau = float(f["meta/cfg"]), float(f["meta/tau"])
    guided = cfg * case.decoded[:b] / tau + (1 - cfg) * case.decoded[b : 2 * b] / tau
    assert max_abs(guided, f["sample/logits"]) <= 2e-4


@pytest.mark.parametrize("scan,dtype", [(False, "float32"), (True, "bfloat16")])
def test_text_keys_values_made_once_decode_the_same_logits(tiny, scan, dtype):
    """decode_context makes every block's text keys/values once for all scales (the sampler's path): the
    logits are those of projecting them in each block at each scale, to the bit."""
    cfg = dataclasses.replace(tiny.cfg, scan_layers=scan, dtype=dtype)
    params = conv.torch_to_params(state_dict(tiny.f, "gpt"), cfg)
    model = T.Infinity(cfg)
    ctx = model.apply({"params": params}, tiny.text, tiny.mask, method=T.Infinity.encode_text)
    full = model.apply({"params": params}, ctx, method=T.Infinity.decode_context)
    assert full["ca_k"].shape == (cfg.depth, *tiny.mask.shape, cfg.num_heads, cfg.head_dim)
    assert full["ca_k"].dtype == full["ca_v"].dtype == jnp.dtype(dtype)

    def run(once):
        fn = jax.jit(
            lambda p: decode_all(model, cfg, p, tiny.text, tiny.mask, tiny.f["tf/x_wo_prefix"], tiny.sched, once)
        )
        return np.asarray(fn(params))

    np.testing.assert_array_equal(run(True), run(False))


@pytest.mark.parametrize(
    "scan,remat", [(True, "full"), (False, "attn"), (True, "save_qkv_attn_mlp"), (False, "dots_no_batch")]
)
def test_scan_and_remat_give_identical_logits_and_gradients(tiny, scan, remat):
    cfg = dataclasses.replace(tiny.cfg, scan_layers=scan, remat=remat)
    params = conv.torch_to_params(state_dict(tiny.f, "gpt"), cfg)
    l1, lg1, g1 = tiny.loss_and_grads(cfg, params)
    l0, lg0, g0 = tiny.once("grads", tiny.loss_and_grads)
    assert max_abs(lg1, lg0) <= 1e-6 and abs(l1 - l0) <= 1e-7
    assert max(max_abs(g1[k], g0[k]) for k in g0) <= 1e-7
    if scan:  # the scanned KV-cache path too
        model = T.Infinity(cfg)
        got = jax.jit(lambda p: decode_all(model, cfg, p, tiny.text, tiny.mask, tiny.f["tf/x_wo_prefix"], tiny.sched))(
            params
        )
        assert max_abs(got, tiny.tf_logits) <= 1e-5


def test_remat_policies_trade_memory_as_named():
    """XLA's memory analysis of a training gradient: 'full' keeps least, 'none' most, and a policy
    that saves the tagged q|k|v, attention and FFN activations lies between."""
    cfg = T.InfinityConfig(
        depth=4, embed_dim=128, num_heads=2, block_chunks=1, text_channels=128, text_maxlen=8, scan_layers=True
    )
    sched = ((1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8))
    S = jax.ShapeDtypeStruct
    b, n = 8, schedules.num_tokens(sched)
    args = (
        nn.unbox(T.abstract_params(cfg)),
        S((b, 8, 128), jnp.float32),
        S((b, 8), bool),
        S((b, n - 1, 32), jnp.float32),
    )

    def temp(remat):
        model = T.Infinity(dataclasses.replace(cfg, remat=remat))
        grad = jax.grad(lambda p, t, m, x: model.apply({"params": p}, t, m, x, sched).sum())
        return jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes

    full, named, none = temp("full"), temp("save_qkv_attn_mlp"), temp("none")
    assert full < named < none


def test_the_ffn_backward_keeps_fc1s_output_and_the_gelus_only():
    """Of the FFN's hidden units the backward needs fc1's output (the GELU's derivative) and the GELU's output
    (fc2's weight gradient); the GELU recomputes its tanh from the first instead of saving more tensors of
    that size (on GPU, XLA then fuses the GELU into fc1's cuBLAS epilogue: docs/performance.md)."""
    ffn = layers.FFN(32, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 5, 8), jnp.float32)
    params = ffn.init(jax.random.key(1), x)
    _, backward = jax.vjp(lambda p, x: ffn.apply(p, x), params, x)
    hidden = [leaf for leaf in jax.tree.leaves(backward) if leaf.shape == (2, 5, 32)]
    assert len(hidden) == 2 and all(leaf.dtype == jnp.bfloat16 for leaf in hidden)


@pytest.mark.parametrize("rms", [False, True])
def test_the_norms_backward_keeps_one_activation_and_matches_autodiff(rms):
    """LayerNorm/RMSNorm differentiate from their output and 1/std alone (what a scanned stack of blocks
    saves per norm: one tensor of the activations' size, autodiff keeps two or three), with autodiff's gradient."""
    x = (3.0 * jax.random.normal(jax.random.key(0), (2, 5, 64)) + 1.0).astype(jnp.bfloat16)
    g = jax.random.normal(jax.random.key(1), (2, 5, 64))

    def plain(x):
        x = x.astype(jnp.float32)
        if not rms:
            x = x - x.mean(-1, keepdims=True)
        return x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + 1e-6)

    y, backward = jax.vjp(lambda x: layers.norm(x, 1e-6, rms), x)
    want_y, want_backward = jax.vjp(plain, x)
    assert [leaf.shape for leaf in jax.tree.leaves(backward) if leaf.size >= x.size] == [(2, 5, 64)]
    np.testing.assert_array_equal(y, want_y)
    (dx,), (want_dx,) = backward(g), want_backward(g)
    assert dx.dtype == jnp.bfloat16
    np.testing.assert_allclose(dx.astype(jnp.float32), want_dx.astype(jnp.float32), rtol=2e-2, atol=1e-3)


def test_every_param_has_logical_axes_and_shards_by_preset(tiny):
    for scan in (False, True):
        cfg = dataclasses.replace(tiny.cfg, scan_layers=scan)
        abstract = T.abstract_params(cfg)
        leaves = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert all(isinstance(x, nn.Partitioned) and len(x.names) == len(x.value.shape) for x in leaves)
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    sh = parallel.param_shardings(T.abstract_params(tiny.cfg), mesh, "fsdp_tp")
    assert sh["blocks_0"]["sa"]["mat_qkv"].spec == P("fsdp", None, "tensor")
    assert sh["blocks_0"]["ffn"]["fc1"]["kernel"].spec == P("fsdp", "tensor")
    assert sh["blocks_0"]["ffn"]["fc2"]["kernel"].spec == P("tensor", "fsdp")
    # the forward is unchanged when params and batch are sharded (8 host devices)
    placed = jax.device_put(tiny.params, sh)
    with jax.set_mesh(mesh):
        got = tiny.forward(placed, tiny.text, tiny.mask, tiny.f["tf/x_wo_prefix"])
    assert max_abs(got, tiny.tf_logits) <= 1e-5


def test_blocks_constrain_activations_by_the_logical_rules(tiny):
    """Under a mesh and the fsdp_tp rules the traced forward pins the residual stream to the batch
    axes and the q/k/v heads and the FFN hidden units to 'tensor' (nn.with_logical_constraint), and
    gives the same logits as unsharded."""
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    sh = parallel.param_shardings(T.abstract_params(tiny.cfg), mesh, "fsdp_tp")
    placed = jax.device_put(tiny.params, sh)
    text = jnp.concatenate([tiny.text] * 2)
    mask = jnp.concatenate([tiny.mask] * 2)
    x = jnp.concatenate([tiny.f["tf/x_wo_prefix"]] * 2)
    with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.logical_rules("fsdp_tp")):
        jaxpr = str(jax.make_jaxpr(lambda p: tiny.model.apply({"params": p}, text, mask, x, tiny.sched))(placed))
        got = jax.jit(lambda p: tiny.model.apply({"params": p}, text, mask, x, tiny.sched))(placed)
    specs = set(re.findall(r"spec=(P\((?:[^()]|\([^()]*\))*\))", jaxpr))
    assert "P(('data', 'fsdp'), None, None)" in specs  # the residual stream (B, L, C)
    assert "P(('data', 'fsdp'), None, 'tensor', None)" in specs  # q, k, v (B, L, H, c)
    assert "P(('data', 'fsdp'), None, 'tensor')" in specs  # the FFN hidden (B, L, F)
    assert max_abs(got[:2], tiny.tf_logits) <= 1e-5


def test_dropped_prompts_use_the_null_text(tiny):
    drop = jnp.array([True, False])
    ctx_drop = tiny.model.apply({"params": tiny.params}, tiny.text, tiny.mask, drop, method=T.Infinity.encode_text)
    null = T.null_text(tiny.params, tiny.mask)
    ctx_null = tiny.model.apply({"params": tiny.params}, null, tiny.mask, method=T.Infinity.encode_text)
    ctx = tiny.model.apply({"params": tiny.params}, tiny.text, tiny.mask, method=T.Infinity.encode_text)
    np.testing.assert_array_equal(ctx_drop["cond"][0], ctx_null["cond"][0])
    np.testing.assert_array_equal(ctx_drop["cond"][1], ctx["cond"][1])


def test_per_scale_accuracy_counts_argmax_bits():
    sched = ((1, 1, 1), (1, 2, 2))
    labels = np.zeros((2, 5, 3), np.uint8)
    logits = np.zeros((2, 5, 6), np.float32)
    logits[..., 0::2] = 1.0  # predicts 0 everywhere: all right
    logits[:, 1:, 1] = 2.0  # scale 1: bit 0 predicted 1 -> 2 of 3 bits right
    np.testing.assert_allclose(L.per_scale_accuracy(logits, labels, sched), [1.0, 2 / 3], rtol=1e-6)
    w = L.scale_token_weights(sched)
    np.testing.assert_allclose(w, np.array([2, 1, 1, 1, 1]) / 6, rtol=1e-6)
    np.testing.assert_allclose(L.scale_token_weights(sched, reweight=False), np.full(5, 0.2), rtol=1e-6)
    ce = float(L.bitwise_loss(np.zeros((1, 5, 6), np.float32), labels[:1], sched))
    np.testing.assert_allclose(ce, np.log(2.0), rtol=1e-6)


def test_bad_inputs_name_the_expected_shapes(tiny):
    with pytest.raises(ValueError, match=r"expected \(B, 520, 32\)"):
        tiny.model.apply({"params": tiny.params}, tiny.text, tiny.mask, jnp.zeros((2, 10, 32)), tiny.sched)
    with pytest.raises(ValueError, match="num_heads"):
        T.InfinityConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="remat"):
        T.InfinityConfig(remat="sometimes")


def test_bf16_compute_stays_close_to_float32(tiny):
    """Compute dtype from config: bf16 matmuls, fp32 norms/softmax/residual; one head's logit scale is
    at the clamp (100), which amplifies bf16 rounding: measured 0.05 max on logits up to 4.6."""
    cfg = dataclasses.replace(tiny.cfg, dtype="bfloat16")
    model = T.Infinity(cfg)
    lg = jax.jit(lambda p: model.apply({"params": p}, tiny.text, tiny.mask, tiny.f["tf/x_wo_prefix"], tiny.sched))(
        tiny.params
    )
    assert lg.dtype == jnp.float32
    assert max_abs(lg, tiny.f["tf/logits"]) <= 0.15
    np.testing.assert_allclose(
        float(L.bitwise_loss(lg, tiny.f["tf/labels"], tiny.sched)), float(tiny.f["tf/loss"]), rtol=2e-3
    )


def test_drop_path_only_in_training_and_per_example(tiny):
    cfg = dataclasses.replace(tiny.cfg, drop_path_rate=0.5)  # block rates linspace(0, 0.5): only block 1 drops
    model = T.Infinity(cfg)
    run = jax.jit(
        lambda k: model.apply(
            {"params": tiny.params},
            tiny.text,
            tiny.mask,
            tiny.f["tf/x_wo_prefix"],
            tiny.sched,
            train=True,
            rngs={"dropout": k},
        )
    )
    assert (
        max_abs(
            model.apply({"params": tiny.params}, tiny.text, tiny.mask, tiny.f["tf/x_wo_prefix"], tiny.sched),
            tiny.tf_logits,
        )
        <= 1e-5
    )
    outs = {
        tuple(np.round(np.abs(np.asarray(run(jax.random.key(s))) - tiny.tf_logits).max((1, 2)), 4)) for s in range(6)
    }
    assert len(outs) > 1 and all(max(o) > 0 for o in outs)  # random per example; training differs from eval


def test_abs_pos_embed_extension_decodes_like_teacher_forcing_and_has_no_official_form(tiny):
    """The place embedding (model/extensions.py, ours) reaches both paths identically; the converter refuses it
    by name."""
    cfg = dataclasses.replace(tiny.cfg, extension="abs_pos_embed")
    params = nn.unbox(T.init_params(cfg, jax.random.key(3)))
    model = T.Infinity(cfg)
    x = tiny.f["tf/x_wo_prefix"]
    forward = jax.jit(lambda p: model.apply({"params": p}, tiny.text, tiny.mask, x, tiny.sched))
    want = forward(params)
    got = jax.jit(lambda p: decode_all(model, cfg, p, tiny.text, tiny.mask, x, tiny.sched))(params)
    assert max_abs(got, want) <= 1e-5
    moved = np.asarray(forward(dict(params, abs_pos={"kernel": jnp.zeros_like(params["abs_pos"]["kernel"])})))
    assert max_abs(moved, want) > 1e-3  # the embedding changes the logits
    with pytest.raises(ValueError, match="model.extension='abs_pos_embed'"):
        conv.params_to_torch(params, cfg)


def test_abs_pos_embed_extension_adds_one_top_level_param_and_the_cell_centre_projection(tiny):
    """The extension's params sit beside the official ones under the name checkpoints of the shapes recipe
    carry (abs_pos/kernel, (24, C), axes (None, embed)); the core model has none of them. Tokens get the level
    embedding plus cell_centre_features @ kernel, in any slice of the schedule (the decoding path's)."""
    cfg = dataclasses.replace(tiny.cfg, extension="abs_pos_embed")
    core = T.abstract_params(tiny.cfg)
    ext = T.abstract_params(cfg)
    assert set(ext) - set(core) == {"abs_pos"} and set(core) <= set(ext) and "abs_pos" not in core
    assert jax.tree.map(lambda a: a.shape, nn.unbox({k: ext[k] for k in core})) == jax.tree.map(
        lambda a: a.shape, nn.unbox(core)
    )
    kernel = ext["abs_pos"]["kernel"]
    assert list(ext["abs_pos"]) == ["kernel"] and kernel.value.shape == (24, cfg.embed_dim)
    assert kernel.names == (None, "embed")
    params = nn.unbox(T.init_params(cfg, jax.random.key(3)))
    sched, n = tiny.sched, schedules.num_tokens(tiny.sched)
    feats = extensions.cell_centre_features(sched)
    assert feats.shape == (n, 24) and feats.dtype == np.float32
    # scale 1 (1x1): the image centre, (y, x) = (0.5, 0.5), at frequencies pi * 2**f: sin, cos of y, then of x
    yx = np.sin(0.5 * np.pi * 2.0 ** np.arange(6)), np.cos(0.5 * np.pi * 2.0 ** np.arange(6))
    np.testing.assert_allclose(feats[0], np.concatenate(yx + yx), atol=1e-6)
    lvl = params["lvl_embed"]["embedding"][T.scale_ids(sched)]
    place = feats @ np.asarray(params["abs_pos"]["kernel"])
    start, length = schedules.scale_offsets(sched)[2], schedules.scale_lengths(sched)[2]
    for a, b in ((0, n), (start, length)):
        got = T.Infinity(cfg).apply({"params": params}, sched, a, b, method=T.Infinity._level_and_place)
        np.testing.assert_allclose(np.asarray(got), (lvl + place)[a : a + b], rtol=1e-5, atol=1e-6)
    core_params = {k: v for k, v in params.items() if k != "abs_pos"}
    got = T.Infinity(tiny.cfg).apply({"params": core_params}, sched, 0, n, method=T.Infinity._level_and_place)
    np.testing.assert_array_equal(np.asarray(got), lvl)


def test_extension_is_chosen_by_name_and_old_configs_flag_maps_to_it(tiny):
    base = {f.name: getattr(tiny.cfg, f.name) for f in dataclasses.fields(tiny.cfg)}
    del base["extension"]
    assert T.InfinityConfig.from_dict(base).extension == ""
    assert T.InfinityConfig.from_dict(dict(base, abs_pos_embed=True)).extension == "abs_pos_embed"  # saved runs
    assert T.InfinityConfig.from_dict(dict(base, abs_pos_embed=False)).extension == ""
    assert T.InfinityConfig.from_dict(dict(base, extension="abs_pos_embed")).extension == "abs_pos_embed"
    with pytest.raises(ValueError, match="extension='place'"):
        T.InfinityConfig.from_dict(dict(base, extension="place"))
