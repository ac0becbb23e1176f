"""Hessian of a loss w.r.t. a flat parameter vector, and the consistency of two domains' Hessians.

Conventions (method.md, "Hessian consistency"): ``loss_fn(theta) -> scalar`` with ``theta`` a flat
tensor ``[p]``; ``H = ∇²_θ loss_fn(theta)`` ``[p, p]``. For a prompt, ``theta = learner.ctx.flatten()``
and the loss is the mean cross-entropy of ``feats @ text.T / tau`` over one domain's cached features
(``prompt_loss_fn``).

Hessian-vector products (HVPs) come from torch.func, vmapped over blocks of vectors:
- ``"rev-rev"`` (default): ``vjp`` of ``grad``; the forward pass and the gradient graph are built once
  per operator and every block of HVPs is one vmapped backward pass through that graph. Valid because
  H is symmetric (vjp gives Hᵀv = Hv).
- ``"fwd-rev"``: ``jvp`` of ``grad`` (forward-over-reverse); every block re-runs forward and backward.
If vmap fails on the model's ops (tried once per operator), the operator loops over vectors instead and
records why in ``vmap_error``. On the stand-in's MiniLM (BERT, attention mask) vmap works for both
methods; vmapped rev-rev is the fastest (benchmarks/bench_hessian.py). Fused
``scaled_dot_product_attention`` kernels (the CPU flash kernel used by BERT/open_clip text towers) have
neither forward-mode AD nor a double backward, so every derivative here runs with the math SDPA backend
(the same values up to rounding, built from differentiable ops).

Modes: ``exact`` (``p <= max_exact_params``): the full H from p HVPs with basis vectors, symmetrised
``(H + Hᵀ)/2``. ``hutchinson``: Rademacher probes ``v`` (seeded ``torch.Generator``); trace ≈ mean vᵀHv,
``||H||_F²`` ≈ mean ``||Hv||²``, ``tr(H_A H_B)`` ≈ mean ``(H_A v)·(H_B v)``, each with its standard error
(sample std / √n). ``top_eigenvalue`` is the dominant eigenvalue (largest |λ|, sign kept): what power
iteration converges to, and what exact mode picks from ``eigvalsh``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .methods.losses import similarities
from .prompts import ConditionalPromptLearner

LossFn = Callable[[torch.Tensor], torch.Tensor]
HVP_METHODS = ("rev-rev", "fwd-rev")
# Exact mode costs p HVPs. Stand-in prompt, 2 quiet CPU cores (benchmarks/bench_hessian.py): exact
# p=384 ~9 s, p=1536 ~57 s; Hutchinson (64 probes + power iteration) p=1536 ~5 s. 512 keeps n_ctx=1
# exact and sends the demo prompt (n_ctx=4, p=1536) to Hutchinson.
MAX_EXACT_PARAMS = 512


def _differentiable_attention() -> contextlib.AbstractContextManager:
    """Force the math SDPA backend: fused CPU kernels have no forward AD and no double backward."""
    return sdpa_kernel(SDPBackend.MATH)


def _check_theta(theta: torch.Tensor) -> torch.Tensor:
    if theta.ndim != 1 or theta.numel() == 0:
        raise ValueError(f"hessian: theta must be a non-empty flat vector [p], got shape {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise ValueError(f"hessian: theta must be floating point, got {theta.dtype}")
    return theta.detach()


def prompt_loss_fn(
    learner: torch.nn.Module,
    feats: torch.Tensor,
    labels: torch.Tensor,
    tau: float,
    chunk: int | None = None,
    name: str = "domain",
) -> LossFn:
    """``theta [n_ctx*W] -> mean CE`` of ``feats @ text(theta).T / tau`` over one domain's samples.

    ``text(theta)`` is ``learner`` run with its ``ctx`` parameter replaced by ``theta.view_as(ctx)``
    (``torch.func.functional_call``). ``chunk`` bounds the logits' memory: per-chunk CE sums over at
    most ``chunk`` samples, divided by the sample count (the same mean). A ``ConditionalPromptLearner``
    (CoCoOp) gets each chunk's features and gives per-image text ``[n, K, D]``; its meta-net is held
    fixed (theta is the context only), and every HVP then runs the text tower on n·K prompts.
    Labels must be class indices >= 0: a domain without labels (semantic OOD, label -1) has no CE.
    """
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"hessian[{name}]: expected feats [N, D] and labels [N], got {tuple(feats.shape)} and {tuple(labels.shape)}"
        )
    n = feats.shape[0]
    if n == 0:
        raise ValueError(f"hessian[{name}]: the domain has no samples; the Hessian of an empty mean is undefined")
    if tau <= 0:
        raise ValueError(f"hessian[{name}]: tau must be > 0, got {tau}")
    if (labels < 0).any():
        raise ValueError(
            f"hessian[{name}]: {int((labels < 0).sum())} samples have no label (-1, semantic OOD); the "
            f"cross-entropy Hessian needs labelled domains (ID or covariate-shifted sets)"
        )
    conditional = isinstance(learner, ConditionalPromptLearner)
    ctx = learner.ctx
    feats = feats.to(ctx.device, ctx.dtype)
    labels = labels.to(ctx.device)
    step = n if chunk is None else int(chunk)
    if step < 1:
        raise ValueError(f"hessian[{name}]: chunk must be >= 1, got {chunk}")

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {"ctx": theta.view_as(ctx)}
        text = None if conditional else torch.func.functional_call(learner, params, ())
        total = 0.0
        for i in range(0, n, step):
            part = feats[i : i + step]
            per = torch.func.functional_call(learner, params, (part,)) if conditional else text
            total = total + F.cross_entropy(similarities(part, per) / tau, labels[i : i + step], reduction="sum")
        return total / n

    return loss


class HessianOperator:
    """``V [b, p] -> V H`` (row i = H v_i) for ``loss_fn`` at ``theta``, in vmapped blocks of ``chunk`` rows.

    Checks the loss and every HVP for non-finite values (``ValueError`` naming ``name``); counts the
    HVPs in ``n_hvp``; ``vmap_ok`` is None until the first block, then whether vmap worked.
    """

    def __init__(
        self, loss_fn: LossFn, theta: torch.Tensor, chunk: int = 64, method: str = "rev-rev", name: str = "loss"
    ) -> None:
        if method not in HVP_METHODS:
            raise ValueError(f"hessian: unknown HVP method {method!r}; known: {HVP_METHODS}")
        if chunk < 1:
            raise ValueError(f"hessian: chunk must be >= 1, got {chunk}")
        self.theta = _check_theta(theta)
        self.chunk, self.method, self.name = int(chunk), method, name
        self.n_hvp = 0
        self.vmap_ok: bool | None = None
        self.vmap_error: str | None = None
        with _differentiable_attention():
            if method == "rev-rev":
                grad, vjp_fn = torch.func.vjp(torch.func.grad(loss_fn), self.theta)
                self._one = lambda v: vjp_fn(v)[0]
            else:
                grad_fn = torch.func.grad(loss_fn)
                self._one = lambda v: torch.func.jvp(grad_fn, (self.theta,), (v,))[1]
                grad = grad_fn(self.theta)
            with torch.no_grad():
                value = loss_fn(self.theta)
        self.loss = float(value)
        if not math.isfinite(self.loss) or not torch.isfinite(grad).all():
            raise ValueError(f"hessian[{name}]: loss or gradient is not finite at theta (loss = {self.loss})")

    def _block(self, block: torch.Tensor) -> torch.Tensor:
        if self.vmap_ok is not False and block.shape[0] > 1:
            try:
                out = torch.func.vmap(self._one)(block)
                self.vmap_ok = True
                return out
            except (RuntimeError, NotImplementedError) as err:
                if self.vmap_ok:
                    raise
                self.vmap_ok, self.vmap_error = False, f"{type(err).__name__}: {err}"
        return torch.stack([self._one(v) for v in block])

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.ndim != 2 or vectors.shape[1] != self.theta.numel():
            raise ValueError(f"hessian: vectors must be [b, {self.theta.numel()}], got {tuple(vectors.shape)}")
        vectors = vectors.to(self.theta.device, self.theta.dtype)
        with _differentiable_attention():
            out = torch.cat([self._block(vectors[i : i + self.chunk]) for i in range(0, vectors.shape[0], self.chunk)])
        self.n_hvp += vectors.shape[0]
        if not torch.isfinite(out).all():
            raise ValueError(f"hessian[{self.name}]: a Hessian-vector product is not finite")
        return out.detach()


def hvp(loss_fn: LossFn, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One Hessian-vector product ``H v`` ``[p]`` by forward-over-reverse (``jvp`` of ``grad``)."""
    theta = _check_theta(theta)
    with _differentiable_attention():
        return torch.func.jvp(torch.func.grad(loss_fn), (theta,), (v.to(theta.dtype),))[1].detach()


def batched_hvp(
    loss_fn: LossFn, theta: torch.Tensor, vectors: torch.Tensor, chunk: int = 64, method: str = "rev-rev"
) -> torch.Tensor:
    """Hessian-vector products of many vectors ``[b, p] -> [b, p]`` (row i = H v_i)."""
    return HessianOperator(loss_fn, theta, chunk, method)(vectors)


def full_hessian(
    loss_fn: LossFn, theta: torch.Tensor, chunk: int = 64, method: str = "rev-rev", name: str = "loss"
) -> tuple[torch.Tensor, float]:
    """The symmetrised Hessian ``(H + Hᵀ)/2`` ``[p, p]`` from p HVPs, and ``max|H - Hᵀ|`` before symmetrising."""
    return _full(HessianOperator(loss_fn, theta, chunk, method, name))


def _full(op: HessianOperator) -> tuple[torch.Tensor, float]:
    eye = torch.eye(op.theta.numel(), dtype=op.theta.dtype, device=op.theta.device)
    rows = op(eye)  # row i = H e_i = column i
    return (rows + rows.T) / 2, float((rows - rows.T).abs().max())


def rademacher(n: int, p: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n, p]`` independent ±1 entries drawn with ``generator``."""
    return (torch.randint(0, 2, (n, p), generator=generator) * 2 - 1).to(dtype)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (sample std with ddof=1, over √n)."""
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def power_iteration(
    op: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, max_iter: int = 100, tol: float = 1e-5
) -> tuple[float, float, int]:
    """Dominant eigenvalue (largest |λ|, sign kept) of the symmetric operator ``op`` ``[b, p] -> [b, p]``.

    Starts from ``start`` ``[p]`` (a seeded Gaussian vector in ``hessian_summary``); stops when the
    Rayleigh quotient changes by at most ``tol·|λ|`` or after ``max_iter`` HVPs. Returns
    ``(λ, ||Hv - λv||, iterations)``; for symmetric H some eigenvalue lies within that residual of λ.
    """
    if max_iter < 1:
        raise ValueError(f"hessian: power iteration needs max_iter >= 1, got {max_iter}")
    v = start.reshape(1, -1) / start.norm()
    w = op(v)
    lam = float((v * w).sum())
    for it in range(1, max_iter + 1):
        if float(w.norm()) == 0.0:
            return 0.0, 0.0, it
        v = w / w.norm()
        w = op(v)
        new = float((v * w).sum())
        done = abs(new - lam) <= tol * abs(new)
        lam = new
        if done:
            break
    return lam, float((w - lam * v).norm()), it


@dataclass(frozen=True)
class HessianSummary:
    """Trace, dominant eigenvalue and Frobenius norm of H; standard errors are 0.0 in exact mode.

    ``top_eigenvalue_residual`` is ``||Hv - λv||`` of the power iteration (0.0 in exact mode);
    ``asymmetry`` is ``max|H - Hᵀ|`` of the exact Hessian before symmetrising (None for Hutchinson).
    """

    mode: str
    n_params: int
    trace: float
    trace_se: float
    frobenius_norm: float
    frobenius_se: float
    top_eigenvalue: float
    top_eigenvalue_residual: float
    power_iterations: int
    n_probes: int
    n_hvp: int
    asymmetry: float | None
    vmap: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def _mode(p: int, max_exact_params: int, n_probes: int) -> str:
    if p <= max_exact_params:
        return "exact"
    if n_probes < 2:
        raise ValueError(f"hessian: Hutchinson mode needs n_probes >= 2 for a standard error, got {n_probes}")
    return "hutchinson"


def hessian_summary(
    loss_fn: LossFn,
    theta: torch.Tensor,
    max_exact_params: int = MAX_EXACT_PARAMS,
    n_probes: int = 64,
    seed: int = 0,
    power_iters: int = 100,
    power_tol: float = 1e-5,
    chunk: int = 64,
    method: str = "rev-rev",
    name: str = "loss",
) -> HessianSummary:
    """Trace, dominant eigenvalue and Frobenius norm of ``∇²loss_fn(theta)``.

    Exact (full H, ``eigvalsh``) when ``p <= max_exact_params``, else Hutchinson with ``n_probes``
    Rademacher probes and power iteration (``power_iters``, ``power_tol``), all seeded by ``seed``.
    """
    theta = _check_theta(theta)
    p = theta.numel()
    if _mode(p, max_exact_params, n_probes) == "exact":
        op = HessianOperator(loss_fn, theta, chunk, method, name)
        h, asym = _full(op)
        h = h.double().cpu()
        eig = torch.linalg.eigvalsh(h)
        return HessianSummary(
            "exact", p, float(h.trace()), 0.0, float(h.norm()), 0.0, float(eig[eig.abs().argmax()]), 0.0, 0, 0,
            op.n_hvp, asym, op.vmap_ok,
        )  # fmt: skip
    op = HessianOperator(loss_fn, theta, chunk, method, name)
    gen = torch.Generator().manual_seed(seed)
    probes = rademacher(n_probes, p, gen, theta.dtype).to(theta.device)
    hv = op(probes)
    quad = (probes * hv).sum(1).double().cpu().numpy()
    sq = (hv * hv).sum(1).double().cpu().numpy()
    trace, trace_se = _mean_se(quad)
    frob2, frob2_se = _mean_se(sq)
    frob = math.sqrt(frob2)
    start = torch.randn(p, generator=gen, dtype=torch.float64).to(theta.device, theta.dtype)
    lam, resid, iters = power_iteration(op, start, power_iters, power_tol)
    return HessianSummary(
        "hutchinson", p, trace, trace_se, frob, frob2_se / (2 * frob) if frob > 0 else 0.0, lam, resid, iters,
        n_probes, op.n_hvp, None, op.vmap_ok,
    )  # fmt: skip


def _consistency(tr_ab: float, fa2: float, fb2: float, fd2: float) -> tuple[float, float]:
    """cosine = tr(AB)/(||A||_F ||B||_F) and relative distance ||A - B||_F/||A||_F from the four traces."""
    if fa2 <= 0 or fb2 <= 0:
        raise ValueError("hessian_consistency: a Hessian is zero; its cosine and relative distance are undefined")
    return tr_ab / math.sqrt(fa2 * fb2), math.sqrt(max(fd2, 0.0) / fa2)


def hessian_consistency(
    loss_a: LossFn,
    loss_b: LossFn,
    theta: torch.Tensor,
    max_exact_params: int = MAX_EXACT_PARAMS,
    n_probes: int = 64,
    seed: int = 0,
    n_bootstrap: int = 1000,
    chunk: int = 64,
    method: str = "rev-rev",
    names: tuple[str, str] = ("A", "B"),
) -> dict:
    """cosine(H_A, H_B) = tr(H_A H_B)/(||H_A||_F ||H_B||_F) and distance ||H_A - H_B||_F/||H_A||_F.

    Exact from the full matrices when ``p <= max_exact_params``. Otherwise the same Rademacher probes
    go through both Hessians: per probe ``a = ||H_A v||²``, ``b = ||H_B v||²``, ``c = (H_A v)·(H_B v)``,
    ``d = a + b - 2c = ||(H_A - H_B) v||²``, whose means estimate ``||H_A||_F²``, ``||H_B||_F²``,
    ``tr(H_A H_B)`` and ``||H_A - H_B||_F²`` (SE: std/√n). The SEs of cosine and distance come from
    ``n_bootstrap`` resamples of the probes (seeded by ``seed``).
    """
    return hessian_consistencies(
        loss_a, {names[1]: loss_b}, theta, max_exact_params, n_probes, seed, n_bootstrap, chunk, method, names[0]
    )[names[1]]


def hessian_consistencies(
    loss_a: LossFn,
    losses_b: dict[str, LossFn],
    theta: torch.Tensor,
    max_exact_params: int = MAX_EXACT_PARAMS,
    n_probes: int = 64,
    seed: int = 0,
    n_bootstrap: int = 1000,
    chunk: int = 64,
    method: str = "rev-rev",
    name_a: str = "A",
) -> dict[str, dict]:
    """:func:`hessian_consistency` of one reference domain A against each domain B of ``losses_b``.

    H_A (exact) or H_A v (Hutchinson, the same probes for every B) is computed once and shared, so k
    domains cost (k + 1)·p or (k + 1)·n_probes HVPs. Each result also holds ``trace_a``/``trace_b``
    (exact, or the Hutchinson mean vᵀHv with its SE ``trace_a_se``/``trace_b_se``).
    """
    theta = _check_theta(theta)
    p = theta.numel()
    mode = _mode(p, max_exact_params, n_probes)
    op_a = HessianOperator(loss_a, theta, chunk, method, name_a)
    if mode == "exact":
        ha, asym_a = _full(op_a)
        ha = ha.double()
        out = {}
        for name_b, loss_b in losses_b.items():
            op_b = HessianOperator(loss_b, theta, chunk, method, name_b)
            hb, asym_b = _full(op_b)
            hb = hb.double()
            traces = [float((ha * hb).sum()), float((ha * ha).sum()), float((hb * hb).sum()), float(((ha - hb) ** 2).sum())]
            cosine, distance = _consistency(*traces)
            out[name_b] = {
                "mode": mode, "n_params": p, "n_probes": 0, "cosine": cosine, "cosine_se": 0.0,
                "distance": distance, "distance_se": 0.0, "trace_ab": traces[0], "trace_ab_se": 0.0,
                "frobenius_a": math.sqrt(traces[1]), "frobenius_b": math.sqrt(traces[2]),
                "trace_a": float(ha.trace()), "trace_a_se": 0.0, "trace_b": float(hb.trace()), "trace_b_se": 0.0,
                "asymmetry_a": asym_a, "asymmetry_b": asym_b,
                "n_hvp": op_a.n_hvp + op_b.n_hvp,
            }  # fmt: skip
        return out
    gen = torch.Generator().manual_seed(seed)
    probes = rademacher(n_probes, p, gen, theta.dtype).to(theta.device)
    ha = op_a(probes).double()
    quad_a = (probes.double() * ha).sum(1).cpu().numpy()
    out = {}
    for name_b, loss_b in losses_b.items():
        op_b = HessianOperator(loss_b, theta, chunk, method, name_b)
        hb = op_b(probes).double()
        quad_b = (probes.double() * hb).sum(1).cpu().numpy()
        per_probe = torch.stack([(ha * hb).sum(1), (ha * ha).sum(1), (hb * hb).sum(1), ((ha - hb) ** 2).sum(1)], 1)
        per_probe = per_probe.cpu().numpy()  # [n, 4]: c, a, b, d
        cosine, distance = _consistency(*per_probe.mean(0))
        idx = np.random.default_rng(seed).integers(0, n_probes, (n_bootstrap, n_probes))
        boot = per_probe[idx].mean(1)  # [n_bootstrap, 4]
        boot_cos = boot[:, 0] / np.sqrt(boot[:, 1] * boot[:, 2])
        boot_dist = np.sqrt(np.clip(boot[:, 3], 0, None) / boot[:, 1])
        trace_ab, trace_ab_se = _mean_se(per_probe[:, 0])
        (trace_a, trace_a_se), (trace_b, trace_b_se) = _mean_se(quad_a), _mean_se(quad_b)
        out[name_b] = {
            "mode": mode, "n_params": p, "n_probes": n_probes,
            "cosine": float(cosine), "cosine_se": float(boot_cos.std(ddof=1)),
            "distance": float(distance), "distance_se": float(boot_dist.std(ddof=1)), "trace_ab": trace_ab,
            "trace_ab_se": trace_ab_se, "frobenius_a": math.sqrt(per_probe[:, 1].mean()),
            "frobenius_b": math.sqrt(per_probe[:, 2].mean()), "trace_a": trace_a, "trace_a_se": trace_a_se,
            "trace_b": trace_b, "trace_b_se": trace_b_se, "asymmetry_a": None, "asymmetry_b": None,
            "n_bootstrap": n_bootstrap, "n_hvp": op_a.n_hvp + op_b.n_hvp,
        }  # fmt: skip
    return out
