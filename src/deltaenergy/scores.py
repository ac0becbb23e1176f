"""OOD scores over CLIP cosine similarities: pure functions, one registry, one dispatcher.

Conventions (every score):
- Input ``sims``: cosine similarities ``[N, K]`` (image x class), torch float32/float64 (other dtypes and
  NumPy arrays are converted; float16/bfloat16/integers become float32). Logits are ``sims / tau`` with an
  explicit temperature ``tau`` (CLIP's logit scale 100 is ``tau = 0.01``; MCM/OpenOOD use ``tau = 1``).
- Output: a 1-D tensor of N scores in the input's dtype, **higher = more in-distribution**.
- Log-sum-exp is max-shifted (stable for any tau); no score exponentiates raw logits. Work is done in
  row blocks of ~4M elements, so memory stays bounded for large N.
- N = 0 gives an empty result. NaN/inf inputs, bad shapes and bad parameters raise ``ValueError``
  naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

Tensor = torch.Tensor

EXTRAS = ("local_sims", "neg_sims", "image_features", "text_features")
RESET_MODES = ("value", "text_mask")


# --- validation ---------------------------------------------------------------------------------
def _tensor(x: Any, name: str, ndim: int, layout: str) -> Tensor:
    """``x`` as a finite float32/float64 tensor with ``ndim`` dims, or ValueError naming ``name``."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if t.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {layout}, got shape {tuple(t.shape)}")
    if t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t))).all()):  # NaN propagates
        raise ValueError(f"{name} contains NaN or inf; scores need finite similarities/features")
    return t


def _sims(sims: Any, score: str, min_classes: int = 1) -> Tensor:
    s = _tensor(sims, "sims", 2, "[N, K]")
    if s.shape[1] < min_classes:
        raise ValueError(
            f"{score}: sims has K={s.shape[1]} class(es); the score is constant for fewer than "
            f"{min_classes} classes, so it cannot rank samples. Pass at least {min_classes} classes."
        )
    return s


def _positive(value: Any, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _match(t: Tensor, name: str, dim: int, size: int, what: str) -> None:
    if t.shape[dim] != size:
        raise ValueError(f"{name}: dim {dim} is {t.shape[dim]} but must equal {what} = {size}")


def _check_unit_norm(t: Tensor, name: str) -> None:
    norms = t.norm(dim=-1)
    if norms.numel() and not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)):
        raise ValueError(f"{name} must be L2-normalised along the last dim (norms range "
                         f"{float(norms.min()):.4g}..{float(norms.max()):.4g}); normalise it first")


# --- row-blocked kernels ---------------------------------------------------------------------------
# Elements per row block. Blocking bounds the temporaries and was ~2x faster than whole-array ops for
# N=50k x K=1k on 2 cores; 2**22 was the most robust size with 1 or 2 (oversubscribed) torch threads.
_BLOCK = 1 << 22


def _by_rows(fn: Callable[..., Tensor], *tensors: Tensor, extra_per_row: int = 0) -> Tensor:
    """``fn`` applied to row blocks of ``tensors`` (same N); the per-block results are concatenated.

    ``extra_per_row``: elements per row of temporaries larger than the inputs (sizes the blocks).
    """
    n = tensors[0].shape[0]
    per_row = sum(math.prod(t.shape[1:]) for t in tensors) + extra_per_row
    rows = max(1, _BLOCK // max(1, per_row))
    if n <= rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[i : i + rows] for t in tensors)) for i in range(0, n, rows)])


def _shifted(s: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """w = (s - max s) / tau (<= 0, a new tensor) and max(s) / tau, along the last dim."""
    m = s.amax(dim=-1, keepdim=True)
    return torch.sub(s, m).div_(tau), m.squeeze(-1) / tau


def _lse(s: Tensor, tau: float) -> Tensor:
    """logsumexp(s / tau) along the last dim, stably."""
    w, top = _shifted(s, tau)
    return top + w.exp_().sum(dim=-1).log()


def _max_softmax(s: Tensor, tau: float) -> Tensor:
    """max_k softmax(s / tau)_k along the last dim = 1 / sum_k exp(w_k)."""
    return _shifted(s, tau)[0].exp_().sum(dim=-1).reciprocal()


def _neg_entropy(s: Tensor, tau: float) -> Tensor:
    """sum_k p_k log p_k of p = softmax(s / tau): with e = exp(w), S = sum e: sum(e w) / S - log S."""
    w = _shifted(s, tau)[0]
    e = w.exp()
    total = e.sum(dim=-1)
    return (e * w).sum(dim=-1) / total - total.log()


# --- scores ---------------------------------------------------------------------------------------
def msp(sims: Any, tau: float) -> Tensor:
    """MSP: max_k softmax(sims / tau)_k. In [1/K, 1]."""
    tau = _positive(tau, "tau")
    return _by_rows(lambda s: _max_softmax(s, tau), _sims(sims, "msp", 2))


def maxlogit(sims: Any, tau: float) -> Tensor:
    """MaxLogit: max_k sims_k / tau."""
    return _sims(sims, "maxlogit").amax(dim=1) / _positive(tau, "tau")


def energy(sims: Any, tau: float) -> Tensor:
    """Negative free energy -E(s) = tau * logsumexp(sims / tau) (tau = 1: raw cosine; 0.01: CLIP logits)."""
    tau = _positive(tau, "tau")
    return _by_rows(lambda s: tau * _lse(s, tau), _sims(sims, "energy"))


def entropy(sims: Any, tau: float) -> Tensor:
    """Negative entropy sum_k p_k log p_k of p = softmax(sims / tau). In [-log K, 0]."""
    tau = _positive(tau, "tau")
    return _by_rows(lambda s: _neg_entropy(s, tau), _sims(sims, "entropy", 2))


def mcm(sims: Any, tau: float = 1.0) -> Tensor:
    """MCM (Ming et al. 2022): max_k softmax(sims / tau)_k with the paper's tau = 1 on cosine.

    Same formula as ``msp``; only the default temperature differs (MSP on CLIP logits uses tau = 0.01).
    """
    tau = _positive(tau, "tau")
    return _by_rows(lambda s: _max_softmax(s, tau), _sims(sims, "mcm", 2))


def glmcm(sims: Any, local_sims: Any, tau: float = 1.0, lam: float = 1.0) -> Tensor:
    """GL-MCM (Miyai et al. 2023): MCM(global) + lam * max_p max_k softmax(local_sims[:, p] / tau)_k.

    ``local_sims``: patch-to-class cosine similarities ``[N, P, K]`` (P >= 1).
    """
    s = _sims(sims, "glmcm", 2)
    loc = _tensor(local_sims, "local_sims", 3, "[N, P, K]")
    _match(loc, "local_sims", 0, s.shape[0], "N of sims")
    _match(loc, "local_sims", 2, s.shape[1], "K of sims")
    if loc.shape[1] == 0:
        raise ValueError("local_sims has P=0 patches; GL-MCM needs at least one local feature")
    tau, lam = _positive(tau, "tau"), float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam!r}")
    return _by_rows(lambda g, p: _max_softmax(g, tau) + lam * _max_softmax(p, tau).amax(dim=1),
                    s, loc.to(s.dtype))


def neglabel(sims: Any, neg_sims: Any, tau: float = 0.01, ngroup: int = 100, seed: int = 0) -> Tensor:
    """NegLabel (Jiang et al. 2024): mean over negative groups g of P / (P + N_g), sums of exp(s/tau).

    P = sum over the K ID classes of exp(sims/tau); N_g = the same sum over the negatives of group g.

    ``neg_sims`` ``[N, M]``: similarities to the M negative labels. The M columns are permuted with
    ``torch.Generator().manual_seed(seed)`` and cut into G = min(ngroup, M) equal groups of M // G;
    the M mod G left-over columns are dropped (as the authors' grouping does). ngroup = 1: no grouping.
    Computed in log space, as sigmoid(lse_pos - lse_neg_g). In (0, 1).
    """
    s = _sims(sims, "neglabel")
    neg = _tensor(neg_sims, "neg_sims", 2, "[N, M]").to(s.dtype)
    _match(neg, "neg_sims", 0, s.shape[0], "N of sims")
    tau, m = _positive(tau, "tau"), neg.shape[1]
    if m == 0:
        raise ValueError("neg_sims has M=0 negative labels; NegLabel needs at least one")
    groups = min(_count(ngroup, "ngroup"), m)
    size = m // groups
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(int(seed)))[: groups * size]
    perm = perm.to(neg.device)

    def block(pos: Tensor, negs: Tensor) -> Tensor:
        lse_neg = _lse(negs[:, perm].reshape(negs.shape[0], groups, size), tau)  # [n, G]
        return torch.sigmoid(_lse(pos, tau).unsqueeze(1) - lse_neg).mean(dim=1)

    return _by_rows(block, s, neg)


def delta_energy(
    sims: Any,
    c: int = 1,
    tau: float = 0.01,
    reset_value: float = 0.0,
    reset_mode: str = "value",
    image_features: Any = None,
    text_features: Any = None,
) -> Tensor:
    """ΔEnergy: ΔE_c = E(s̃) - E(s) with E(s) = -tau * logsumexp(s / tau) (>= 0 when the top-c exceed v).

    C(x) = indices of the c largest sims (ties broken by ``torch.topk``); s̃ equals s outside C and:
    - ``reset_mode="value"``: s̃_j = ``reset_value`` for j in C;
    - ``reset_mode="text_mask"``: s̃_j = <f, t_j ⊙ 1[f ⊙ t_j <= 0]> for j in C, i.e. the elements of
      t_j with a positive product f_k t_jk are zeroed and the dot product is recomputed with the masked
      t_j *not* re-normalised. Needs ``image_features`` ``[N, D]`` and ``text_features`` ``[K, D]``,
      both L2-normalised (``sims`` should be ``image_features @ text_features.T``).
    """
    s = _sims(sims, "delta_energy")
    n, k = s.shape
    if isinstance(c, bool) or int(c) != c or not 1 <= c <= k:
        raise ValueError(f"c must be an integer in [1, K={k}], got {c!r}")
    c, tau = int(c), _positive(tau, "tau")
    if reset_mode not in RESET_MODES:
        raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")

    def delta(block: Tensor, top: Tensor, new: Tensor) -> Tensor:
        reset = block.scatter(1, top, new)
        return tau * (_lse(block, tau) - _lse(reset, tau))

    if reset_mode == "value":
        v = float(reset_value)
        if not math.isfinite(v):
            raise ValueError(f"reset_value must be finite, got {reset_value!r}")

        def by_value(block: Tensor) -> Tensor:
            top = torch.topk(block, c, dim=1).indices
            return delta(block, top, torch.full(top.shape, v, dtype=block.dtype, device=block.device))

        return _by_rows(by_value, s)
    if image_features is None or text_features is None:
        raise ValueError("reset_mode='text_mask' needs image_features [N, D] and text_features [K, D]")
    f = _tensor(image_features, "image_features", 2, "[N, D]").to(s.dtype)
    t = _tensor(text_features, "text_features", 2, "[K, D]").to(s.dtype)
    _match(f, "image_features", 0, n, "N of sims")
    _match(t, "text_features", 0, k, "K of sims")
    _match(t, "text_features", 1, f.shape[1], "D of image_features")
    _check_unit_norm(f, "image_features")
    _check_unit_norm(t, "text_features")

    def by_text_mask(block: Tensor, feats: Tensor) -> Tensor:
        top = torch.topk(block, c, dim=1).indices
        masked = (feats.unsqueeze(1) * t[top]).clamp_(max=0).sum(dim=2)  # [n, c]: sum_k min(f_k t_jk, 0)
        return delta(block, top, masked)

    return _by_rows(by_text_mask, s, f, extra_per_row=c * f.shape[1])


# --- registry and dispatcher ---------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: ``fn(sims, **extras, **params)``; ``params`` are the defaults, where
    ``tau=None`` means "the caller's tau" (``compute_scores``' argument)."""

    fn: Callable[..., Tensor]
    needs: tuple[str, ...]
    optional: tuple[str, ...]
    params: Mapping[str, Any]
    doc: str


def _spec(fn, params, needs=(), optional=()) -> ScoreSpec:
    return ScoreSpec(fn, tuple(needs), tuple(optional), MappingProxyType(dict(params)),
                     fn.__doc__.strip().splitlines()[0])


SCORES: dict[str, ScoreSpec] = {
    "msp": _spec(msp, {"tau": None}),
    "maxlogit": _spec(maxlogit, {"tau": None}),
    "energy": _spec(energy, {"tau": None}),
    "entropy": _spec(entropy, {"tau": None}),
    "mcm": _spec(mcm, {"tau": 1.0}),
    "glmcm": _spec(glmcm, {"tau": 1.0, "lam": 1.0}, needs=["local_sims"]),
    "neglabel": _spec(neglabel, {"tau": 0.01, "ngroup": 100, "seed": 0}, needs=["neg_sims"]),
    "delta_energy": _spec(
        delta_energy,
        {"c": 1, "tau": 0.01, "reset_value": 0.0, "reset_mode": "value"},
        optional=["image_features", "text_features"],
    ),
}


def _requests(names_with_params) -> list[tuple[str, str, dict]]:
    """(output column, score name, params) for a mapping {column: params} or a list of names."""
    if isinstance(names_with_params, str):
        names_with_params = [names_with_params]
    if isinstance(names_with_params, Mapping):
        items = list(names_with_params.items())
    elif isinstance(names_with_params, Iterable):
        items = [(e, {}) if isinstance(e, str) else tuple(e) for e in names_with_params]
    else:
        raise ValueError(f"names_with_params must be a mapping or a list, got {type(names_with_params)}")
    out, seen = [], set()
    for column, params in items:
        params = dict(params or {})
        if column in seen:
            raise ValueError(f"score column {column!r} requested twice; use the mapping form "
                             "{'column_name': {'score': name, **params}} to name each variant")
        seen.add(column)
        out.append((column, params.pop("score", column), params))
    return out


def compute_score(name: str, sims: Any, **kwargs: Any) -> Tensor:
    """One registered score of ``sims`` ``[N, K]``: ``kwargs`` hold the spec's parameters (overriding its
    defaults) and any of ``EXTRAS``; extras the score does not use are ignored.

    Scores whose default tau is None (msp, maxlogit, energy, entropy) need ``tau`` here.
    """
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; registered: {sorted(SCORES)}")
    spec = SCORES[name]
    extras = {e: kwargs.pop(e) for e in EXTRAS if e in kwargs}
    bad = sorted(set(kwargs) - set(spec.params))
    if bad:
        raise ValueError(f"score {name!r} has no parameter(s) {bad}; its parameters: {dict(spec.params)}")
    params = {**spec.params, **kwargs}
    if params.get("tau", 0) is None:
        raise ValueError(f"score {name!r} needs an explicit tau (logits = sims / tau); pass tau=...")
    missing = [e for e in spec.needs if extras.get(e) is None]
    if missing:
        raise ValueError(f"score {name!r} needs extra input(s) {missing}")
    inputs = {e: extras[e] for e in spec.needs + spec.optional if extras.get(e) is not None}
    return spec.fn(sims, **inputs, **params)


def compute_scores(names_with_params, sims: Any, tau: float, **extras: Any) -> dict[str, Tensor]:
    """Compute several registered scores of ``sims`` ``[N, K]``; returns {column: scores [N]}.

    ``names_with_params``: a list of score names (``["msp", "energy"]``, or ``(name, params)`` pairs),
    or a mapping ``{column: params}`` where ``params`` may hold ``"score"`` (the registry name, default
    the column) and overrides of the spec's defaults, e.g.
    ``{"energy_t1": {"score": "energy", "tau": 1.0}, "delta_energy_c5": {"score": "delta_energy", "c": 5}}``.
    ``tau``: used by scores whose default tau is None (msp, maxlogit, energy, entropy) unless their
    params set it; mcm/glmcm (1.0), neglabel and delta_energy (0.01) keep their own defaults.
    ``extras``: any of ``EXTRAS`` (local_sims, neg_sims, image_features, text_features).
    Errors name the output column.
    """
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise ValueError(f"unknown extra input(s) {unknown}; known: {list(EXTRAS)}")
    results = {}
    for column, name, params in _requests(names_with_params):
        if name in SCORES and SCORES[name].params.get("tau", 0) is None:
            params.setdefault("tau", tau)
        try:
            results[column] = compute_score(name, sims, **params, **extras)
        except ValueError as err:
            raise ValueError(f"score column {column!r}: {err}") from None
    return results
