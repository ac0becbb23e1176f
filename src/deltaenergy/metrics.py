"""Detection and classification metrics (NumPy), plus a seeded bootstrap.

Conventions:
- Scores follow the project's sign: higher = more in-distribution. All metrics are fractions in [0, 1]
  (tables may show them as %).
- ``auroc``, ``fpr95``, ``aupr_in`` treat ID as the positive class; ``fpr95_ood_pos`` and ``aupr_out``
  treat OOD as positive (scores negated).
- FPR at 95% TPR is read off the full ROC curve (one point per distinct score, as
  ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``): the FPR at the first threshold, scanning
  from high to low, where TPR >= 0.95; no interpolation. sklearn's default ``drop_intermediate=True``
  (used by OpenOOD) agrees except when that point lies inside a straight run of tied scores.
- AUPR is average precision (``sklearn.metrics.average_precision_score``), not the trapezoid rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

RECALL_LEVEL = 0.95


def _scores(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; detection metrics need at least one ID and one OOD score")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; fix the score computation upstream")
    return a


def _curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct threshold, thresholds from high to low."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, is_pos = scores[order], is_pos[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # last index of each tie group
    tps = np.cumsum(is_pos)[ends]
    return tps, ends + 1 - tps


def _fpr_at_recall(tps: np.ndarray, fps: np.ndarray, level: float = RECALL_LEVEL) -> float:
    tpr, fpr = tps / tps[-1], fps / fps[-1]
    return float(fpr[np.argmax(tpr >= level)])


def _auroc(tps: np.ndarray, fps: np.ndarray) -> float:
    return float(np.trapezoid(np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]))


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    recall = np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(recall) * (tps / (tps + fps))))


def detection_metrics(id_scores: Any, ood_scores: Any) -> dict[str, float]:
    """auroc, fpr95, fpr95_ood_pos, aupr_in, aupr_out of 1-D ID and OOD scores (higher = ID).

    - auroc: area under the ROC curve, ID positive (0.5 = chance; ties count one half).
    - fpr95: fraction of OOD with score >= t, where t is the highest threshold keeping >= 95% of ID
      (CLIP-OOD literature's FPR95).
    - fpr95_ood_pos: fraction of ID with score <= t', where t' is the lowest threshold flagging >= 95% of
      OOD as OOD (OpenOOD's FPR@95TPR, OOD positive).
    - aupr_in / aupr_out: average precision with ID / OOD positive.
    """
    ids, ood = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    tps_in, fps_in = _curve(ids, ood)
    tps_out, fps_out = _curve(-ood, -ids)
    return {
        "auroc": _auroc(tps_in, fps_in),
        "fpr95": _fpr_at_recall(tps_in, fps_in),
        "fpr95_ood_pos": _fpr_at_recall(tps_out, fps_out),
        "aupr_in": _average_precision(tps_in, fps_in),
        "aupr_out": _average_precision(tps_out, fps_out),
    }


def accuracy(labels: Any, preds: Any) -> float:
    """Fraction of ``preds`` equal to ``labels`` (1-D, same length, non-empty)."""
    y, p = np.asarray(labels), np.asarray(preds)
    for name, a in (("labels", y), ("preds", p)):
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {a.shape}")
    if y.size != p.size:
        raise ValueError(f"labels has {y.size} entries but preds has {p.size}; they must match")
    return float(np.mean(y == p))


def bootstrap_ci(
    metric_fn: Callable[..., float | Mapping[str, float]],
    *arrays: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    paired: bool = False,
) -> tuple[float, float] | dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) interval of ``metric_fn(*arrays)``.

    ``paired=False`` (detection, stratified): each array is resampled independently with replacement
    at its own size, e.g. ``bootstrap_ci(f, id_scores, ood_scores)``. ``paired=True``: one index draw
    per replicate shared by all arrays (rows kept together), e.g. ``bootstrap_ci(accuracy, labels,
    preds, paired=True)``. Draws come from ``numpy.random.default_rng(seed)``. The interval is
    ``np.quantile(stats, [alpha / 2, 1 - alpha / 2])`` (linear interpolation). If ``metric_fn`` returns a
    mapping (e.g. ``detection_metrics``), a {key: (low, high)} dict is returned.
    """
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    data = [np.asarray(a) for a in arrays]
    for i, a in enumerate(data):
        if a.ndim == 0 or len(a) == 0:
            raise ValueError(f"arrays[{i}] is empty or a scalar; nothing to resample")
    if paired and len({len(a) for a in data}) > 1:
        raise ValueError(f"paired=True needs arrays of equal length, got {[len(a) for a in data]}")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(int(n_boot)):
        if paired:
            idx = rng.integers(0, len(data[0]), size=len(data[0]))
            stats.append(metric_fn(*(a[idx] for a in data)))
        else:
            stats.append(metric_fn(*(a[rng.integers(0, len(a), size=len(a))] for a in data)))
    q = [alpha / 2, 1 - alpha / 2]
    if isinstance(stats[0], Mapping):
        return {key: tuple(float(v) for v in np.quantile([s[key] for s in stats], q)) for key in stats[0]}
    low, high = np.quantile(np.asarray(stats, dtype=np.float64), q)
    return float(low), float(high)
