"""The attention entry point (model/attention.py): every path against the dense reference, kernel
selection, the model's parity with the official fixtures on the chunked path, and memory.

The cuDNN path cannot run on CPU; its calls (jax.nn.dot_product_attention with no bias or mask: one
per query scale against its key prefix, padding as key lengths) are checked here with jax's own 'xla'
implementation of the same function, so only the kernel itself is left to the accelerator.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax.model import attention as A
from infinity_jax.model import transformer as T
from tests.test_transformer import Case, decode_all, max_abs

SCALE_LENGTHS = (1, 4, 16, 36, 64)  # 121 tokens: several chunks of 16 / 32 below, none full


def _ids(lengths=SCALE_LENGTHS):
    return np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)


def _qkv(l, m, b=2, h=2, c=16, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, l, h, c))
    k, v = rng.normal(size=(2, b, m, h, c))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _cases():
    """(name, l, m, q_scales, kv_scales, kv_valid): the three ways the model attends."""
    ids = _ids()
    n = len(ids)
    valid = np.ones((2, 7), bool)
    valid[0, 5:] = False  # example 0 has 5 real text tokens of 7
    return [
        ("block_causal", n, n, ids, ids, None),
        ("cached_prefix", 64, n, None, None, None),
        ("padded_text", n, 7, None, None, jnp.asarray(valid)),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_chunked_equals_dense_values_and_gradients(case):
    _, l, m, qs, ks, valid = case
    q, k, v = _qkv(l, m)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    dense = lambda q, k, v: A.dense_attention(q, k, v, 0.7, qs, ks, valid)  # noqa: E731
    chunked = lambda q, k, v: A.chunked_attention(q, k, v, 0.7, qs, ks, valid, q_chunk=16, kv_chunk=32)  # noqa: E731
    assert max_abs(dense(q, k, v), chunked(q, k, v)) <= 2e-6
    g_ref = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
    g = jax.grad(loss(chunked), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_ref, g):
        assert max_abs(a, b) <= 1e-5


def _cudnn_cases():
    """The model's three cases plus block-causal with padded keys (both masks at once)."""
    ids = _ids()
    valid = np.ones((2, len(ids)), bool)
    valid[1, 30:] = False
    return [*_cases(), ("block_causal_padded", len(ids), len(ids), ids, ids, jnp.asarray(valid))]


@pytest.mark.parametrize("small_prefix", [0, 21, 10**6], ids=["all_calls", "dense_first", "all_dense"])
@pytest.mark.parametrize("case", _cudnn_cases(), ids=lambda c: c[0])
def test_the_cudnn_calls_have_the_reference_semantics(case, small_prefix):
    """fused_attention's calls (one per query scale against its key prefix, the first scales dense, key
    lengths for padding) through jax.nn's 'xla' implementation give the dense reference, gradients too."""
    _, l, m, qs, ks, valid = case
    q, k, v = _qkv(l, m)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    ref = lambda q, k, v: A.dense_attention(q, k, v, 0.7, qs, ks, valid)  # noqa: E731
    fused = lambda q, k, v: A.fused_attention(  # noqa: E731
        q, k, v, 0.7, qs, ks, valid, implementation="xla", small_prefix=small_prefix
    )
    out = fused(q, k, v)
    assert out.shape == (2, l, 2, 16) and max_abs(out, ref(q, k, v)) <= 2e-6
    for a, b in zip(jax.grad(loss(ref), (0, 1, 2))(q, k, v), jax.grad(loss(fused), (0, 1, 2))(q, k, v)):
        assert max_abs(a, b) <= 1e-5


def test_the_cudnn_path_gives_cudnn_no_bias_no_mask_and_even_lengths(monkeypatch):
    """jax asks cuDNN for a bias's gradient whenever a bias is given, which cuDNN does not compute for a
    broadcast mask: the path must call it with neither, one call per scale past the dense first ones, each
    query scale against its key prefix. Differentiated, jax's cuDNN wrapper refuses odd lengths (it checks
    them as if a bias were given; the 2B training step failed on 'Q 144, KV 265' compiling for an H100), so
    odd ones are padded by a key the key lengths hide and a query whose row is dropped."""
    calls = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, bias=None, mask=None, **kw):
        calls.append((q.shape[1], k.shape[1], bias, mask, kw.get("key_value_seq_lengths")))
        return real(q, k, v, bias, mask, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    (_, l, m, ids, _, _), (_, _, _, _, _, valid) = _cudnn_cases()[0], _cudnn_cases()[3]
    q, k, v = _qkv(l, m)
    A.fused_attention(q, k, v, 1.0, ids, ids, valid, implementation="xla", small_prefix=21)
    assert [(a, b) for a, b, *_ in calls] == [(36, 58), (64, 122)]  # scales 3 and 4; 0-2 (21 keys) dense
    assert all(bias is None and mask is None for _, _, bias, mask, _ in calls)
    assert [np.asarray(n).tolist() for *_, n in calls] == [[57, 30], [121, 30]]
    calls.clear()
    A.fused_attention(q[:, :63], k, v, 1.0, implementation="xla")  # the sampler's prefix: one call
    assert [c[:4] for c in calls] == [(64, 122, None, None)] and np.asarray(calls[0][4]).tolist() == [121, 121]
    calls.clear()
    A.fused_attention(q[:, :64], k[:, :120], v[:, :120], 1.0, implementation="xla")  # even: as it is
    assert [c[:4] for c in calls] == [(64, 120, None, None)] and calls[0][4] is None
    calls.clear()
    # never differentiated (the sampler's calls): odd lengths as they are, no padded copy, same values
    odd = A.fused_attention(q[:, :63], k, v, 1.0, implementation="xla", even_lengths=False)
    assert [c[:4] for c in calls] == [(63, 121, None, None)] and calls[0][4] is None
    padded = A.fused_attention(q[:, :63], k, v, 1.0, implementation="xla")
    np.testing.assert_allclose(np.asarray(odd), np.asarray(padded), rtol=1e-6, atol=1e-6)


def test_the_cudnn_path_leaves_trailing_hidden_keys_in_place(monkeypatch):
    """A sequence evened by a padding token after the last scale (its key hidden from every query, as
    Infinity.__call__ adds for cuDNN): every call has even lengths without a padded copy (an odd prefix takes
    the next key, hidden by the key lengths; the last call gets k whole), the real rows and their gradients
    are the dense reference's on the real tokens, and the padding's rows are zero."""
    calls = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, bias=None, mask=None, **kw):
        calls.append((q.shape[1], k.shape[1], kw.get("key_value_seq_lengths")))
        return real(q, k, v, bias, mask, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    ids = _ids()
    n = len(ids)
    q_ids, kv_ids = np.r_[ids, ids[-1]], np.r_[ids, A.HIDDEN_ID]
    q, k, v = _qkv(n + 1, n + 1)

    def fused(q, k, v):
        return A.fused_attention(q, k, v, 0.7, q_ids, kv_ids, implementation="xla", small_prefix=21)

    def ref(q, k, v):
        return A.dense_attention(q[:, :n], k[:, :n], v[:, :n], 0.7, ids, ids)

    out = fused(q, k, v)
    assert [(a, b) for a, b, _ in calls] == [(36, 58), (64, 122)]  # 57 and 121 keys: 58 and all 122, no pad
    assert [np.asarray(lengths).tolist() for *_, lengths in calls] == [[57, 57], [121, 121]]
    assert max_abs(out[:, :n], ref(q, k, v)) <= 2e-6 and not np.any(np.asarray(out[:, n:]))
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)[:, :n]))  # noqa: E731
    for a, b in zip(jax.grad(loss(fused), (0, 1, 2))(q, k, v), jax.grad(loss(ref), (0, 1, 2))(q, k, v)):
        assert max_abs(a, b) <= 1e-5  # as the unpadded calls' (test_the_cudnn_calls_have_the_reference_semantics)
    with pytest.raises(ValueError, match="hidden keys must trail"):
        A.fused_attention(
            q, k, v, 0.7, q_ids, np.where(np.arange(n + 1) == 5, A.HIDDEN_ID, kv_ids), implementation="xla"
        )


def test_prefix_groups_of_block_causal_ids():
    assert A.prefix_groups(_ids(), _ids()) == [(0, 1, 1), (1, 5, 5), (5, 21, 21), (21, 57, 57), (57, 121, 121)]
    assert A.prefix_groups(np.array([1, 1, 2]), np.array([0, 1, 1, 2, 2])) == [(0, 2, 3), (2, 3, 5)]
    with pytest.raises(ValueError, match="nondecreasing"):
        A.prefix_groups(np.array([1, 0]), np.array([0, 1]))


def test_bf16_chunked_stays_close_to_float32():
    ids = _ids()
    q, k, v = _qkv(len(ids), len(ids))
    ref = A.dense_attention(q, k, v, 1.0, ids, ids)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    lo = A.chunked_attention(q16, k16, v16, 1.0, ids, ids, q_chunk=16, kv_chunk=32)
    dense_lo = A.dense_attention(q16, k16, v16, 1.0, ids, ids)
    assert lo.dtype == jnp.bfloat16 and max_abs(lo, ref) <= 1.5 * max_abs(dense_lo, ref) <= 6e-2


def test_kernel_selection_by_backend_dtype_and_head_width():
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert A.select_implementation("auto", bf16, 128, "gpu") == "cudnn"
    assert A.select_implementation("auto", bf16, 96, "gpu") == "cudnn"
    assert A.select_implementation("auto", f32, 128, "gpu") == "chunked"  # cuDNN: 16-bit only
    assert A.select_implementation("auto", bf16, 256, "gpu") == "chunked"  # wider than 128
    assert A.select_implementation("auto", bf16, 128, "tpu") == "splash"
    assert A.select_implementation("auto", bf16, 128, "cpu") == "chunked"
    assert A.select_implementation("xla", bf16, 128, "gpu") == "xla"
    with pytest.raises(ValueError, match="'flash'.*expected one of"):
        A.select_implementation("flash", bf16, 128)
    with pytest.raises(ValueError, match="attention='flash'"):
        T.InfinityConfig(attention="flash")
    q, k, v = _qkv(4, 4)
    with pytest.raises(ValueError, match="'cudnn' needs bfloat16/float16.*float32"):
        A.attention(q, k, v, scale=1.0, implementation="cudnn")
    with pytest.raises(ValueError, match="both q_scales and kv_scales"):
        A.attention(q, k, v, scale=1.0, q_scales=np.zeros(4, np.int32))
    with pytest.raises(ValueError, match=r"kv_valid \(2, 3\): expected \(2, 4\)"):
        A.attention(q, k, v, scale=1.0, kv_valid=jnp.ones((2, 3), bool))


def test_splash_path_through_the_entry_point_runs_in_interpret_mode_off_tpu():
    ids = _ids((1, 4, 16))
    q, k, v = _qkv(len(ids), len(ids))
    out = A.attention(q, k, v, scale=1.0, q_scales=ids, kv_scales=ids, implementation="splash")
    assert max_abs(out, A.dense_attention(q, k, v, 1.0, ids, ids)) <= 1e-5


def test_chunked_attention_keeps_no_score_matrix():
    """XLA's memory analysis: at 4,096 queries x 10,521 keys (the last 1M scale) float32 scores
    would be 2 x 2 x 4096 x 10521 x 4 B = 0.64 GiB; the chunked form stays within a few of its
    512 x 1024 blocks plus its output."""
    l, m, b, h, c = 4096, 10521, 2, 2, 64
    args = [jax.ShapeDtypeStruct((b, n, h, c), jnp.bfloat16) for n in (l, m, m)]

    def temp(fn):
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    scores = b * h * l * m * 4
    chunked = temp(lambda q, k, v: A.chunked_attention(q, k, v, 1.0))
    assert chunked <= 12 * b * h * A.Q_CHUNK * A.KV_CHUNK * 4 + 4 * b * l * h * c * 4  # blocks + output/acc
    assert chunked < scores / 4


# ---------------------------------------------------------------- the model on the chunked path
@pytest.fixture()
def small_chunks(monkeypatch):
    """Blocks small enough that the fixtures' 7-scale sequences take the multi-chunk path."""
    monkeypatch.setattr(A, "Q_CHUNK", 16)
    monkeypatch.setattr(A, "KV_CHUNK", 32)


@pytest.mark.parametrize("name", ["tiny"])
def test_official_parity_holds_on_the_multi_chunk_path(name, small_chunks):
    """Teacher-forced logits (1e-4) and KV-cached decode (1e-5 vs teacher forcing) as in
    test_transformer, with every attention split into 16-query / 32-key chunks."""
    case = Case(name)
    cfg = dataclasses.replace(case.cfg, attention="chunked")
    model, sched, f = T.Infinity(cfg), case.sched, case.f
    assert schedules_tokens(sched) > 32
    tf = jax.jit(lambda p: model.apply({"params": p}, case.text, case.mask, f["tf/x_wo_prefix"], sched))(case.params)
    assert max_abs(tf, f["tf/logits"]) <= 1e-4
    dec = jax.jit(lambda p: decode_all(model, cfg, p, case.text, case.mask, f["tf/x_wo_prefix"], sched))(case.params)
    assert max_abs(dec, tf) <= 1e-5


@pytest.mark.parametrize("small_prefix", [0, 21])
def test_official_parity_holds_on_the_cudnn_calls(small_prefix, monkeypatch):
    """The model with attention='cudnn' (self-attention per scale against its key prefix, text padding as
    key lengths, the pooled query of length 1, the odd sequence evened by one padding token), its calls
    through jax.nn's 'xla' kernel on CPU: teacher-forced logits as test_transformer's (1e-4), parameter
    gradients as the dense path's."""
    real, pad, padded = jax.nn.dot_product_attention, A._pad_to_even, []
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: real(*a, **dict(kw, implementation="xla")))
    monkeypatch.setattr(A, "_pad_to_even", lambda x: padded.append(x.shape[1]) or pad(x))
    monkeypatch.setattr(A, "cudnn_supports", lambda dtype, head_dim: True)
    monkeypatch.setattr(A, "SMALL_PREFIX", small_prefix)
    case = Case("tiny")
    sched, f, x = case.sched, case.f, case.f["tf/x_wo_prefix"]
    models = {name: T.Infinity(dataclasses.replace(case.cfg, attention=name)) for name in ("cudnn", "xla")}
    tf = jax.jit(lambda p: models["cudnn"].apply({"params": p}, case.text, case.mask, x, sched))(case.params)
    assert max_abs(tf, f["tf/logits"]) <= 1e-4
    # tiny's 521 tokens run as 522 (one padding token): no call pads an odd sequence or key prefix of them
    # (only a single query and the text's keys are padded)
    assert schedules_tokens(sched) == 521 and {n for n in padded if n % 2} <= {1, case.text.shape[1]}, padded

    def grads(model):
        loss = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, case.text, case.mask, x, sched)))  # noqa: E731
        return jax.tree.leaves(jax.jit(jax.grad(loss))(case.params))

    for a, b in zip(grads(models["cudnn"]), grads(models["xla"])):
        assert max_abs(a, b) <= 1e-4 * max(1.0, float(jnp.max(jnp.abs(b))))


def schedules_tokens(sched) -> int:
    return sum(t * h * w for t, h, w in sched)


def test_splash_runs_per_shard_under_a_mesh():
    """Under a (data 2, fsdp 2, tensor 2) mesh of host devices the one-device kernel runs on each
    device's batch and head shard (shard_map) and gives the dense result."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from infinity_jax import parallel

    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    ids = _ids((1, 4, 16))
    q, k, v = _qkv(len(ids), len(ids), b=4)
    valid = jnp.ones((4, len(ids)), bool).at[1, 10:].set(False)
    sh = NamedSharding(mesh, P(parallel.BATCH_AXES, None, "tensor", None))
    q, k, v = (jax.device_put(x, sh) for x in (q, k, v))
    fn = jax.jit(
        lambda q, k, v, m: A.attention(
            q, k, v, scale=1.0, q_scales=ids, kv_scales=ids, kv_valid=m, implementation="splash"
        )
    )
    with jax.set_mesh(mesh):
        out = fn(q, k, v, valid)
        assert "shard_map" in str(fn.trace(q, k, v, valid).jaxpr)
    assert max_abs(out, A.dense_attention(q, k, v, 1.0, ids, ids, valid)) <= 1e-5


def test_bench_attention_prints_every_kernel_against_the_reference(tmp_path, capsys):
    import json

    from infinity_jax import commands

    out = tmp_path / "a.json"
    assert (
        commands.main(
            [
                "bench",
                "attention",
                "--runs",
                "1",
                "--heads",
                "1",
                "--head-dim",
                "16",
                "--sample-pn",
                "0.06M",
                "--interpret",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["case", "impl"]
    rows = json.loads(out.read_text())
    assert {(r["case"], r["impl"]) for r in rows} == {
        (c, i) for c in ("train", "sample", "text") for i in ("xla", "chunked", "splash")
    }
    assert all("skip" not in r and r["max_err"] <= 1e-5 and r["fwd_bwd_ms"] > 0 for r in rows)
