"""The paper's diagnostic figures as pure functions: ΔEnergy overlap (Fig. 1A), zero-shot masking (Fig. 3),
Hessian consistency across domains vs accuracy (Fig. 1B), the radar's normalised axes (Fig. 1C), and the
ablations' validation-split selection and ΔEnergy c sweep.

Conventions: score columns are higher = more in-distribution; ``role`` is ``id`` | ``covariate`` | ``ood``;
the ID reference is always the ID *test* split (as in the metrics tables). Notebooks call these and only
plot and print.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from .hessian import hessian_consistencies, prompt_loss_fn
from .methods.losses import energy, mask_features, similarities
from .metrics import bootstrap_ci, detection_metrics
from .prompts import ConditionalPromptLearner, image_conditioned_text
from .scores import compute_score

MASK_MODES = ("keep_positive", "keep_negative")


def overlap_coefficient(a, b, grid_size: int = 512) -> float:
    """Overlap coefficient OVL = ∫ min(p_a(x), p_b(x)) dx of the densities of two samples, in [0, 1].

    Each density is a Gaussian kernel density estimate (``scipy.stats.gaussian_kde``, Scott's bandwidth)
    evaluated on one grid of ``grid_size`` points spanning both samples ± 4 bandwidths; the integral is
    the trapezoid rule. 1 = identical distributions, 0 = disjoint. Known case: N(0, 1) vs N(d, 1) has
    OVL = 2 Φ(-|d| / 2). A sample with fewer than 2 values or zero variance has no KDE: ``ValueError``.
    """
    xs = []
    for name, x in (("a", a), ("b", b)):
        x = np.asarray(x, dtype=float).ravel()
        if x.size < 2 or not np.isfinite(x).all() or np.ptp(x) == 0:
            raise ValueError(
                f"overlap_coefficient: sample {name} needs >= 2 finite values with nonzero spread "
                f"(got {x.size} values, spread {np.ptp(x) if x.size else 'n/a'})"
            )
        xs.append(x)
    from scipy import stats  # imported where used: scoring jobs import this module and never need scipy

    kdes = [stats.gaussian_kde(x) for x in xs]
    pad = 4 * max(float(np.sqrt(k.covariance[0, 0])) for k in kdes)
    grid = np.linspace(min(x.min() for x in xs) - pad, max(x.max() for x in xs) + pad, grid_size)
    return float(np.clip(np.trapezoid(np.minimum(kdes[0](grid), kdes[1](grid)), grid), 0.0, 1.0))


def energy_overlap_table(scores: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per run (method, shots, seed) and non-ID dataset: OVL of ``column`` between the ID test split and
    that dataset (:func:`overlap_coefficient`), with the dataset's role. Low OVL = separable."""
    rows = []
    for (method, shots, seed), run in scores.groupby(["method", "shots", "seed"], sort=True):
        ref = run.loc[(run["role"] == "id") & (run["split"] == "test"), column].to_numpy()
        for dataset, part in run[run["role"] != "id"].groupby("dataset", sort=True):
            rows.append({"method": method, "shots": shots, "seed": seed, "dataset": dataset,
                         "role": part["role"].iloc[0], "overlap": overlap_coefficient(ref, part[column].to_numpy())})
    return pd.DataFrame(rows)


@torch.no_grad()
def masking_effect(
    feats: torch.Tensor, text: torch.Tensor, tau: float, mask_mode: str, renormalize: bool = True
) -> pd.DataFrame:
    """Per image: the prediction before and after masking its feature by P = f ⊙ t_top1 (anchor = the
    predicted class; :func:`~deltaenergy.methods.losses.mask_features`), whether it changed, and
    ΔE_mask = E(s̃) - E(s) in cosine units at ``tau``. ``feats`` [N, D], ``text`` [K, D]."""
    sims = feats @ text.T
    pred = sims.argmax(dim=-1)
    masked = mask_features(feats, text, pred, mask_mode, renormalize) @ text.T
    new = masked.argmax(dim=-1)
    return pd.DataFrame({
        "mask_mode": mask_mode, "pred": pred.numpy(), "pred_masked": new.numpy(),
        "changed": (pred != new).numpy(), "delta_energy_mask": (energy(masked, tau) - energy(sims, tau)).double().numpy(),
    })  # fmt: skip


def change_rates(effect: pd.DataFrame, by: list[str], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Fraction of images whose prediction changed, per group of ``by``, with a 95% percentile bootstrap
    interval (``metrics.bootstrap_ci``) and the group size."""
    rows = []
    for key, part in effect.groupby(by, sort=True):
        changed = part["changed"].to_numpy(dtype=float)
        low, high = bootstrap_ci(np.mean, changed, n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "rate": changed.mean(),
                     "ci_low": low, "ci_high": high, "n": changed.size})
    return pd.DataFrame(rows)


def hessian_domains(
    id_feats: torch.Tensor,
    id_labels: torch.Tensor,
    text: torch.Tensor,
    covariate: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    mask_mode: str = "keep_positive",
    renormalize: bool = True,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The labelled domains compared with the ID domain: ``masked_id`` (the ID features masked by the
    prompt's own top-1 text feature, held fixed as data) and each covariate set (features, labels).

    ``text``: class text features [K, D], or per-image [N, K, D] (CoCoOp)."""
    rows = torch.arange(len(id_feats))
    with torch.no_grad():
        anchor = similarities(id_feats, text).argmax(dim=-1)
        top1 = text[anchor] if text.ndim == 2 else text[rows, anchor]  # [N, D]
        masked = mask_features(id_feats, top1, rows, mask_mode, renormalize)
    return {"masked_id": (masked, id_labels), **covariate}


def correlation(frame: pd.DataFrame, x: str, y: str) -> dict:
    """Pearson r and Spearman ρ of columns ``x`` and ``y`` with two-sided p-values and the number of
    points; NaN where fewer than 3 points or a column is constant."""
    xs, ys = frame[x].to_numpy(float), frame[y].to_numpy(float)
    out = {"n": int(xs.size), "pearson_r": np.nan, "pearson_p": np.nan, "spearman_rho": np.nan, "spearman_p": np.nan}
    if xs.size >= 3 and np.ptp(xs) > 0 and np.ptp(ys) > 0:
        from scipy import stats

        r = stats.pearsonr(xs, ys)
        rho = stats.spearmanr(xs, ys)
        out.update(pearson_r=float(r.statistic), pearson_p=float(r.pvalue),
                   spearman_rho=float(rho.statistic), spearman_p=float(rho.pvalue))
    return out


def hessian_vs_accuracy(hessian: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Hessian rows of the covariate domains joined with each run's accuracy on that set (``acc``).

    ``hessian``: method, shots, seed, domain, cosine, distance, ...; ``accuracy``: the metrics table.
    Every Hessian run and covariate domain must have its accuracy row (``ValueError`` otherwise)."""
    cov = hessian[hessian["domain"] != "masked_id"]
    acc = accuracy.rename(columns={"dataset": "domain"})[["method", "shots", "seed", "domain", "acc"]]
    merged = cov.merge(acc, on=["method", "shots", "seed", "domain"], how="left", validate="one_to_one")
    missing = merged[merged["acc"].isna()]
    if len(missing):
        raise ValueError(f"hessian_vs_accuracy: no accuracy for {missing[['method', 'shots', 'seed', 'domain']].values.tolist()}")
    return merged


RADAR_AXES = {
    "id_acc": "ID accuracy",
    "covariate_acc": "covariate accuracy (mean)",
    "auroc": "AUROC (mean over OOD sets)",
    "one_minus_fpr95": "1 − FPR95 (mean over OOD sets)",
}


def radar_table(detection: pd.DataFrame, accuracy: pd.DataFrame, score: str, shots: int) -> pd.DataFrame:
    """Raw radar axes (fractions, higher = better) per method: mean over seeds of each run's ID test and
    mean covariate accuracy and its mean AUROC / 1 − FPR95 over OOD sets under ``score``. Trained methods
    at ``shots``; zero-shot runs (shots 0) always included."""
    keep = lambda f: f[(f["shots"] == shots) | (f["shots"] == 0)]  # noqa: E731
    acc, det = keep(accuracy), keep(detection[detection["score"] == score])
    run = ["method", "shots", "seed"]
    id_acc = acc[acc["role"] == "id"].groupby(run)["acc"].mean().rename("id_acc")
    cov_acc = acc[acc["role"] == "covariate"].groupby(run)["acc"].mean().rename("covariate_acc")
    auroc = det.groupby(run)["auroc"].mean().rename("auroc")
    fpr = (1 - det.groupby(run)["fpr95"].mean()).rename("one_minus_fpr95")
    per_run = pd.concat([id_acc, cov_acc, auroc, fpr], axis=1).reset_index()
    return per_run.groupby("method", sort=True)[list(RADAR_AXES)].mean()


def minmax_normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Each column scaled to [0, 1] over the rows: (x - min) / (max - min); a constant column becomes 1."""
    span = table.max() - table.min()
    out = (table - table.min()) / span.where(span > 0, 1.0)
    out.loc[:, span <= 0] = 1.0
    return out


def select_on_validation(frame: pd.DataFrame, metric: str, group: list[str] | None = None) -> pd.DataFrame:
    """The row(s) with the highest ``metric`` (a *validation* column; ties keep the first row in frame
    order), per ``group`` when given. Selection never looks at any other column."""
    if group:
        return frame.loc[frame.groupby(group, sort=True)[metric].idxmax()]
    return frame.loc[[frame[metric].idxmax()]]


def delta_energy_c_sweep(
    id_sims: torch.Tensor, ood_sims: Mapping[str, torch.Tensor], c_values: list[int], tau: float, reset_value: float = 0.0
) -> pd.DataFrame:
    """Detection metrics of ΔE_c (``scores.delta_energy``, ``reset_mode`` value) per c and OOD set.

    ``id_sims`` [N, K] of the ID test split, ``ood_sims`` {dataset: [M, K]} cosine similarities."""
    rows = []
    for c in c_values:
        id_score = compute_score("delta_energy", id_sims, tau=tau, c=c, reset_value=reset_value).double().numpy()
        for dataset, sims in ood_sims.items():
            ood = compute_score("delta_energy", sims, tau=tau, c=c, reset_value=reset_value).double().numpy()
            rows.append({"c": c, "dataset": dataset, **detection_metrics(id_score, ood)})
    return pd.DataFrame(rows)


def subsample(n: int, max_samples: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded subsample of ``range(n)`` of size ``min(n, max_samples)`` (all if None)."""
    if max_samples is None or n <= max_samples:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values


def prompt_hessian_rows(
    learner: torch.nn.Module,
    id_data: tuple[torch.Tensor, torch.Tensor],
    covariate: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    tau: float,
    cfg: dict,
) -> list[dict]:
    """Hessian consistency of a trained prompt between the ID domain and ``masked_id`` and each covariate
    domain (``hessian.hessian_consistencies``; exact or Hutchinson by ``cfg['max_exact_params']``).

    ``id_data``/``covariate``: (features [N, D], labels [N]); ``cfg``: ``diagnostics.hessian``. Each domain
    is subsampled to ``max_samples`` (seeded). One row per domain: domain, n, and the consistency fields."""
    def sub(feats, labels):
        idx = subsample(len(labels), cfg["max_samples"], cfg["seed"])
        return feats[idx], labels[idx]

    id_feats, id_labels = sub(*id_data)
    with torch.no_grad():
        conditional = isinstance(learner, ConditionalPromptLearner)
        text = image_conditioned_text(learner, id_feats) if conditional else learner()
    covariate = {name: sub(*data) for name, data in covariate.items()}
    domains = hessian_domains(id_feats, id_labels, text, covariate, cfg["mask_mode"])
    theta = learner.ctx.detach().flatten()
    losses = {name: prompt_loss_fn(learner, f, y, tau, name=name) for name, (f, y) in domains.items()}
    ref = prompt_loss_fn(learner, id_feats, id_labels, tau, name="id")
    result = hessian_consistencies(ref, losses, theta, cfg["max_exact_params"], cfg["n_probes"], cfg["seed"],
                                   cfg["n_bootstrap"], name_a="id")
    return [{"domain": name, "n": len(domains[name][1]), **result[name]} for name in domains]


def ablation_table(scores: pd.DataFrame, score: str) -> pd.DataFrame:
    """One row per run (method, shots, seed) of an ablation: ``val_acc`` (ID *validation* split, the
    selection criterion; ``n_val`` images) beside test-only columns ``test_acc`` (ID test), ``covariate_acc`` (mean over
    covariate sets) and ``auroc``/``fpr95`` of ``score`` (mean over OOD sets), which are never used to choose."""
    from .evaluate import metrics_tables
    from .metrics import accuracy

    run = ["method", "shots", "seed"]
    val = scores[(scores["role"] == "id") & (scores["split"] == "val")]
    val_acc = val.groupby(run).apply(lambda p: accuracy(p["label"].to_numpy(), p["pred"].to_numpy()),
                                     include_groups=False).rename("val_acc")
    n_val = val.groupby(run).size().rename("n_val")
    detection, acc = metrics_tables(scores, [score])
    test_acc = acc[acc["role"] == "id"].set_index(run)["acc"].rename("test_acc")
    cov_acc = acc[acc["role"] == "covariate"].groupby(run)["acc"].mean().rename("covariate_acc")
    det = detection.groupby(run)[["auroc", "fpr95"]].mean()
    return pd.concat([val_acc, n_val, test_acc, cov_acc, det], axis=1).reset_index()
