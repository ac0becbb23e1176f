"""The demo DAG end to end on a reduced config (the session fixture ``two_runs`` of conftest.py): outputs,
metrics vs scikit-learn, image-encoder calls, determinism (two runs in two folders give identical
metrics), a second run that does nothing, `snakemake --report`, and config errors before any job."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score, roc_curve

from conftest import REDUCED, ROOT

pytestmark = pytest.mark.workflow


def test_outputs_follow_the_contract(two_runs):
    _, _, (res, _) = two_runs
    det = pd.read_csv(res / "metrics" / "detection.csv")
    acc = pd.read_csv(res / "metrics" / "accuracy.csv")
    assert list(det.columns) == ["method", "shots", "seed", "score", "dataset", "auroc", "fpr95", "fpr95_ood_pos",
                                 "aupr_in", "aupr_out"]
    assert list(acc.columns) == ["method", "shots", "seed", "dataset", "role", "acc"]
    methods = {"zeroshot", "zeroshot_ensemble", "coop", "ebm", "locoop", "cocoop"}
    assert set(det["method"]) == methods and set(acc["method"]) == methods
    scores = {"msp", "maxlogit", "energy", "energy_t1", "entropy", "mcm", "glmcm", "neglabel", "delta_energy"}
    assert set(det["score"]) == scores
    assert set(det["dataset"]) == {"stamps_animals", "digits", "clipart", "textures"}
    # 2 zero-shot runs + 3 methods x 1 shot x 2 seeds + CoCoOp at seed 1 (fewshot.method_seeds) = 9 runs;
    # 9 score columns; 4 OOD sets.
    assert len(det) == 9 * 9 * 4 and len(acc) == 9 * 5
    assert set(det.loc[det["method"] == "cocoop", "seed"]) == {1} and set(det.loc[det["method"] == "coop", "seed"]) == {1, 2}
    table = pd.read_parquet(res / "scores" / "coop" / "shots4_seed1" / "fashion_mnist.parquet")
    assert {"dataset", "role", "label", "pred"} | scores <= set(table.columns)
    index = (res / "reports" / "index.html").read_text()
    assert "stand-in for CLIP" in index and "detection_table.html" in index
    for report in ["detection_table", "generalization_table"]:
        page = (res / "reports" / f"{report}.html").read_text()
        assert "Traceback" not in page and "± " in page
    prov = json.loads((res / "provenance.json").read_text())
    assert prov["benchmark"] == "demo_small" and len(prov["config_sha256"]) == 64


def test_detection_metrics_reproduced_by_sklearn(two_runs):
    _, _, (res, _) = two_runs
    det = pd.read_csv(res / "metrics" / "detection.csv")
    for row in det.itertuples():
        run = res / "scores" / row.method / f"shots{row.shots}_seed{row.seed}"
        idt = pd.read_parquet(run / "fashion_mnist.parquet")
        idt = idt[idt["split"] == "test"][row.score].to_numpy()
        ood = pd.read_parquet(run / f"{row.dataset}.parquet")[row.score].to_numpy()
        y = np.r_[np.ones(len(idt)), np.zeros(len(ood))]
        s = np.r_[idt, ood]
        assert row.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        assert row.fpr95 == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")], abs=1e-6)


def test_each_image_and_view_is_encoded_once(two_runs):
    """Image-encoder calls = unique images + ID training images x views, whatever the methods and seeds."""
    _, _, (res, _) = two_runs
    sidecars = list((res / "features").rglob("*.npz.json"))
    calls = sum(json.loads(p.read_text())["image_forward_count"] for p in sidecars)
    manifests = [pd.read_csv(p) for p in (res / "manifests").glob("*.csv")]
    unique_images = len(set(pd.concat(manifests)["path"]))
    id_train = pd.read_csv(res / "manifests" / "fashion_mnist.csv").query("split == 'train'")
    views = REDUCED["features"]["views"]
    assert len(sidecars) == 9 + 1 and len(id_train) == 10 * 6
    assert calls == unique_images + len(id_train) * views
    provenance = json.loads((res / "provenance.json").read_text())
    assert provenance["image_encoder_calls"] == calls and provenance["images"] == unique_images
    assert provenance["augmented_views"] == len(id_train) * views


def test_same_config_gives_identical_metrics(two_runs):
    _, _, (res1, res2) = two_runs
    for name in ["detection.csv", "accuracy.csv"]:
        pd.testing.assert_frame_equal(pd.read_csv(res1 / "metrics" / name), pd.read_csv(res2 / "metrics" / name),
                                      check_exact=True)


def test_second_run_does_nothing(two_runs, run_snakemake):
    config, tmp, _ = two_runs
    proc = run_snakemake(tmp / "run1", config, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_diagnostics_outputs(two_runs):
    _, _, (res, res2) = two_runs
    hessian = pd.read_csv(res / "diagnostics" / "hessian" / "ebm" / "shots4_seed1.csv")
    covariate = ["fmnist_resampled", "fmnist_sketch", "fmnist_corrupt", "fmnist_rendition"]
    assert hessian["domain"].tolist() == ["masked_id", *covariate]
    assert set(hessian["mode"]) == {"hutchinson"} and (hessian["cosine"].abs() <= 1 + 3 * hessian["cosine_se"]).all()
    pd.testing.assert_frame_equal(hessian, pd.read_csv(res2 / "diagnostics" / "hessian" / "ebm" / "shots4_seed1.csv"))
    sweep = pd.read_csv(res / "ablations" / "c_sweep.csv")
    det = pd.read_csv(res / "metrics" / "detection.csv")
    # c = 1 of the sweep is the configured delta_energy column (c = 1, v = 0): score_run computes both from
    # the same similarities (no second text-tower pass), so the metrics are equal.
    merged = sweep[sweep["c"] == 1].merge(det[det["score"] == "delta_energy"], on=["method", "shots", "seed", "dataset"])
    assert len(merged) == len(sweep[sweep["c"] == 1]) > 0
    for metric in ["auroc", "fpr95", "aupr_in"]:
        np.testing.assert_allclose(merged[f"{metric}_x"], merged[f"{metric}_y"], rtol=1e-12)
    index = (res / "reports" / "index.html").read_text()
    for name in ["energy_change", "masking_zeroshot", "hessian_consistency", "radar", "ablation_c_sweep",
                 "fewshot_curves", "ablation_ebm_grid"]:
        assert f'href="{name}.html"' in index and f'href="figures/{name}.png"' in index


def test_snakemake_report_zip(two_runs, run_snakemake):
    config, tmp, _ = two_runs
    proc = run_snakemake(tmp / "run1", config, "--report", "report.zip")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with zipfile.ZipFile(tmp / "run1" / "report.zip") as archive:
        names = archive.namelist()
    for name in ["radar.png", "hessian_consistency.png", "detection_table.html", "energy_change.html"]:
        assert any(n.endswith(name) for n in names), name


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["diagnostics"]["hessian"].update(methods=["coop", "maple"]),
         "config key 'diagnostics.hessian.methods': method 'maple' was not trained"),
        (lambda c: c["diagnostics"]["hessian"].update(domains=["textures"]),
         "'textures' is a semantic-OOD set and has no labels"),
    ],
    ids=["untrained_method", "unlabelled_domain"],
)
def test_bad_diagnostics_request_stops_at_dag_construction(tmp_path, run_snakemake, edit, message):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path / "w", path, "-n")
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "w" / "results").exists()


def test_bad_config_key_stops_before_any_job(tmp_path, run_snakemake):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["train"]["learning_rate"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path / "w", path, "-n")
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "config key 'train'" in output and "learning_rate" in output
    assert not (tmp_path / "w" / "results").exists()
