"""Scores vs few-line NumPy references (float64), ΔEnergy identities, dispatcher and input checks."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaenergy import scores as S


# --- NumPy references ------------------------------------------------------------------------------
def np_lse(z, axis=-1):
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_softmax(z):
    return np.exp(z - np_lse(z)[..., None])


def ref_msp(s, tau):
    return np_softmax(s / tau).max(axis=1)


def ref_maxlogit(s, tau):
    return s.max(axis=1) / tau


def ref_energy(s, tau):
    return tau * np_lse(s / tau)


def ref_entropy(s, tau):
    logp = s / tau - np_lse(s / tau)[:, None]
    return (np.exp(logp) * logp).sum(axis=1)


def ref_glmcm(s, loc, tau, lam):
    return ref_msp(s, tau) + lam * np_softmax(loc / tau).max(axis=(1, 2))


def ref_neglabel(pos, neg, tau, groups):
    """Loop over groups (lists of negative column indices) with a plain softmax over [pos, neg_g]."""
    out = []
    for g in groups:
        full = np_softmax(np.concatenate([pos, neg[:, g]], axis=1) / tau)
        out.append(full[:, : pos.shape[1]].sum(axis=1))
    return np.mean(out, axis=0)


def ref_energy_E(s, tau):
    return -tau * np_lse(s / tau)


def ref_delta_energy(s, c, tau, v):
    top = np.argsort(-s, axis=1, kind="stable")[:, :c]
    reset = s.copy()
    np.put_along_axis(reset, top, v, axis=1)
    return ref_energy_E(reset, tau) - ref_energy_E(s, tau)


def ref_delta_energy_text_mask(f, t, c, tau):
    s = f @ t.T
    reset = s.copy()
    for i in range(s.shape[0]):
        for j in np.argsort(-s[i], kind="stable")[:c]:
            tj = t[j].copy()
            tj[f[i] * tj > 0] = 0.0
            reset[i, j] = f[i] @ tj
    return ref_energy_E(reset, tau) - ref_energy_E(s, tau)


# --- helpers -------------------------------------------------------------------------------------------
def sims_np(n, k, seed=0, low=-0.2, high=0.5):
    return np.random.default_rng(seed).uniform(low, high, size=(n, k))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def tunit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def check(got, want, dtype):
    assert got.shape == (len(want),) and got.dtype == dtype
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(got.double().numpy(), want, **tol)


GRID = [(n, k) for n in (1, 7, 64) for k in (2, 5, 50)]
TAUS = (0.01, 0.1, 1.0)
DTYPES = (torch.float64, torch.float32)


# --- each score vs its reference --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n,k", GRID)
@pytest.mark.parametrize(
    "name,ref",
    [("msp", ref_msp), ("maxlogit", ref_maxlogit), ("energy", ref_energy), ("entropy", ref_entropy),
     ("mcm", ref_msp)],
)
def test_simple_scores_match_numpy(name, ref, n, k, tau, dtype):
    s = sims_np(n, k, seed=n * k)
    got = getattr(S, name)(torch.tensor(s, dtype=dtype), tau=tau)
    check(got, ref(s, tau), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("lam", (0.0, 1.0, 0.5))
@pytest.mark.parametrize("n,k,p", [(1, 2, 1), (9, 5, 4), (30, 20, 7)])
def test_glmcm_matches_numpy(n, k, p, lam, tau, dtype):
    rng = np.random.default_rng(p)
    s, loc = rng.uniform(-0.2, 0.5, (n, k)), rng.uniform(-0.2, 0.5, (n, p, k))
    got = S.glmcm(torch.tensor(s, dtype=dtype), torch.tensor(loc, dtype=dtype), tau=tau, lam=lam)
    check(got, ref_glmcm(s, loc, tau, lam), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n,k,m,ngroup", [(1, 2, 1, 100), (8, 5, 30, 1), (8, 5, 30, 4), (20, 10, 97, 10),
                                          (5, 3, 12, 100)])
def test_neglabel_matches_group_loop(n, k, m, ngroup, tau, dtype):
    rng = np.random.default_rng(m)
    pos, neg = rng.uniform(-0.2, 0.5, (n, k)), rng.uniform(-0.2, 0.5, (n, m))
    got = S.neglabel(torch.tensor(pos, dtype=dtype), torch.tensor(neg, dtype=dtype), tau=tau,
                     ngroup=ngroup, seed=3)
    g = min(ngroup, m)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(3)).numpy()
    groups = [perm[i * (m // g) : (i + 1) * (m // g)] for i in range(g)]
    check(got, ref_neglabel(pos, neg, tau, groups), dtype)


def test_neglabel_ungrouped_is_plain_formula_and_seeded():
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0, 0.4, (6, 4)), rng.uniform(0, 0.4, (6, 40))
    tp, tn = torch.tensor(pos), torch.tensor(neg)
    e_pos, e_neg = np.exp(pos / 0.01).sum(1), np.exp(neg / 0.01).sum(1)
    np.testing.assert_allclose(S.neglabel(tp, tn, ngroup=1).numpy(), e_pos / (e_pos + e_neg), rtol=1e-12)
    a, b = S.neglabel(tp, tn, ngroup=8, seed=5), S.neglabel(tp, tn, ngroup=8, seed=5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, S.neglabel(tp, tn, ngroup=8, seed=6))


def test_neglabel_is_stable_for_huge_logits():
    s = torch.tensor([[1.0, 0.9], [0.3, -1.0]], dtype=torch.float64)
    neg = torch.tensor([[0.95, 0.2, 0.1], [0.9, 0.0, -1.0]], dtype=torch.float64)
    got = S.neglabel(s, neg, tau=1e-3, ngroup=1)  # logits up to 1000: exp overflows naively
    want = [1 / (1 + math.exp(-50)), math.exp(-600)]  # leading terms; the rest are below e^-100
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)


# --- ΔEnergy ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", (0.0, 0.1, -0.3))
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n,k", GRID)
def test_delta_energy_matches_numpy(n, k, tau, v, dtype):
    s = sims_np(n, k, seed=7 * k + n)
    for c in sorted({1, 2, k}):
        got = S.delta_energy(torch.tensor(s, dtype=dtype), c=c, tau=tau, reset_value=v)
        check(got, ref_delta_energy(s, c, tau, v), dtype)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 20), k=st.integers(1, 30), data=st.data(), tau=st.sampled_from(TAUS),
       v=st.floats(-1, 1), seed=st.integers(0, 2**31), ties=st.booleans())
def test_delta_energy_property(n, k, data, tau, v, seed, ties):
    c = data.draw(st.integers(1, k))
    s = sims_np(n, k, seed=seed, low=-1, high=1)
    if ties:  # ties at the top-c boundary: the reset multiset, hence ΔE, does not depend on tie order
        s = np.round(s, 1)
    got = S.delta_energy(torch.tensor(s), c=c, tau=tau, reset_value=v)
    np.testing.assert_allclose(got.numpy(), ref_delta_energy(s, c, tau, v), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("c", (1, 2, 5))
def test_delta_energy_sign(c):
    s = torch.tensor(sims_np(200, 10, seed=c, low=0.05, high=0.5))
    assert (S.delta_energy(s, c=c, reset_value=0.0) > 0).all()  # top-c exceed v: energy rises
    assert (S.delta_energy(s, c=c, reset_value=0.6) < 0).all()  # v above every sim: energy falls


def test_delta_energy_c1_ranks_like_mcm_at_same_tau():
    s = torch.tensor(sims_np(500, 10, seed=1, low=0.2, high=0.4))
    de = S.delta_energy(s, c=1, tau=0.01).numpy()
    mcm = S.mcm(s, tau=0.01).numpy()
    assert len(np.unique(mcm)) == 500
    np.testing.assert_array_equal(np.argsort(de), np.argsort(mcm))


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("v", (0.0, 0.2, -0.5))
@pytest.mark.parametrize("c", (1, 2, 4))
def test_delta_energy_exact_softmax_identity(c, v, tau):
    """ΔE_c = -tau log(1 - sum_{j in C} p_j + c exp(v/tau) / Z), Z = sum_k exp(s_k/tau): exact.

    1 - sum_{j in C} p_j is evaluated as sum_{j not in C} p_j (no cancellation when p_C ~ 1).
    """
    s = sims_np(50, 8, seed=c, low=-0.3, high=0.3)
    p = np_softmax(s / tau)
    p_rest = np.sort(p, axis=1)[:, : 8 - c].sum(axis=1)
    want = -tau * np.log(p_rest + c * np.exp(v / tau - np_lse(s / tau)))
    got = S.delta_energy(torch.tensor(s), c=c, tau=tau, reset_value=v).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("c", (1, 2, 3))
def test_delta_energy_small_tau_approximation(c):
    """v = 0: the extra term c/Z is below e^-20 relative when all sims >= 0.2 at tau = 0.01."""
    s = sims_np(300, 10, seed=c, low=0.2, high=0.4)
    p = np_softmax(s / 0.01)
    approx = -0.01 * np.log(1 - np.sort(p, axis=1)[:, ::-1][:, :c].sum(axis=1))
    got = S.delta_energy(torch.tensor(s), c=c, tau=0.01).numpy()
    np.testing.assert_allclose(got, approx, rtol=1e-6)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("v", (0.0, 0.3))
def test_delta_energy_at_c_equal_k_is_energy_minus_constant(tau, v):
    """c = K: s̃ = v·1, E(s̃) = -v - tau log K, so ΔE = energy(s) - v - tau log K."""
    k = 7
    s = torch.tensor(sims_np(40, k, seed=2))
    got = S.delta_energy(s, c=k, tau=tau, reset_value=v)
    want = S.energy(s, tau=tau) - v - tau * math.log(k)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n,k,d", [(1, 1, 3), (6, 4, 8), (25, 12, 16)])
def test_delta_energy_text_mask_matches_loop(n, k, d, tau, dtype):
    rng = np.random.default_rng(d)
    f, t = unit(rng.normal(size=(n, d))), unit(rng.normal(size=(k, d)))
    tf, tt = torch.tensor(f, dtype=dtype), torch.tensor(t, dtype=dtype)
    for c in sorted({1, 2, k} & set(range(1, k + 1))):
        got = S.delta_energy(tf @ tt.T, c=c, tau=tau, reset_mode="text_mask", image_features=tf,
                             text_features=tt)
        check(got, ref_delta_energy_text_mask(f, t, c, tau), dtype)


def test_delta_energy_text_mask_resets_to_the_negative_part():
    f = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.6, -0.8, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    s = f @ t.T  # [-0.28, 0.48]: top-1 is class 1, all products >= 0, so it is masked to 0
    got = S.delta_energy(s, c=1, tau=0.1, reset_mode="text_mask", image_features=f, text_features=t)
    want = S.delta_energy(s, c=1, tau=0.1, reset_value=0.0)
    assert torch.allclose(got, want, rtol=1e-12)


def test_row_blocks_give_the_same_scores(monkeypatch):
    rng = np.random.default_rng(4)
    f, t = unit(rng.normal(size=(37, 8))), unit(rng.normal(size=(6, 8)))
    tf, tt = torch.tensor(f), torch.tensor(t)
    extras = dict(local_sims=torch.tensor(rng.uniform(-0.2, 0.5, (37, 3, 6))),
                  neg_sims=torch.tensor(rng.uniform(-0.2, 0.5, (37, 10))), image_features=tf,
                  text_features=tt)
    request = {**{n: {} for n in S.SCORES}, "de_tm": {"score": "delta_energy", "reset_mode": "text_mask",
                                                      "c": 2}}
    whole = S.compute_scores(request, tf @ tt.T, 0.1, **extras)
    monkeypatch.setattr(S, "_BLOCK", 100)  # a few rows per block, the last one partial
    blocked = S.compute_scores(request, tf @ tt.T, 0.1, **extras)
    for name in request:
        np.testing.assert_allclose(blocked[name].numpy(), whole[name].numpy(), rtol=1e-13, err_msg=name)


# --- empty input and dtype -------------------------------------------------------------------------------
def test_empty_n_returns_empty():
    extras = dict(local_sims=torch.empty(0, 3, 4), neg_sims=torch.empty(0, 6),
                  image_features=torch.empty(0, 5), text_features=tunit(torch.randn(4, 5)))
    out = S.compute_scores(list(S.SCORES) + [("de_tm", {"score": "delta_energy", "reset_mode": "text_mask"})],
                           torch.empty(0, 4), 0.01, **extras)
    assert set(out) == set(S.SCORES) | {"de_tm"}
    assert all(v.shape == (0,) for v in out.values())


def test_numpy_and_half_inputs_are_converted():
    s = sims_np(5, 3)
    assert S.energy(s, tau=0.1).dtype == torch.float64
    assert S.energy(torch.tensor(s, dtype=torch.float16), tau=0.1).dtype == torch.float32


# --- registry and dispatcher ------------------------------------------------------------------------
def test_registry_names_and_specs_match_functions():
    assert set(S.SCORES) == {"msp", "maxlogit", "energy", "entropy", "mcm", "glmcm", "neglabel",
                             "delta_energy"}
    for name, spec in S.SCORES.items():
        accepted = set(inspect.signature(spec.fn).parameters) - {"sims"}
        assert set(spec.params) | set(spec.needs) | set(spec.optional) == accepted, name
        assert spec.doc and "\n" not in spec.doc


def test_compute_scores_matches_direct_calls_and_resolves_tau():
    rng = np.random.default_rng(0)
    s = torch.tensor(rng.uniform(-0.2, 0.5, (10, 6)))
    loc, neg = torch.tensor(rng.uniform(-0.2, 0.5, (10, 3, 6))), torch.tensor(rng.uniform(0, 0.3, (10, 20)))
    out = S.compute_scores(
        {"msp": {}, "mcm": None, "energy": {}, "energy_t1": {"score": "energy", "tau": 1.0},
         "glmcm": {"lam": 0.5}, "neglabel": {"ngroup": 4}, "de_c3": {"score": "delta_energy", "c": 3}},
        s, 0.05, local_sims=loc, neg_sims=neg,
    )
    assert torch.equal(out["msp"], S.msp(s, 0.05))  # caller's tau
    assert torch.equal(out["mcm"], S.mcm(s, 1.0))  # MCM's own default T = 1
    assert torch.equal(out["energy"], S.energy(s, 0.05))
    assert torch.equal(out["energy_t1"], S.energy(s, 1.0))
    assert torch.equal(out["glmcm"], S.glmcm(s, loc, tau=1.0, lam=0.5))
    assert torch.equal(out["neglabel"], S.neglabel(s, neg, tau=0.01, ngroup=4, seed=0))
    assert torch.equal(out["de_c3"], S.delta_energy(s, c=3, tau=0.01))
    assert not torch.allclose(out["energy"], out["energy_t1"])
    listed = S.compute_scores(["maxlogit", ("entropy", {"tau": 0.5})], s, 0.05)
    assert torch.equal(listed["maxlogit"], S.maxlogit(s, 0.05))
    assert torch.equal(listed["entropy"], S.entropy(s, 0.5))


def test_compute_score_single():
    s = torch.rand(6, 4, dtype=torch.float64)
    neg = torch.rand(6, 9, dtype=torch.float64)
    assert torch.equal(S.compute_score("energy", s, tau=1.0), S.energy(s, 1.0))
    assert torch.equal(S.compute_score("delta_energy", s, c=2, neg_sims=neg), S.delta_energy(s, c=2))
    assert torch.equal(S.compute_score("neglabel", s, neg_sims=neg, ngroup=3), S.neglabel(s, neg, ngroup=3))
    with pytest.raises(ValueError, match="'msp' needs an explicit tau"):
        S.compute_score("msp", s)
    with pytest.raises(ValueError, match="needs extra input.*neg_sims"):
        S.compute_score("neglabel", s)


@pytest.mark.parametrize(
    "request_, extras, match",
    [
        (["nope"], {}, "unknown score 'nope'"),
        ({"energy": {"c": 2}}, {}, r"no parameter\(s\) \['c'\]"),
        (["glmcm"], {}, "needs extra input.*local_sims"),
        (["neglabel"], {}, "needs extra input.*neg_sims"),
        (["msp"], {"neg_sim": torch.zeros(3, 2)}, "unknown extra input.*neg_sim"),
        (["msp", ("msp", {"tau": 1.0})], {}, "requested twice"),
    ],
)
def test_compute_scores_rejects_bad_requests(request_, extras, match):
    with pytest.raises(ValueError, match=match):
        S.compute_scores(request_, torch.rand(3, 4), 0.01, **extras)


# --- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", (float("nan"), float("inf"), -float("inf")))
@pytest.mark.parametrize("name", sorted(S.SCORES))
def test_non_finite_sims_raise(name, bad):
    s = torch.rand(4, 5)
    s[2, 3] = bad
    extras = dict(local_sims=torch.rand(4, 2, 5), neg_sims=torch.rand(4, 6))
    with pytest.raises(ValueError, match="sims contains NaN or inf"):
        S.compute_scores([name], s, 0.01, **extras)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda s: S.glmcm(s, torch.full((4, 2, 5), float("nan"))), "local_sims contains NaN"),
        (lambda s: S.neglabel(s, torch.full((4, 6), float("inf"))), "neg_sims contains NaN"),
        (lambda s: S.glmcm(s, torch.rand(4, 2, 6)), "local_sims: dim 2"),
        (lambda s: S.glmcm(s, torch.rand(3, 2, 5)), "local_sims: dim 0"),
        (lambda s: S.glmcm(s, torch.rand(4, 0, 5)), "P=0"),
        (lambda s: S.neglabel(s, torch.rand(3, 6)), "neg_sims: dim 0"),
        (lambda s: S.neglabel(s, torch.rand(4, 0)), "M=0"),
        (lambda s: S.neglabel(s, torch.rand(4, 6), ngroup=0), "ngroup"),
        (lambda s: S.delta_energy(s, c=0), "c must be"),
        (lambda s: S.delta_energy(s, c=6), r"c must be an integer in \[1, K=5\]"),
        (lambda s: S.delta_energy(s, c=1.5), "c must be"),
        (lambda s: S.delta_energy(s, reset_value=float("nan")), "reset_value"),
        (lambda s: S.delta_energy(s, reset_mode="crop"), "reset_mode"),
        (lambda s: S.delta_energy(s, reset_mode="text_mask"), "needs image_features"),
        (lambda s: S.delta_energy(s, reset_mode="text_mask", image_features=2 * tunit(torch.randn(4, 3)),
                                  text_features=tunit(torch.randn(5, 3))), "image_features must be L2"),
        (lambda s: S.delta_energy(s, reset_mode="text_mask", image_features=tunit(torch.randn(4, 3)),
                                  text_features=tunit(torch.randn(5, 2))), "text_features: dim 1"),
        (lambda s: S.energy(s, tau=0.0), "tau must be"),
        (lambda s: S.msp(s, tau=-1.0), "tau must be"),
        (lambda s: S.mcm(s, tau=float("inf")), "tau must be"),
        (lambda s: S.energy(s[0], tau=1.0), r"sims: expected a 2-D tensor \[N, K\]"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.rand(4, 5))


@pytest.mark.parametrize("name", ("msp", "mcm", "entropy", "glmcm"))
def test_single_class_raises_where_score_is_constant(name):
    with pytest.raises(ValueError, match="K=1 class"):
        S.compute_scores([name], torch.rand(3, 1), 0.01, local_sims=torch.rand(3, 2, 1))


def test_single_class_allowed_where_score_varies():
    s = torch.tensor([[0.1], [0.3]], dtype=torch.float64)
    out = S.compute_scores(["maxlogit", "energy", "delta_energy"], s, 0.01)
    assert torch.allclose(out["energy"], s[:, 0]) and torch.allclose(out["delta_energy"], s[:, 0])
