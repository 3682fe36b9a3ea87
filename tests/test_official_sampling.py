"""The sampler's per-bit filter and per-scale guidance against the official sampler's own functions.

tests/fixtures/official_sampling.npz (made by tests/fixtures/make_sampling_fixture.py from the
official infinity/models/infinity.py: sample_with_top_k_top_p_also_inplace_modifying_logits_ and
Infinity.autoregressive_infer_cfg) holds crafted bit-logit pairs (ties, top-p exactly at its `<=`
boundary and one float32 step either side, top-k 1 with equal logits, top_p 0 / 1 / tiny, large
gaps) with the logits the official filter keeps and the probability of bit 1 it then draws from,
random pairs under several settings, and the guided logits the official sampler filters at each
scale for given cond/uncond logits and cfg / tau lists.

Draws are not compared (a torch generator is not a JAX one). Instead `sample_bits` is probed with
uniforms: it returns 1 iff u < p1, so a bisection over float32 u in [0, 1] finds the p1 it draws
from exactly; that must equal the official p1 exactly where the official filter dropped a logit (p1
0 or 1) and to float32 rounding where it kept both. At the top-p boundary the official rule is
applied to our own p(smaller), which may differ from torch's softmax in its last bits (CPU torch vs
CUDA differ there too). `_p1_drawn` calls sample_bits as generate_tokens does: change both together.

Regenerate: INFINITY_REF_SRC=<official checkout> python tests/fixtures/make_sampling_fixture.py
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax import sample

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "official_sampling.npz")
RTOL, ATOL = 1e-6, 1e-12  # probabilities: sigmoid here, torch softmax there (up to 3 float32 steps apart)


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE) as f:
        data = dict(f)
    data["meta"] = json.loads(str(data.pop("meta/json")))
    return data


@jax.jit
def _p1_drawn(logits, top_k, top_p, floor):
    """The p1 sample_bits draws from, per pair: the smallest float32 u in [0, 1] giving bit 0
    (sample_bits gives 1 iff u < p1), by bisection over the float32 bit patterns."""
    n = logits.shape[0]
    one = jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32)

    def bit(u_bits):
        u = jax.lax.bitcast_convert_type(u_bits, jnp.float32)
        return sample.sample_bits(logits, u, top_k, top_p, jnp.bool_(False), floor)

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        zero = bit(mid) == 0
        return jnp.where(zero, lo, mid + 1), jnp.where(zero, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 32, body, (jnp.zeros(n, jnp.int32), jnp.full(n, one, jnp.int32)))
    return jax.lax.bitcast_convert_type(hi, jnp.float32)


def _ours(logits, top_k, top_p, via_sampling_params=False):
    """Our p1 per pair; top_k/top_p (N,) (top_p as the official Python floats) given to sample_bits
    directly, with the threshold generate_tokens gives it (sample.top_p_floor), or through
    sampling_params (the user-facing path)."""
    n = len(logits)
    top_k, top_p = np.broadcast_to(top_k, n), np.broadcast_to(np.asarray(top_p, np.float64), n)
    floor = np.array([sample.top_p_floor(p) for p in top_p], np.float32)
    if via_sampling_params:
        sps = [sample.sampling_params(1, top_k=int(k), top_p=float(p)) for k, p in zip(top_k, top_p)]
        top_k = np.array([s.top_k for s in sps], np.int32)
        floor = np.array([s.top_p_floor for s in sps], np.float32)
        top_p = np.array([s.top_p for s in sps], np.float32)
    return np.asarray(
        _p1_drawn(
            jnp.asarray(logits, jnp.float32),
            jnp.asarray(top_k, jnp.int32),
            jnp.asarray(top_p, jnp.float32),
            jnp.asarray(floor),
        )
    )


def _our_p0(logits):
    """Our probability of the smaller logit of each pair (what top-p compares): p1 of the pair with the
    smaller logit put as bit 1, unfiltered."""
    lo, hi = logits.min(-1), logits.max(-1)
    return _ours(np.stack([hi, lo], -1), 0, 0.0)


def _official_rule(p0, logits, top_k, top_p):
    """The official filter's rule for one bit, as its source reads: top-k 1 drops a strictly smaller logit;
    top-p > 0 drops the first of the ascending-sorted pair (on ties bit 0: CPU torch.sort) when its
    float32 softmax <= 1 - top_p, compared in float32 (torch casts the Python float). Returns
    (dropped, bit dropped)."""
    l0, l1 = logits[:, 0], logits[:, 1]
    small = np.where(l0 <= l1, 0, 1)
    by_k = (top_k == 1) & (l0 != l1)
    by_p = (top_p > 0) & (p0 <= (1 - np.asarray(top_p, np.float64)).astype(np.float32))
    return by_k | by_p, small


def _report(fx, rows, ours, extra=None):
    off, out = fx["filter/p1"], fx["filter/out"]
    return [
        f"{fx['filter/kind'][i]}: logits={fx['filter/logits'][i].tolist()} top_k={fx['filter/top_k'][i]} "
        f"top_p={float(fx['filter/top_p'][i])!r} official: p(smaller)={float(fx['filter/p0_sorted'][i])!r} "
        f"{'dropped' if np.isinf(out[i]).any() else 'kept both'} p1={float(off[i])!r}; ours p1={float(ours[i])!r}"
        + (f" {extra[i]}" if extra is not None else "")
        for i in rows
    ]


def _full(fx, sel, vals):
    """vals of the rows sel, spread over all fixture rows (NaN elsewhere)."""
    out = np.full(len(fx["filter/p1"]), np.nan, np.float32)
    out[sel] = vals
    return out


def _mismatches(fx, ours, sel):
    """Rows of sel where our p1 disagrees with the official one: exactly where the official filter dropped
    a logit (p1 0 or 1), else beyond float32 rounding (a pair we drop and it keeps lands here too)."""
    off = fx["filter/p1"]
    dropped = np.isinf(fx["filter/out"]).any(-1)
    bad = np.where(dropped, ours != off, ~np.isclose(ours, off, rtol=RTOL, atol=ATOL)) & sel
    return _report(fx, np.nonzero(bad)[0], ours)


def test_fixture_is_from_the_official_commit(fx):
    assert fx["meta"]["official_commit"] == "4c27bbb54a9918847a2fe56b0fbe31a8523791a1"
    kinds = set(fx["filter/kind"].tolist())
    assert {"tie", "top_k", "top_p_eq", "top_p_above", "top_p_below", "top_p_scan", "gap", "tiny_top_p"} <= kinds


def test_the_stated_rule_reproduces_the_official_filter(fx):
    """The rule _official_rule states (and sample.py's docstring) gives exactly what the official filter
    kept and dropped on every crafted case, fed with the official probabilities."""
    lg, out = fx["filter/logits"], fx["filter/out"]
    dropped, small = _official_rule(fx["filter/p0_sorted"], lg, fx["filter/top_k"], fx["filter/top_p"])
    np.testing.assert_array_equal(np.isinf(out).any(-1), dropped)
    np.testing.assert_array_equal(np.isinf(out[dropped]).argmax(-1), small[dropped])


def test_bisection_finds_the_drawn_probability_and_u_either_side_gives_the_bits(fx):
    """The probe itself: u one float32 step below our p1 draws 1, u = p1 draws 0."""
    lg, k, p = fx["filter/logits"], fx["filter/top_k"], fx["filter/top_p"]
    p1 = _ours(lg, k, p)
    ok = p1 > 0
    below = np.where(ok, np.nextafter(p1, np.float32(0)), 0).astype(np.float32)
    args = jnp.asarray(k), jnp.asarray(p, jnp.float32), False, jnp.asarray([sample.top_p_floor(x) for x in p])
    b_lo = np.asarray(sample.sample_bits(jnp.asarray(lg), jnp.asarray(below), *args))
    b_at = np.asarray(sample.sample_bits(jnp.asarray(lg), jnp.asarray(np.minimum(p1, np.float32(1 - 2**-24))), *args))
    assert np.all(b_lo[ok] == 1)
    assert np.all(b_at[p1 < 1] == 0) and np.all(b_at[p1 == 1] == 1)


def test_probability_of_the_smaller_logit_matches_official_to_float32_rounding(fx):
    p0, off = _our_p0(fx["filter/logits"]), fx["filter/p0_sorted"]
    np.testing.assert_allclose(p0, off, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["tie", "top_k", "gap"])
def test_sample_bits_filters_ties_top_k_and_large_gaps_as_official(fx, kind):
    sel = fx["filter/kind"] == kind
    ours = _ours(fx["filter/logits"], fx["filter/top_k"], fx["filter/top_p"])
    bad = _mismatches(fx, ours, sel)
    assert not bad, f"{len(bad)}/{sel.sum()} differ:\n" + "\n".join(bad[:20])


def test_sample_bits_applies_the_official_top_p_rule_at_its_boundary(fx):
    """Pairs whose p(smaller) is float32(1 - top_p) exactly, a float32 step either side, and a dense scan
    across the boundary: sample_bits must apply the official rule (float32(1 - top_p), `<=`, ties to bit 0)
    to its own p(smaller) -- exactly, whatever the last-bit rounding of that probability."""
    sel = np.char.startswith(fx["filter/kind"], "top_p_")
    lg, k, p = fx["filter/logits"][sel], fx["filter/top_k"][sel], fx["filter/top_p"][sel]
    ours = _ours(lg, k, p)
    dropped, small = _official_rule(_our_p0(lg), lg, k, p)
    kept_p1 = _ours(lg, 0, 0.0)
    want = np.where(dropped, (small == 0).astype(np.float32), kept_p1)
    bad = np.nonzero(ours != want)[0]
    rows = np.nonzero(sel)[0][bad]
    thr_ours = np.float32(1) - p.astype(np.float32)
    thr_off = (1 - p).astype(np.float32)
    extra = {
        r: f"(threshold: official float32(1 - top_p) = {float(thr_off[b])!r}, ours 1 - float32(top_p) = "
        f"{float(thr_ours[b])!r})"
        for r, b in zip(rows, bad)
    }
    assert not len(bad), f"{len(bad)}/{sel.sum()} boundary cases differ:\n" + "\n".join(
        _report(fx, rows[:24], _full(fx, sel, ours), extra)
    )


def test_sample_bits_top_p_boundary_matches_the_official_outputs(fx):
    """The same cases against the official outputs directly, leaving out the pairs where our p(smaller)
    and the official one round to different sides of the threshold (test above covers those)."""
    sel = np.char.startswith(fx["filter/kind"], "top_p_")
    lg, k, p = fx["filter/logits"], fx["filter/top_k"], fx["filter/top_p"]
    same_side = _official_rule(_our_p0(lg), lg, k, p)[0] == _official_rule(fx["filter/p0_sorted"], lg, k, p)[0]
    ours = _ours(lg, k, p)
    bad = _mismatches(fx, ours, sel & same_side)
    assert not bad, f"{len(bad)}/{(sel & same_side).sum()} boundary cases differ:\n" + "\n".join(bad[:24])


def test_sampling_params_top_k_top_p_as_official(fx):
    """The user-facing path: top_k / top_p as Python numbers through sampling_params, on the cases away
    from the top-p boundary (tiny top_p included: the official sampler hands a given top_p to the
    filter as is; only the model's own default top_p is zeroed below 1e-5)."""
    sel = ~np.char.startswith(fx["filter/kind"], "top_p_")
    ours = _ours(fx["filter/logits"], fx["filter/top_k"], fx["filter/top_p"], True)
    bad = _mismatches(fx, ours, sel)
    assert not bad, f"{len(bad)}/{sel.sum()} differ:\n" + "\n".join(bad[:24])


def test_random_pairs_draw_with_the_official_probability(fx):
    lg, p1 = fx["random/logits"], fx["random/p1"]
    for s, (k, p) in enumerate(zip(fx["random/top_k"], fx["random/top_p"])):
        ours, off = _ours(lg, k, p, True), p1[s]
        dropped = (off == 0) | (off == 1)
        bad = np.where(dropped, ours != off, ~np.isclose(ours, off, rtol=RTOL, atol=ATOL))
        assert not bad.any(), (
            f"top_k={k} top_p={p}: {bad.sum()}/{len(lg)} differ, e.g. logits={lg[bad][:3].tolist()} "
            f"official p1={off[bad][:3].tolist()} ours={ours[bad][:3].tolist()}"
        )


# ---------------------------------------------------------------- per-scale guidance
def _guided(fx, cfg, tau, jit):
    """Our per-scale logits as generate_tokens makes them: x * inv_tau[k], then guide on the
    interleaved (cond_0, uncond_0, ...) rows when some scale has cfg != 1. (K, B, l_max*d, 2)."""
    cond, uncond, lengths = fx["guide/cond"], fx["guide/uncond"], fx["guide/lengths"]
    K, B, lmax, V = cond.shape
    sp = sample.sampling_params(K, cfg=list(cfg), tau=list(tau))
    with_uncond = sample.uses_guidance(sp)

    def one(x, k, sp):
        x = x * sp.inv_tau[k]
        return sample.guide(x, sp.cond_w[k], sp.uncond_w[k]) if with_uncond else x

    out = np.zeros((K, B, lmax * V // 2, 2), np.float32)
    for k, n in enumerate(lengths):
        x = np.stack([cond[k, :, :n], uncond[k, :, :n]], 1).reshape(2 * B, n, V) if with_uncond else cond[k, :, :n]
        f = jax.jit(one, static_argnums=1) if jit else one
        g = np.asarray(f(jnp.asarray(x), k, jax.tree.map(jnp.asarray, sp)))
        out[k, :, : n * V // 2] = g.reshape(B, n * V // 2, 2)
    return out, with_uncond


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_per_scale_cfg_and_tau_as_official(fx, jit):
    B = fx["meta"]["batch"]
    ran = 0
    for name in fx["meta"]["guide_cases"]:
        p = f"guide/{name}/"
        if int(fx[p + "raises"]):
            continue
        ours, with_uncond = _guided(fx, fx[p + "cfg"], fx[p + "tau"], jit)
        assert with_uncond == bool(np.any(fx[p + "rows"] == 2 * B)), name  # the official bs = 2B iff any cfg != 1
        np.testing.assert_allclose(ours, fx[p + "out"], rtol=1e-6, atol=1e-6, err_msg=name)
        ran += 1
    assert ran >= 5


def test_cfg_tau_lists_shorter_than_the_schedule(fx):
    """The official sampler asserts len(cfg_list), len(tau_list) >= K (a longer list: its first K, the
    'longer' case above). Ours accepts a shorter one and repeats its last value: an extension."""
    K = len(fx["guide/lengths"])
    for name in ("short_cfg", "short_tau"):
        p = f"guide/{name}/"
        assert int(fx[p + "raises"]) == 1
        cfg, tau = fx[p + "cfg"], fx[p + "tau"]
        assert min(len(cfg), len(tau)) < K
        np.testing.assert_array_equal(sample.per_scale(list(cfg), K), np.r_[cfg, np.full(K - len(cfg), cfg[-1])][:K])
