"""The sampler against the official one (tiny fixtures), its cache against the full forward, seeds,
compiles, per-bit sampling, sharding, the CLI and the benchmark.

Parity protocol (tests/fixtures, see shared/reference README): greedy bits equal, or at the first
differing scale every differing bit is a reference near-tie (|l1 - l0| < 1e-4) and later scales
are skipped; the official CFG logits replayed teacher-forced on `sample/x_wo_prefix` atol 2e-4;
summed codes atol 1e-5 and the uint8 image within 1 when the bits are equal.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from infinity_jax import fileio, parallel, sample, schedules
from infinity_jax.convert import infinity as conv_inf
from infinity_jax.convert import vae as conv_vae
from infinity_jax.model.transformer import InfinityConfig, null_text
from infinity_jax.tokenizer import bsq
from tests.conftest import FIXTURES, load_fixture, state_dict
from tests.train_helpers import FAST_OPTIONS

FAST = FAST_OPTIONS  # LLVM -O0: the same numbers, CPU compiles ~2x faster (XLA's defaults: see train_helpers)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


# tiny-patchify: the official apply_spatial_patchify=1 (the 8B's path): 4d bits per token, the VAE on the
# doubled grid (sample/bits in transformer order, sample/summed_codes on the VAE grid)
SAMPLE_FIXTURES = FIXTURES + ("tiny-patchify",)


def _model_cfg(d: int = 32, patchify: int = 0) -> InfinityConfig:
    model = dict(conv_inf.load_config("tiny").model.to_dict(), codebook_dim=d, apply_spatial_patchify=patchify)
    return InfinityConfig.from_dict(model)


class Setup:
    """One fixture's weights, a compiled sampler (VAE when the fixture has one) and a greedy run."""

    def __init__(self, name: str):
        fix = self.fix = load_fixture(name)
        patchify = int(fix["meta"]["settings"].get("patchify", 0))
        self.cfg = _model_cfg(int(fix["meta/d"]) * (4 if patchify else 1), patchify)
        self.params = conv_inf.torch_to_params(state_dict(fix, "gpt"), self.cfg)
        self.schedule = schedules.validate(fix["meta/schedule"])
        self.vae_cfg = self.vae_params = None
        if "vae/decoder.conv_in.conv.weight" in fix:
            self.vae_cfg = conv_vae.load_config("tiny_patchify" if patchify else "tiny")
            self.vae_params = conv_vae.torch_to_params(state_dict(fix, "vae"), self.vae_cfg)
        self.sampler = sample.Sampler(
            self.cfg, self.schedule, vae=self.vae_cfg, return_logits=True, compiler_options=FAST
        )
        self.params, self.vae_params = self.sampler.place_params(self.params, self.vae_params)
        self.text, self.mask = fix["in/text_padded"], fix["in/text_mask"]
        m = fix["meta"]["settings"]
        self.cfg_scale, self.tau = m["cfg"], m["tau"]
        self.greedy = self.run(0, greedy=True)

    def run(self, seeds, text=None, mask=None, **kw):
        kw = dict(dict(cfg=self.cfg_scale, tau=self.tau), **kw)
        return self.sampler(
            self.params,
            self.vae_params,
            self.text if text is None else text,
            self.mask if mask is None else mask,
            seeds,
            **kw,
        )


@pytest.fixture(scope="session")
def setups():
    return {}


@pytest.fixture(params=SAMPLE_FIXTURES)
def setup(request, setups):
    if request.param not in setups:
        setups[request.param] = Setup(request.param)
    return setups[request.param]


@pytest.fixture
def tiny(setups):
    if "tiny" not in setups:
        setups["tiny"] = Setup("tiny")
    return setups["tiny"]


# ---------------------------------------------------------------- parity with the official sampler
def test_greedy_bits_and_summed_codes_match_official_sampler(setup):
    fix, out = setup.fix, setup.greedy
    bits, ref = np.asarray(out.bits), fix["sample/bits"]
    ref_logits = fix["sample/logits"].reshape(*ref.shape, 2)
    margin = np.abs(ref_logits[..., 1] - ref_logits[..., 0])
    offsets = schedules.scale_offsets(setup.schedule)
    first_flip = None
    for k in range(len(setup.schedule)):
        sl = slice(offsets[k], offsets[k + 1])
        diff = bits[:, sl] != ref[:, sl]
        if diff.any():
            assert np.all(margin[:, sl][diff] < 1e-4), f"scale {k}: bits differ where the reference is decided"
            first_flip = k
            break
    if first_flip is None:  # every bit equal: the decoder input is the official one
        got = np.asarray(out.summed_codes)
        np.testing.assert_allclose(got, fix["sample/summed_codes"].transpose(0, 2, 3, 1), atol=1e-5, rtol=0)
    assert first_flip is None, "no near-tie in these fixtures: expect every bit equal"


def test_image_uint8_matches_official_sampler(tiny):
    ours = np.asarray(tiny.greedy.images)[0, ..., ::-1].astype(int)  # RGB -> the official BGR
    ref = tiny.fix["sample/image_uint8_bgr"][0].astype(int)
    diff = np.abs(ours - ref)
    assert ours.shape == ref.shape == (256, 256, 3)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-2


def test_patchify_image_uint8_matches_official_sampler(setups):
    """The 8B path's decode: the patch-8 VAE on the summed codes of the doubled grid (the fixture keeps the
    top rows of one image)."""
    if "tiny-patchify" not in setups:
        setups["tiny-patchify"] = Setup("tiny-patchify")
    s = setups["tiny-patchify"]
    ref = s.fix["sample/image_uint8_bgr"][0].astype(int)
    ours = np.asarray(s.greedy.images)[0, ..., ::-1].astype(int)
    assert ours.shape == (176, 352, 3) and ref.shape == (48, 352, 3)
    diff = np.abs(ours[: ref.shape[0]] - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-2


def test_cfg_logits_replayed_teacher_forced_match_official(setup):
    fix = setup.fix
    fn = jax.jit(
        lambda p, t, m, x: sample.teacher_forced_cfg_logits(
            setup.cfg, setup.schedule, p, t, m, x, setup.cfg_scale, setup.tau
        )
    )
    got = np.asarray(fn(setup.params, setup.text, setup.mask, fix["sample/x_wo_prefix"]))
    np.testing.assert_allclose(got, fix["sample/logits"], atol=2e-4, rtol=0)
    # and the free-running sampler's own logits (its inputs equal the official ones: bits equal)
    np.testing.assert_allclose(np.asarray(setup.greedy.logits), fix["sample/logits"], atol=2e-4, rtol=0)


def test_cached_logits_equal_full_forward_on_the_sampled_sequence(tiny):
    # stochastic run with per-scale guidance and temperature: the KV-cache path vs one full forward
    cfg, tau = "lin:1.5:4", "0.7,0.8,0.9,1.0"
    out = tiny.run(3, cfg=cfg, tau=tau, top_k=0, top_p=0.9)

    @jax.jit
    def replay(params, text, mask, bits):
        x = bsq.teacher_forcing_inputs(bsq.split_scales(bits, tiny.schedule), tiny.schedule)
        return sample.teacher_forced_cfg_logits(tiny.cfg, tiny.schedule, params, text, mask, x, cfg, tau)

    full = np.asarray(replay(tiny.params, tiny.text, tiny.mask, out.bits))
    np.testing.assert_allclose(np.asarray(out.logits), full, atol=5e-5, rtol=0)
    assert not np.array_equal(np.asarray(out.bits), np.asarray(tiny.greedy.bits))


# ---------------------------------------------------------------- seeds and compiles
def test_seed_reproduces_bits_exactly_without_recompiling(tiny):
    compiles = []
    listener = lambda event, secs, **kw: compiles.append(event) if event == COMPILE_EVENT else None
    kw = dict(top_k=0, top_p=0.97)
    n0 = tiny.sampler.num_compiles
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        a = tiny.run([7, 8], **kw)
        b = tiny.run([7, 8], **kw)
        c = tiny.run([8, 7], text=tiny.text[::-1], mask=tiny.mask[::-1], **kw)  # same (prompt, seed) pairs, swapped
        d = tiny.run([9, 10], **kw)
        jax.block_until_ready(d)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == [] and tiny.sampler.num_compiles == n0 == 1
    assert list(tiny.sampler.compile_seconds.values())[0] > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(a.bits), np.asarray(c.bits)[::-1])
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(c.images)[::-1])
    assert (np.asarray(a.bits) != np.asarray(d.bits)).mean() > 0.05


# ---------------------------------------------------------------- per-bit sampling and schedules
def test_top_k_one_and_greedy_take_the_larger_logit():
    logits = jnp.asarray([[0.3, -0.2], [-1.0, 2.0], [0.5, 0.5]])
    u = jnp.asarray([0.999, 0.999, 0.2])  # draws that would pick bit 1 only with p1 > 0.999
    assert sample.sample_bits(logits, u, 1, 0.0, True).tolist() == [0, 1, 0]  # argmax, tie -> 0
    assert sample.sample_bits(logits, u, 1, 0.0, False).tolist() == [0, 1, 1]  # the tie stays random
    assert sample.sample_bits(logits, u, 2, 0.0, False).tolist() == [0, 0, 1]  # top_k >= 2: no filter


def test_top_p_drops_the_smaller_logit_when_its_probability_is_at_most_one_minus_p():
    logits = jnp.tile(jnp.asarray([[0.0, 1.0]]), (20000, 1))  # p(1) = sigmoid(1) = 0.731
    u = jax.random.uniform(jax.random.key(0), (20000,))
    keep = sample.sample_bits(logits, u, 0, 0.75, False)  # p(0) = 0.269 > 0.25: kept
    drop = sample.sample_bits(logits, u, 0, 0.70, False)  # 0.269 <= 0.30: bit 0 removed
    assert abs(float(keep.mean()) - 0.7311) < 0.01
    assert int(drop.sum()) == 20000


def test_per_scale_guidance_specs():
    np.testing.assert_allclose(sample.per_scale("lin:1:4", 4), [1, 2, 3, 4])
    np.testing.assert_allclose(sample.per_scale("1,2", 4), [1, 2, 2, 2])
    np.testing.assert_allclose(sample.per_scale(3, 3), [3, 3, 3])
    sp = sample.sampling_params(2, cfg=[3, 1], tau=0.5)
    np.testing.assert_allclose(sp.uncond_w, [-2, 0])
    np.testing.assert_allclose(sp.inv_tau, [2, 2])
    for bad in ("lin:1", "a,b", []):
        with pytest.raises(ValueError, match="cfg"):
            sample.per_scale(bad, 3)
    with pytest.raises(ValueError, match="tau"):
        sample.sampling_params(2, tau=0)


# ---------------------------------------------------------------- sharding, negative prompt
SMALL = ((1, 1, 1), (1, 2, 2), (1, 4, 4))


@pytest.fixture(scope="module")
def small():
    cfg = _model_cfg()
    params = conv_inf.torch_to_params(state_dict(load_fixture("tiny"), "gpt"), cfg)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(8, 6, cfg.text_channels)).astype(np.float32)
    mask = np.arange(6)[None] < rng.integers(1, 7, size=(8, 1))
    return cfg, params, text, mask


def test_sharded_sampling_equals_unsharded(small):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    cfg, params, text, mask = small
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    ref = sample.Sampler(cfg, SMALL, return_logits=True, compiler_options=FAST)
    shd = sample.Sampler(cfg, SMALL, mesh=mesh, rules="fsdp_tp", return_logits=True, compiler_options=FAST)
    placed, _ = shd.place_params(params)
    assert placed["blocks_0"]["ffn"]["fc1"]["kernel"].sharding.spec == P("fsdp", "tensor")
    for kw in (dict(greedy=True), dict(cfg="lin:1:4", tau=0.8, top_k=0, top_p=0.9)):
        a = ref(params, None, text, mask, 5, **kw)
        b = shd(placed, None, text, mask, 5, **kw)
        assert b.bits.sharding.spec == P(parallel.BATCH_AXES)
        np.testing.assert_array_equal(np.asarray(a.bits), np.asarray(b.bits))
        np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), atol=1e-4, rtol=0)
    assert shd.num_compiles == 1
    with pytest.raises(ValueError, match="multiple of the 4 batch shards"):
        shd(placed, None, text[:2], mask[:2], 0)


def test_bf16_kernels_stored_in_the_compute_dtype_change_no_output_bit(small):
    """place_params stores the blocks' matmul kernels in bf16 for a bf16 model (the default on
    GPU/TPU): every use cast them anyway, so the program's logits and bits equal those from float32
    kernels exactly. On CPU the default keeps float32 (its bf16 matmuls upcast)."""
    import dataclasses

    cfg, params, text, mask = small
    cfg = dataclasses.replace(cfg, dtype="bfloat16")
    sampler = sample.Sampler(cfg, SMALL, return_logits=True, compiler_options=FAST, compute_dtype_kernels=True)
    placed, _ = sampler.place_params(params)
    assert placed["blocks_0"]["sa"]["mat_qkv"].dtype == jnp.bfloat16
    assert placed["blocks_0"]["sa"]["q_bias"].dtype == jnp.float32  # added in float32: kept
    assert placed["head"]["kernel"].dtype == jnp.float32  # the head runs in float32
    default, _ = sample.Sampler(cfg, SMALL).place_params(params)
    assert default["blocks_0"]["sa"]["mat_qkv"].dtype == jnp.float32
    sp = sample.sampling_params(len(SMALL), cfg=2.0)
    run = jax.jit(lambda p, t, m, s: sample.generate_tokens(cfg, SMALL, p, t, m, s, sp, return_logits=True))
    seeds = np.arange(8, dtype=np.uint32)
    ref = run(jax.tree.map(jnp.asarray, params), text, mask, seeds)
    got = run(placed, text, mask, seeds)
    np.testing.assert_array_equal(np.asarray(ref[0]), np.asarray(got[0]))
    np.testing.assert_array_equal(np.asarray(ref[2]), np.asarray(got[2]))


def test_negative_prompt_equal_to_the_null_text_changes_nothing(small):
    cfg, params, text, mask = small
    s = sample.Sampler(cfg, SMALL, return_logits=True, compiler_options=FAST)
    default = s(params, None, text[:2], mask[:2], 0, greedy=True)
    neg = np.asarray(null_text(params, jnp.asarray(mask[:2])))
    explicit = s(params, None, text[:2], mask[:2], 0, greedy=True, neg_text=neg, neg_mask=mask[:2])
    np.testing.assert_array_equal(np.asarray(default.bits), np.asarray(explicit.bits))
    np.testing.assert_allclose(np.asarray(default.logits), np.asarray(explicit.logits), atol=1e-6, rtol=0)
    other = s(params, None, text[:2], mask[:2], 0, greedy=True, neg_text=text[2:3], neg_mask=mask[2:3])
    assert not np.allclose(np.asarray(default.logits), np.asarray(other.logits), atol=1e-3)
    with pytest.raises(ValueError, match="no text tokens"):
        s(params, None, text[:2], np.zeros_like(mask[:2]), 0)
    holes = np.array(mask[:2])
    holes[1] = np.arange(holes.shape[1]) == 1  # padding first: the fused kernels take text padding as lengths
    with pytest.raises(ValueError, match=r"text_mask row 1 is \[0, 1.*real tokens first"):
        s(params, None, text[:2], holes, 0)
    with pytest.raises(ValueError, match="neg_mask row 1"):
        s(params, None, text[:2], mask[:2], 0, neg_text=text[:2], neg_mask=holes)


# ---------------------------------------------------------------- CLI and weights
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    fix = load_fixture("tiny")
    d = tmp_path_factory.mktemp("weights")
    fileio.save_params(conv_inf.torch_to_params(state_dict(fix, "gpt"), "tiny"), str(d / "gpt.npz"))
    fileio.save_params(
        conv_vae.torch_to_params(state_dict(fix, "vae"), conv_vae.load_config("tiny")), str(d / "vae.npz")
    )
    return d


def _cli(argv):
    from infinity_jax import commands

    return commands.main(["sample"] + argv)


def test_cli_writes_pngs_grid_and_summary(weights, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    (tmp_path / "prompts.txt").write_text("a photo of a red circle\n\na photo of two squares\n")
    out = tmp_path / "out"
    rc = _cli(
        [
            "--config",
            "tiny",
            "--checkpoint",
            str(weights / "gpt.npz"),
            "--vae",
            str(weights / "vae.npz"),
            "--vae-config",
            "tiny",
            "--text-encoder",
            "tiny-byt5",
            "--prompt",
            "a photo of a blue triangle",
            "--prompts-file",
            str(tmp_path / "prompts.txt"),
            "--schedule",
            "1x1,1x2,2x4,3x6",
            "--cfg",
            "lin:1:3",
            "--seed",
            "4",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "samples.json").read_text())
    assert [s["prompt"] for s in summary["samples"]] == [
        "a photo of a blue triangle",
        "a photo of a red circle",
        "a photo of two squares",
    ]
    assert [s["seed"] for s in summary["samples"]] == [4, 5, 6]
    assert summary["image_hw"] == [48, 96] and summary["cfg"] == pytest.approx([1, 5 / 3, 7 / 3, 3])
    img = np.asarray(Image.open(out / summary["samples"][2]["file"]))
    assert img.shape == (48, 96, 3) and img.dtype == np.uint8 and img.std() > 0
    assert np.asarray(Image.open(out / "grid.png")).shape == (2 * 48, 2 * 96, 3)
    err = capsys.readouterr().err
    assert "scale 4/4 (3x6) done" in err and "compile so far 0" not in err and "1 program(s)" in err
    # the shapes evaluator reads the folder as the sampler left it (samples.json, no captions.jsonl)
    from infinity_jax import commands

    assert commands.main(["eval", "shapes", "--samples", str(out)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["n"] == 3 and scored["counts"] == {"colors": 2, "counting": 1}


def test_cli_picks_the_nearest_official_template():
    import ml_collections

    from infinity_jax.generate import SampleOptions, resolve_schedule

    sched, template, pn = resolve_schedule(SampleOptions("run", "out", h_div_w=0.52, pn="0.06M"), None)
    assert template == 0.5 and sched[-1] == (1, 11, 22) and len(sched) == 7 and pn == "0.06M"
    sched, template, pn = resolve_schedule(SampleOptions("run", "out"), None)  # the default: 1M at h/w 1
    assert template == 1.0 and sched[-1] == (1, 64, 64) and len(sched) == 13 and pn == "1M"
    # a run's saved schedule: a budget's template follows --h-div-w, a custom one is kept unless --pn is given
    saved = lambda schedule: ml_collections.ConfigDict({"schedule": schedule, "data": {"h_div_w": 1.0}})
    assert resolve_schedule(SampleOptions("run", "out", h_div_w=0.52), saved("0.06M"))[:2] == schedules.resolve(
        "0.06M", 0.52
    )
    assert resolve_schedule(SampleOptions("run", "out"), saved("1x1,2x2")) == (((1, 1, 1), (1, 2, 2)), None, "1M")
    assert resolve_schedule(SampleOptions("run", "out", pn="0.06M"), saved("1x1,2x2"))[1] == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--checkpoint": "/nonexistent/gpt.npz"}, "does not exist"),
        ({"--pn": "2M"}, "pn='2M'"),
        ({"--h-div-w": "-1"}, "h_div_w=-1.0"),
        ({"--prompt": "  "}, "is empty"),
        ({"--config": "no_such_model"}, "no_such_model"),
    ],
)
def test_cli_reports_bad_arguments(weights, tmp_path, capsys, change, message):
    args = {
        "--config": "tiny",
        "--checkpoint": str(weights / "gpt.npz"),
        "--vae": str(weights / "vae.npz"),
        "--vae-config": "tiny",
        "--text-encoder": "tiny-byt5",
        "--prompt": "a cat",
        "--pn": "0.06M",
        "--out": str(tmp_path),
    }
    args.update(change)
    assert _cli([x for kv in args.items() for x in kv]) == 2
    assert message in capsys.readouterr().err


def test_load_weights_from_an_orbax_training_checkpoint(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    from etils import epath

    from infinity_jax.runs import load_weights

    params = {"head": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    ema = {"head": {"kernel": np.ones((2, 3), np.float32)}}
    mgr = ocp.CheckpointManager(
        epath.Path(tmp_path / "checkpoints"),
        item_names=("state", "config"),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()},
    )
    state = {"step": np.int32(5), "params": params, "ema_params": ema, "opt_state": {"mu": np.zeros(3, np.float32)}}
    mgr.save(
        5,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave({"model": {"depth": 2}})),
    )
    mgr.wait_until_finished()
    mgr.close()
    got, config = load_weights(str(tmp_path), "transformer")
    np.testing.assert_array_equal(got["head"]["kernel"], ema["head"]["kernel"])
    got, _ = load_weights(str(tmp_path), "transformer", prefer_ema=False)
    np.testing.assert_array_equal(got["head"]["kernel"], params["head"]["kernel"])
    assert config.model.depth == 2


def test_bench_sample_prints_a_row_and_its_profile(monkeypatch, capsys, tmp_path):
    from infinity_jax import commands

    monkeypatch.setattr(sample, "DEFAULT_COMPILER_OPTIONS", FAST)
    assert (
        commands.main(
            [
                "bench",
                "sample",
                "--config",
                "tiny",
                "--schedule",
                "1x1,2x2",
                "--vae-config",
                "none",
                "--runs",
                "2",
                "--warmup",
                "0",
                "--text-len",
                "4",
                "--profile",
                str(tmp_path),
                "--json",
                str(tmp_path / "rows.json"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["config", "pn", "image"] and table[1].split()[:3] == ["tiny", "1x1,2x2", "32x32"]
    assert table[2].startswith("tiny: profile, per call (2 recorded):")
    (row,) = json.load(open(tmp_path / "rows.json"))
    profile = row["profile"]  # the two calls' trace, per call: the transformer's matmuls, a busy device
    assert profile["by_kind"]["matmul"]["seconds"] > 0 and 0 < profile["busy_fraction"] <= 1
    assert sum(k["share"] for k in profile["by_kind"].values()) == pytest.approx(1)
    assert any(s["scope"] == "Infinity._blocks/blocks/sa" for s in profile["by_scope"])
    # the time of each scale (the sampler's named scopes), in order, then the rest (text, VAE: none here)
    assert [r["scale"] for r in profile["by_scale"]] == ["1x1", "2x2", "other"]
    assert all(r["seconds"] > 0 and r["tflop"] > 0 for r in profile["by_scale"][:2])  # utilisation: no CPU peak
