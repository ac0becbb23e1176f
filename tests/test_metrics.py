"""Detection metrics vs scikit-learn (with ties), hand-built separations, accuracy, bootstrap, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from deltaenergy.metrics import accuracy, bootstrap_ci, detection_metrics


def sklearn_reference(ids, ood, drop_intermediate=False):
    """The same five numbers from scikit-learn (ID = 1 for auroc/fpr95/aupr_in; OOD = 1, -score else)."""
    y = np.r_[np.ones(len(ids)), np.zeros(len(ood))]
    s = np.r_[ids, ood]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=drop_intermediate)
    fpr_o, tpr_o, _ = roc_curve(1 - y, -s, drop_intermediate=drop_intermediate)
    return {
        "auroc": roc_auc_score(y, s),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "fpr95_ood_pos": fpr_o[np.argmax(tpr_o >= 0.95)],
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }


def assert_metrics(got, want, tol=1e-12):
    assert set(got) == {"auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out"}
    for key, value in want.items():
        assert isinstance(got[key], float)
        assert abs(got[key] - value) <= tol, (key, got[key], value)


@pytest.mark.parametrize("decimals", (None, 1, 0))  # None: no ties; 1, 0: many ties within and across
@pytest.mark.parametrize("n_id,n_ood", [(1, 1), (1, 5), (7, 2), (20, 20), (100, 37), (1000, 3000)])
@pytest.mark.parametrize("seed", range(3))
def test_detection_metrics_match_sklearn(n_id, n_ood, decimals, seed):
    rng = np.random.default_rng(seed)
    ids, ood = rng.normal(0.7, 1, n_id), rng.normal(0, 1, n_ood)
    if decimals is not None:
        ids, ood = np.round(ids, decimals), np.round(ood, decimals)
    assert_metrics(detection_metrics(ids, ood), sklearn_reference(ids, ood))


@pytest.mark.parametrize("seed", range(5))
def test_fpr95_equals_openood_default_roc_without_ties(seed):
    """sklearn's default drop_intermediate=True (OpenOOD) agrees when scores are distinct."""
    rng = np.random.default_rng(seed)
    ids, ood = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    assert_metrics(detection_metrics(ids, ood), sklearn_reference(ids, ood, drop_intermediate=True))


def test_fpr95_inside_a_tied_straight_run_differs_from_sklearn_default():
    """ROC points (0, .9), (.1, .95), (.2, 1) are collinear; drop_intermediate=True skips the middle one."""
    ids = np.r_[np.full(18, 10.0), 5.0, 4.0]
    ood = np.r_[5.0, 4.0, np.zeros(8)]
    assert detection_metrics(ids, ood)["fpr95"] == 0.1
    assert sklearn_reference(ids, ood)["fpr95"] == 0.1
    assert sklearn_reference(ids, ood, drop_intermediate=True)["fpr95"] == 0.2


def test_fpr95_by_hand():
    ids = np.arange(1.0, 21.0)  # 95% of 20 ID kept at threshold t = 2
    ood = np.array([0.0, 1.0, 1.5, 2.0, 5.0, 30.0])  # OOD >= 2: three of six
    got = detection_metrics(ids, ood)
    assert got["fpr95"] == 0.5
    # OOD positive: the 95% OOD recall threshold (score <= t') is t' = 30 (6 of 6; 5/6 < 0.95): all ID
    assert got["fpr95_ood_pos"] == 1.0


def test_perfect_inverted_and_tied():
    ids, ood = np.array([2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 1.0, 1.5])
    perfect = detection_metrics(ids, ood)
    assert perfect == {"auroc": 1.0, "fpr95": 0.0, "fpr95_ood_pos": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}
    inverted = detection_metrics(-ids, -ood)
    assert inverted["auroc"] == 0.0 and inverted["fpr95"] == 1.0 and inverted["fpr95_ood_pos"] == 1.0
    tied = detection_metrics(np.zeros(3), np.zeros(4))
    assert tied["auroc"] == 0.5 and tied["fpr95"] == 1.0 and tied["fpr95_ood_pos"] == 1.0
    assert tied["aupr_in"] == pytest.approx(3 / 7) and tied["aupr_out"] == pytest.approx(4 / 7)


def test_metrics_are_fractions_and_accept_lists():
    got = detection_metrics([0.1, 0.9, 0.4], [0.2, 0.3])
    assert all(0.0 <= v <= 1.0 for v in got.values())
    assert got["auroc"] == pytest.approx(4 / 6)


def test_accuracy():
    assert accuracy([0, 1, 2, 3], [0, 1, 0, 3]) == 0.75
    assert accuracy(np.array(["a", "b"]), np.array(["a", "b"])) == 1.0


def test_bootstrap_detection_is_seeded_and_contains_point_estimate():
    rng = np.random.default_rng(0)
    ids, ood = rng.normal(1, 1, 200), rng.normal(0, 1, 150)
    auroc = lambda a, b: detection_metrics(a, b)["auroc"]  # noqa: E731
    low, high = bootstrap_ci(auroc, ids, ood, n_boot=200, seed=1)
    assert low < auroc(ids, ood) < high and high - low < 0.2
    assert bootstrap_ci(auroc, ids, ood, n_boot=200, seed=1) == (low, high)
    assert bootstrap_ci(auroc, ids, ood, n_boot=200, seed=2) != (low, high)
    every = bootstrap_ci(detection_metrics, ids, ood, n_boot=200, seed=1)
    assert every["auroc"] == (low, high)
    point = detection_metrics(ids, ood)
    assert all(lo <= point[k] <= hi for k, (lo, hi) in every.items())


def test_bootstrap_stratified_keeps_group_sizes_and_paired_keeps_rows():
    sizes = bootstrap_ci(lambda a, b: len(a) + 1000 * len(b), np.arange(7.0), np.arange(3.0), n_boot=20)
    assert sizes == (3007.0, 3007.0)
    x = np.arange(50.0)  # paired: the same rows are drawn for both arrays, so x - y is always 0
    assert bootstrap_ci(lambda a, b: float(np.max(np.abs(a - b))), x, x.copy(), n_boot=50, paired=True) == (
        0.0, 0.0)
    unpaired = bootstrap_ci(lambda a, b: float(np.max(np.abs(a - b))), x, x.copy(), n_boot=50)
    assert unpaired[0] > 0


def test_bootstrap_interval_of_a_mean_matches_normal_theory():
    x = np.random.default_rng(3).normal(0, 2, 400)
    low, high = bootstrap_ci(np.mean, x, n_boot=2000, alpha=0.1, seed=0)
    half = 1.6449 * x.std() / np.sqrt(x.size)  # 90% normal interval of the mean
    assert low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_accuracy_paired():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    preds = np.where(rng.random(300) < 0.8, labels, (labels + 1) % 5)
    low, high = bootstrap_ci(accuracy, labels, preds, n_boot=300, paired=True)
    assert low < accuracy(labels, preds) < high


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: detection_metrics([], [0.1]), "id_scores is empty"),
        (lambda: detection_metrics([0.1], []), "ood_scores is empty"),
        (lambda: detection_metrics([0.1, np.nan], [0.2]), "id_scores contains NaN or inf"),
        (lambda: detection_metrics([0.1], [np.inf]), "ood_scores contains NaN or inf"),
        (lambda: detection_metrics(np.zeros((2, 2)), [0.1]), "id_scores: expected a 1-D"),
        (lambda: accuracy([1, 2], [1]), "labels has 2 entries but preds has 1"),
        (lambda: accuracy([], []), "labels: expected a non-empty"),
        (lambda: bootstrap_ci(np.mean, [1.0], n_boot=0), "n_boot"),
        (lambda: bootstrap_ci(np.mean, [1.0], alpha=1.0), "alpha"),
        (lambda: bootstrap_ci(np.mean), "at least one array"),
        (lambda: bootstrap_ci(np.mean, [1.0], []), r"arrays\[1\] is empty"),
        (lambda: bootstrap_ci(accuracy, [1, 2], [1], paired=True), "equal length"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
