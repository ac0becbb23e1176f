"""Diagnostics and ablation helpers against known answers: the Gaussian overlap coefficient, NumPy masking,
scipy correlations, hand-built radar/selection tables, ΔE_c vs a NumPy reference and scikit-learn AUROC,
multi-domain Hessian consistency vs the pairwise one, and the shared method palette."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score

from deltaenergy.diagnostics import (
    ablation_table,
    change_rates,
    correlation,
    delta_energy_c_sweep,
    energy_overlap_table,
    hessian_domains,
    hessian_vs_accuracy,
    masking_effect,
    minmax_normalise,
    overlap_coefficient,
    radar_table,
    select_on_validation,
    subsample,
)
from deltaenergy.hessian import hessian_consistencies, hessian_consistency, prompt_loss_fn
from deltaenergy.palette import METHOD_COLORS, method_colors, method_order


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


# --- overlap coefficient --------------------------------------------------------------------------


@pytest.mark.parametrize("d", [0.5, 1.0, 2.0, 4.0])
def test_overlap_of_two_unit_gaussians_is_2_phi_minus_half_d(d):
    rng = np.random.default_rng(int(10 * d))
    a, b = rng.normal(0, 1, 5000), rng.normal(d, 1, 5000)
    expected = 2 * stats.norm.cdf(-d / 2)
    assert overlap_coefficient(a, b) == pytest.approx(expected, abs=0.02)
    assert overlap_coefficient(b, a) == pytest.approx(overlap_coefficient(a, b), abs=1e-12)


def test_overlap_identical_disjoint_and_degenerate():
    x = np.random.default_rng(0).normal(size=500)
    assert overlap_coefficient(x, x) == pytest.approx(1.0, abs=1e-3)
    assert overlap_coefficient(x, x + 100) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="sample b needs >= 2 finite values with nonzero spread"):
        overlap_coefficient(x, np.ones(10))


def test_energy_overlap_table_uses_the_id_test_split():
    rng = np.random.default_rng(1)
    rows = [("id", "val", "fm", v) for v in rng.normal(50, 1, 200)]  # val must be ignored
    rows += [("id", "test", "fm", v) for v in rng.normal(0, 1, 2000)]
    rows += [("ood", "test", "far", v) for v in rng.normal(2, 1, 2000)]
    frame = pd.DataFrame(rows, columns=["role", "split", "dataset", "de"]).assign(method="m", shots=1, seed=1)
    out = energy_overlap_table(frame, "de")
    assert out[["dataset", "role"]].values.tolist() == [["far", "ood"]]
    assert out["overlap"].iloc[0] == pytest.approx(2 * stats.norm.cdf(-1), abs=0.03)


# --- masking --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["keep_positive", "keep_negative"])
def test_masking_effect_matches_numpy(mode):
    f, t = _unit(50, 16, 0), _unit(5, 16, 1)
    out = masking_effect(f, t, 0.01, mode)
    fn, tn = f.numpy(), t.numpy()
    sims = fn @ tn.T
    pred = sims.argmax(1)
    prod = fn * tn[pred]
    keep = prod >= 0 if mode == "keep_positive" else prod <= 0
    masked = fn * keep
    masked /= np.linalg.norm(masked, axis=1, keepdims=True)
    msims = masked @ tn.T
    energy = lambda s: -0.01 * np.log(np.exp(s / 0.01).sum(1))  # noqa: E731
    np.testing.assert_array_equal(out["pred"], pred)
    np.testing.assert_array_equal(out["pred_masked"], msims.argmax(1))
    np.testing.assert_array_equal(out["changed"], pred != msims.argmax(1))
    np.testing.assert_allclose(out["delta_energy_mask"], energy(msims) - energy(sims), rtol=1e-9, atol=1e-12)
    assert (out["mask_mode"] == mode).all()


def test_change_rates_mean_and_interval():
    effect = pd.DataFrame({"dataset": ["a"] * 100 + ["b"] * 50, "changed": [True] * 30 + [False] * 70 + [True] * 50})
    rates = change_rates(effect, ["dataset"]).set_index("dataset")
    assert rates.loc["a", "rate"] == pytest.approx(0.3) and rates.loc["a", "n"] == 100
    assert rates.loc["a", "ci_low"] < 0.3 < rates.loc["a", "ci_high"]
    assert (rates.loc["b", "rate"], rates.loc["b", "ci_low"], rates.loc["b", "ci_high"]) == (1.0, 1.0, 1.0)


def test_hessian_domains_masked_id_for_shared_and_per_image_text():
    f, t = _unit(30, 8, 2), _unit(4, 8, 3)
    y = torch.arange(30) % 4
    cov = {"c": (_unit(5, 8, 4), torch.zeros(5, dtype=torch.long))}
    shared = hessian_domains(f, y, t, cov)
    per_image = hessian_domains(f, y, t.expand(30, -1, -1), cov)
    anchor = (f @ t.T).argmax(-1)
    keep = (f * t[anchor]) >= 0
    np.testing.assert_allclose(shared["masked_id"][0].numpy(), F.normalize(f * keep, dim=-1).numpy())
    np.testing.assert_allclose(per_image["masked_id"][0].numpy(), shared["masked_id"][0].numpy())
    assert list(shared) == ["masked_id", "c"] and shared["masked_id"][1] is y


def test_subsample_is_seeded_sorted_and_bounded():
    idx = subsample(100, 10, seed=3)
    assert len(idx) == 10 and idx.tolist() == sorted(set(idx.tolist()))
    assert idx.tolist() == subsample(100, 10, seed=3).tolist() != subsample(100, 10, seed=4).tolist()
    assert subsample(5, 10, 0).tolist() == list(range(5)) == subsample(5, None, 0).tolist()


# --- correlation, radar, selection ----------------------------------------------------------------


def test_correlation_matches_scipy_and_is_nan_when_undefined():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=12)})
    frame["y"] = frame["x"] * 2 + rng.normal(size=12)
    got = correlation(frame, "x", "y")
    assert got["pearson_r"] == pytest.approx(np.corrcoef(frame["x"], frame["y"])[0, 1])
    assert got["spearman_rho"] == pytest.approx(stats.spearmanr(frame["x"], frame["y"]).statistic)
    assert got["n"] == 12
    assert math.isnan(correlation(frame.head(2), "x", "y")["pearson_r"])
    assert math.isnan(correlation(frame.assign(y=1.0), "x", "y")["spearman_rho"])


def test_hessian_vs_accuracy_joins_and_names_missing_rows():
    hess = pd.DataFrame({"method": "coop", "shots": 4, "seed": [1, 1, 2], "domain": ["masked_id", "sk", "sk"],
                         "cosine": [0.9, 0.8, 0.7]})
    acc = pd.DataFrame({"method": "coop", "shots": 4, "seed": [1, 2], "dataset": "sk", "role": "covariate",
                        "acc": [0.5, 0.4]})
    joined = hessian_vs_accuracy(hess, acc)
    assert joined[["seed", "cosine", "acc"]].values.tolist() == [[1, 0.8, 0.5], [2, 0.7, 0.4]]
    with pytest.raises(ValueError, match=r"no accuracy for \[\['coop', 4, 2, 'sk'\]\]"):
        hessian_vs_accuracy(hess, acc.head(1))


def test_radar_table_and_minmax_normalise():
    acc = pd.DataFrame([
        ("zs", 0, 0, "id", "id", 0.2), ("zs", 0, 0, "c1", "covariate", 0.1), ("zs", 0, 0, "c2", "covariate", 0.3),
        ("a", 4, 1, "id", "id", 0.5), ("a", 4, 1, "c1", "covariate", 0.4), ("a", 4, 1, "c2", "covariate", 0.4),
        ("a", 4, 2, "id", "id", 0.7), ("a", 4, 2, "c1", "covariate", 0.2), ("a", 4, 2, "c2", "covariate", 0.2),
        ("a", 1, 1, "id", "id", 0.99), ("a", 1, 1, "c1", "covariate", 0.99), ("a", 1, 1, "c2", "covariate", 0.99),
    ], columns=["method", "shots", "seed", "dataset", "role", "acc"])
    det = pd.DataFrame([
        ("zs", 0, 0, "s", "o1", 0.6, 0.8), ("zs", 0, 0, "s", "o2", 0.8, 0.6), ("zs", 0, 0, "other", "o1", 0.0, 0.0),
        ("a", 4, 1, "s", "o1", 0.9, 0.1), ("a", 4, 2, "s", "o1", 0.7, 0.3), ("a", 1, 1, "s", "o1", 0.0, 1.0),
    ], columns=["method", "shots", "seed", "score", "dataset", "auroc", "fpr95"])
    raw = radar_table(det, acc, "s", shots=4)
    np.testing.assert_allclose(raw.loc["zs"].to_numpy(), [0.2, 0.2, 0.7, 0.3])
    np.testing.assert_allclose(raw.loc["a"].to_numpy(), [0.6, 0.3, 0.8, 0.8])
    norm = minmax_normalise(pd.DataFrame({"x": [1.0, 3.0, 2.0], "k": [5.0, 5.0, 5.0]}))
    assert norm["x"].tolist() == [0.0, 1.0, 0.5] and norm["k"].tolist() == [1.0, 1.0, 1.0]


def test_selection_looks_only_at_the_validation_column():
    frame = pd.DataFrame({"method": ["a", "b", "c"], "val_acc": [0.5, 0.7, 0.7], "test_acc": [0.9, 0.1, 0.2]})
    assert select_on_validation(frame, "val_acc")["method"].tolist() == ["b"]  # first of the tie; test ignored
    grouped = frame.assign(g=["x", "x", "y"])
    assert select_on_validation(grouped, "val_acc", ["g"])["method"].tolist() == ["b", "c"]


def test_ablation_table_val_accuracy_and_test_metrics():
    rows = []
    for split, labels, preds in [("val", [0, 1, 1, 0], [0, 1, 0, 0]), ("test", [0, 1], [1, 1])]:
        rows += [("id", split, "fm", y, p, 1.0) for y, p in zip(labels, preds)]
    rows += [("covariate", "test", "cv", 0, 0, 0.5), ("ood", "test", "oo", -1, 0, 0.0)]
    scores = pd.DataFrame(rows, columns=["role", "split", "dataset", "label", "pred", "s"]).assign(
        method="v", shots=4, seed=1, path="p")
    out = ablation_table(scores, "s").iloc[0]
    assert (out["val_acc"], out["n_val"], out["test_acc"], out["covariate_acc"], out["auroc"]) == (0.75, 4, 0.5, 1.0, 1.0)


# --- ΔE_c sweep -----------------------------------------------------------------------------------


def test_c_sweep_matches_numpy_delta_energy_and_sklearn():
    id_sims, ood_sims = _unit(60, 6, 5) @ _unit(6, 6, 6).T, _unit(40, 6, 7) @ _unit(6, 6, 6).T
    id_sims, ood_sims = id_sims.float(), ood_sims.float()
    out = delta_energy_c_sweep(id_sims, {"o": ood_sims}, [1, 3], tau=0.05, reset_value=0.0)

    def ref(s, c, tau=0.05):
        s = s.double().numpy()
        reset = s.copy()
        np.put_along_axis(reset, np.argsort(-s, axis=1)[:, :c], 0.0, axis=1)
        e = lambda x: -tau * np.log(np.exp(x / tau).sum(1))  # noqa: E731
        return e(reset) - e(s)

    for c in [1, 3]:
        y = np.r_[np.ones(60), np.zeros(40)]
        expected = roc_auc_score(y, np.r_[ref(id_sims, c), ref(ood_sims, c)])
        assert out.set_index("c").loc[c, "auroc"] == pytest.approx(expected, abs=1e-6)


# --- Hessian over many domains --------------------------------------------------------------------


def _quadratics(p: int, k: int):
    rng = np.random.default_rng(p)
    mats = [(m + m.T) / 2 for m in rng.normal(size=(k, p, p))]
    fns = [(lambda a: (lambda th: 0.5 * th @ a @ th))(torch.from_numpy(a)) for a in mats]
    return mats, fns, torch.from_numpy(rng.normal(size=p))


@pytest.mark.parametrize("exact", [True, False])
def test_consistencies_equal_pairwise_consistency_and_traces(exact):
    mats, fns, theta = _quadratics(8, 3)
    bound = 8 if exact else 0
    many = hessian_consistencies(fns[0], {"b": fns[1], "c": fns[2]}, theta, max_exact_params=bound, n_probes=200, seed=1)
    for name, fn, mat in [("b", fns[1], mats[1]), ("c", fns[2], mats[2])]:
        one = hessian_consistency(fns[0], fn, theta, max_exact_params=bound, n_probes=200, seed=1, names=("A", name))
        for key in ["cosine", "distance", "cosine_se", "trace_ab"]:
            assert many[name][key] == pytest.approx(one[key], rel=1e-12, abs=1e-12)
        if exact:
            assert many[name]["trace_b"] == pytest.approx(np.trace(mat))
            assert many[name]["cosine"] == pytest.approx((mats[0] * mat).sum() / np.linalg.norm(mats[0]) / np.linalg.norm(mat))
        else:
            assert abs(many[name]["trace_b"] - np.trace(mat)) <= 3 * many[name]["trace_b_se"]
    assert many["b"]["n_hvp"] == (16 if exact else 400)


def test_prompt_loss_refuses_unlabelled_domains():
    class Learner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ctx = torch.nn.Parameter(torch.zeros(2, 4))

    with pytest.raises(ValueError, match=r"hessian\[digits\]: 2 samples have no label .*semantic OOD"):
        prompt_loss_fn(Learner(), torch.zeros(3, 4), torch.tensor([0, -1, -1]), 0.01, name="digits")


# --- palette --------------------------------------------------------------------------------------


def test_palette_fixed_for_known_methods_and_distinct_for_others():
    colors = method_colors(["ebm", "zeroshot", "new_b", "coop", "new_a"])
    assert method_order(colors) == ["zeroshot", "coop", "ebm", "new_a", "new_b"] == list(colors)
    assert colors["ebm"] == METHOD_COLORS["ebm"] and colors["coop"] == METHOD_COLORS["coop"]
    assert len(set(colors.values())) == 5
    assert method_colors(["new_a", "new_b"]) == {k: colors[k] for k in ["new_a", "new_b"]}
