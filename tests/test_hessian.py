"""Hessian diagnostics against analytic Hessians (quadratic, logistic regression), NumPy formulas, and
exact-vs-Hutchinson agreement on a stand-in prompt (within the reported standard errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deltaenergy.hessian import (
    HVP_METHODS,
    HessianOperator,
    batched_hvp,
    full_hessian,
    hessian_consistency,
    hessian_summary,
    hvp,
    power_iteration,
    prompt_loss_fn,
)

FMNIST = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def _sym(p: int, seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).normal(size=(p, p))
    return (m + m.T) / 2


def _gapped(p: int, seed: int) -> np.ndarray:
    """Symmetric matrix with dominant eigenvalue 10 and the rest in [-3, 3]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    lam = np.concatenate([[10.0], rng.uniform(-3, 3, p - 1)])
    return (q * lam) @ q.T


def _quadratic(a: np.ndarray, seed: int = 0):
    a_t = torch.from_numpy(a)
    b = torch.from_numpy(np.random.default_rng(seed + 1).normal(size=a.shape[0]))
    theta = torch.from_numpy(np.random.default_rng(seed + 2).normal(size=a.shape[0]))
    return (lambda th: 0.5 * th @ a_t @ th + b @ th), theta


def _dominant(a: np.ndarray) -> float:
    eig = np.linalg.eigvalsh(a)
    return float(eig[np.abs(eig).argmax()])


@pytest.mark.parametrize("method", HVP_METHODS)
@pytest.mark.parametrize("p", [6, 13, 20])
def test_full_hessian_of_quadratic_is_a(p, method):
    a = _sym(p, p)
    f, theta = _quadratic(a, p)
    h, asym = full_hessian(f, theta, chunk=5, method=method)
    np.testing.assert_allclose(h.numpy(), a, atol=1e-6)
    assert asym < 1e-12
    v = torch.from_numpy(np.random.default_rng(p).normal(size=p))
    np.testing.assert_allclose(hvp(f, theta, v).numpy(), a @ v.numpy(), atol=1e-10)
    vs = torch.from_numpy(np.random.default_rng(p + 1).normal(size=(7, p)))
    np.testing.assert_allclose(batched_hvp(f, theta, vs, chunk=3, method=method).numpy(), vs.numpy() @ a, atol=1e-10)


@pytest.mark.parametrize("p", [6, 13, 20])
def test_exact_summary_of_quadratic(p):
    a = _sym(p, p)
    f, theta = _quadratic(a, p)
    s = hessian_summary(f, theta, max_exact_params=p)
    assert (s.mode, s.n_params, s.n_hvp, s.n_probes, s.trace_se) == ("exact", p, p, 0, 0.0)
    assert s.trace == pytest.approx(np.trace(a), abs=1e-9)
    assert s.frobenius_norm == pytest.approx(np.linalg.norm(a), abs=1e-9)
    assert s.top_eigenvalue == pytest.approx(_dominant(a), abs=1e-9)


@pytest.mark.parametrize("p", [6, 13, 20])
def test_hutchinson_summary_of_quadratic_within_3_se(p):
    a = _gapped(p, p)
    f, theta = _quadratic(a, p)
    s = hessian_summary(f, theta, max_exact_params=p - 1, n_probes=200, seed=p, power_iters=500, power_tol=1e-14)
    assert s.mode == "hutchinson" and s.n_probes == 200
    assert s.trace_se > 0 and s.frobenius_se > 0
    assert abs(s.trace - np.trace(a)) <= 3 * s.trace_se
    assert abs(s.frobenius_norm - np.linalg.norm(a)) <= 3 * s.frobenius_se
    assert s.top_eigenvalue == pytest.approx(10.0, abs=1e-4)
    assert s.top_eigenvalue_residual < 1e-3


def test_power_iteration_keeps_the_sign_of_a_negative_dominant_eigenvalue():
    a = -_gapped(9, 3)
    lam, resid, _ = power_iteration(lambda v: v @ torch.from_numpy(a), torch.ones(9, dtype=torch.float64), 500, 1e-14)
    assert lam == pytest.approx(-10.0, abs=1e-6) and resid < 1e-4


@pytest.mark.parametrize("method", HVP_METHODS)
def test_full_hessian_of_logistic_regression(method):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(50, 8)))
    y = torch.from_numpy((rng.random(50) < 0.5).astype(np.float64))
    w = torch.from_numpy(rng.normal(size=8) * 0.3)
    h, _ = full_hessian(lambda t: F.binary_cross_entropy_with_logits(x @ t, y), w, method=method)
    s = torch.sigmoid(x @ w).numpy()
    ref = x.numpy().T @ (x.numpy() * (s * (1 - s))[:, None]) / 50
    np.testing.assert_allclose(h.numpy(), ref, atol=1e-6)


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return np.trace(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)), np.linalg.norm(a - b) / np.linalg.norm(a)


def test_exact_consistency_identities_and_numpy_formula():
    a, b = _sym(10, 0), _sym(10, 1)
    fa, theta = _quadratic(a)
    fb, _ = _quadratic(b)
    same = hessian_consistency(fa, fa, theta, max_exact_params=10)
    assert same["mode"] == "exact" and same["cosine"] == pytest.approx(1.0) and same["distance"] == pytest.approx(0.0)
    double = hessian_consistency(fa, lambda t: 2 * fa(t), theta, max_exact_params=10)
    assert double["cosine"] == pytest.approx(1.0) and double["distance"] == pytest.approx(1.0)
    got = hessian_consistency(fa, fb, theta, max_exact_params=10)
    cos, dist = _cosine_distance(a, b)
    assert got["cosine"] == pytest.approx(cos, abs=1e-10) and got["distance"] == pytest.approx(dist, abs=1e-10)
    assert got["trace_ab"] == pytest.approx(np.trace(a @ b), abs=1e-9)


def test_hutchinson_consistency_within_3_se():
    a = _sym(12, 2)
    b = a + 0.7 * _sym(12, 3)
    fa, theta = _quadratic(a)
    fb, _ = _quadratic(b)
    got = hessian_consistency(fa, fb, theta, max_exact_params=0, n_probes=300, seed=4)
    cos, dist = _cosine_distance(a, b)
    assert got["mode"] == "hutchinson" and got["cosine_se"] > 0 and got["distance_se"] > 0
    assert abs(got["cosine"] - cos) <= 3 * got["cosine_se"]
    assert abs(got["distance"] - dist) <= 3 * got["distance_se"]
    assert abs(got["trace_ab"] - np.trace(a @ b)) <= 3 * got["trace_ab_se"]
    same = hessian_consistency(fa, fa, theta, max_exact_params=0, n_probes=20)
    assert same["cosine"] == pytest.approx(1.0) and same["distance"] == 0.0


def test_hutchinson_is_seeded():
    f, theta = _quadratic(_sym(15, 5))
    kw = dict(max_exact_params=0, n_probes=16)
    assert hessian_summary(f, theta, seed=3, **kw) == hessian_summary(f, theta, seed=3, **kw)
    assert hessian_summary(f, theta, seed=3, **kw).trace != hessian_summary(f, theta, seed=4, **kw).trace


def test_vmap_failure_falls_back_to_a_loop(monkeypatch):
    a = _sym(7, 6)
    f, theta = _quadratic(a)

    def no_vmap(*args, **kwargs):
        raise NotImplementedError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    op = HessianOperator(f, theta, chunk=4)
    np.testing.assert_allclose(op(torch.eye(7, dtype=torch.float64)).numpy(), a, atol=1e-10)
    assert op.vmap_ok is False and "no batching rule" in op.vmap_error


def test_errors_name_the_domain():
    theta = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"hessian\[ood-x\].*not finite"):
        hessian_summary(lambda t: (t + float("nan")).sum(), theta, name="ood-x")
    with pytest.raises(ValueError, match=r"hessian\[B\].*not finite"):
        hessian_consistency(lambda t: (t * t).sum(), lambda t: torch.sqrt(t).sum(), theta, names=("A", "B"))
    with pytest.raises(ValueError, match=r"hessian\[shift\].*Hessian-vector product is not finite"):
        HessianOperator(lambda t: (t.abs() ** 1.5).sum(), theta, name="shift")(torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_probes >= 2"):
        hessian_summary(lambda t: (t * t).sum(), theta, max_exact_params=0, n_probes=1)


# --- stand-in prompt ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt():
    """CoOp prompt (n_ctx=1, p=384) on the stand-in, 40 random unit features, and its exact Hessian."""
    from deltaenergy.backbones import build_backbone
    from deltaenergy.prompts import PromptLearner

    gen = torch.Generator().manual_seed(0)
    learner = PromptLearner(build_backbone("standin-conse"), FMNIST, n_ctx=1, generator=gen)
    x = F.normalize(torch.randn(40, 384, generator=gen), dim=-1)
    y = torch.randint(0, 10, (40,), generator=gen)
    loss = prompt_loss_fn(learner, x, y, tau=0.01, name="id")
    theta = learner.ctx.detach().flatten()
    return learner, x, y, loss, theta, full_hessian(loss, theta, name="id")


def test_prompt_loss_is_the_mean_cross_entropy_and_chunking_changes_nothing(prompt):
    learner, x, y, loss, theta, _ = prompt
    with torch.no_grad():
        ref = F.cross_entropy(x @ learner().T / 0.01, y)
    assert float(loss(theta)) == pytest.approx(float(ref), rel=1e-6)
    chunked = prompt_loss_fn(learner, x, y, tau=0.01, chunk=7)
    assert float(chunked(theta)) == pytest.approx(float(ref), rel=1e-6)
    v = torch.randn(1, theta.numel(), generator=torch.Generator().manual_seed(1))
    ref_hv = batched_hvp(loss, theta, v).numpy()
    np.testing.assert_allclose(batched_hvp(chunked, theta, v).numpy(), ref_hv, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match=r"hessian\[empty\].*no samples"):
        prompt_loss_fn(learner, x[:0], y[:0], tau=0.01, name="empty")


def test_prompt_hessian_exact_vs_hutchinson(prompt):
    *_, loss, theta, (h, asym) = prompt
    assert asym <= 1e-4 * float(h.abs().max())
    h = h.double().numpy()
    s = hessian_summary(loss, theta, max_exact_params=0, n_probes=64, seed=0)
    assert s.mode == "hutchinson" and s.vmap is True
    assert abs(s.trace - np.trace(h)) <= 3 * s.trace_se
    assert abs(s.frobenius_norm - np.linalg.norm(h)) <= 3 * s.frobenius_se
    assert abs(s.top_eigenvalue - _dominant(h)) <= max(s.top_eigenvalue_residual, 1e-3 * abs(_dominant(h)))
    same = hessian_consistency(loss, loss, theta, max_exact_params=0, n_probes=8)
    assert same["cosine"] == pytest.approx(1.0) and same["distance"] == 0.0


def test_prompt_loss_of_an_image_conditioned_prompt(prompt):
    """CoCoOp: the loss uses each image's own class texts (meta-net fixed) and chunking changes nothing."""
    from deltaenergy.prompts import ConditionalPromptLearner

    learner, x, y, *_ = prompt
    cond = ConditionalPromptLearner(learner.backbone, FMNIST, n_ctx=1, generator=torch.Generator().manual_seed(2))
    x, y = x[:6], y[:6]
    with torch.no_grad():
        ref = F.cross_entropy(torch.einsum("nd,nkd->nk", x, cond(x)) / 0.01, y)
    theta = cond.ctx.detach().flatten()
    for chunk in [None, 4]:
        assert float(prompt_loss_fn(cond, x, y, tau=0.01, chunk=chunk)(theta)) == pytest.approx(float(ref), rel=1e-5)
