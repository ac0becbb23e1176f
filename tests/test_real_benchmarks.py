"""The three real-benchmark configs, end to end on miniatures of their datasets.

For each config (imagenet1k, hard_ood, cross_dataset) the miniatures of tests/miniatures.py (real archive
formats, folder names and file types, a few tiny images) are served on 127.0.0.1, and the config's own DAG
runs: download, verify, extract, validate, manifests, features with a random-init small open_clip model
saved to a local checkpoint, training, every score, every report. Only an overlay config (sizes, the
backbone, one seed and shot, short schedules) and $DELTAENERGY_SOURCES_OVERRIDE (URLs, digests) differ
from a real run. A config holding several studies is listed in full (snakemake -n) and run for a
representative subset of its studies. Plus unit checks of the class-subset accuracy against NumPy.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml

import miniatures
from conftest import ROOT, SNAKEMAKE
from deltaenergy.config import ConfigError, study_configs, validate_config
from deltaenergy.data import protocols
from deltaenergy.data.classes import class_subset, id_class_names
from deltaenergy.data.sources import SOURCES_OVERRIDE_ENV
from deltaenergy.evaluate import metrics_tables, score_table
from deltaenergy.provenance import sha256_file

TINY = ROOT / "tests" / "fixtures" / "openclip" / "tiny-vit.json"
# The studies each test runs (the whole config is listed by snakemake -n; running every study would
# multiply the ~5 CPU-min a study takes here): the 40/60 split and one leave-one-domain-out study. The
# ImageNet-10/20 and VLCS manifests are checked by tests/test_real_data.py.
RUN_STUDIES = {"imagenet1k": None, "hard_ood": ["split40_all"], "cross_dataset": ["pacs_sketch_all"]}


# --------------------------------------------------------------------------- class subsets (unit)


def test_class_subset_prediction_and_accuracy_rows_match_numpy():
    """pred_subset = argmax over the subset's classes only; accuracy rows <d> (subset) and <d>@all (all)."""
    gen = torch.Generator().manual_seed(0)
    n, k, d = 40, 12, 8
    image = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(k, d, generator=gen), dim=-1)
    subset = [1, 4, 5, 9]
    labels = np.asarray(subset)[torch.randint(0, 4, (n,), generator=gen).numpy()]
    manifest = pd.DataFrame({"path": [f"{i}.jpg" for i in range(n)], "label": labels, "split": "test",
                             "dataset": "imagenet_a", "role": "covariate"})
    scores = {"msp": {"score": "msp", "tau": 0.01}}
    table = score_table({"global": image}, text, manifest, scores, chunk=7, class_subset=subset)
    sims = (image @ text.T).numpy()
    ref_subset = np.asarray(subset)[sims[:, subset].argmax(1)]
    np.testing.assert_array_equal(table["pred_subset"], ref_subset)
    np.testing.assert_array_equal(table["pred"], sims.argmax(1))
    assert (table["pred_subset"] != table["pred"]).any()  # the test separates the two
    plain = score_table({"global": image}, text, manifest.assign(dataset="imagenet_v2"), scores)
    assert "pred_subset" not in plain
    runs = pd.concat([table, plain]).assign(method="zeroshot", shots=0, seed=0)
    _, acc = metrics_tables(runs, ["msp"])
    got = dict(zip(acc["dataset"], acc["acc"]))
    assert set(got) == {"imagenet_a", "imagenet_a@all", "imagenet_v2"}
    assert got["imagenet_a"] == pytest.approx(np.mean(ref_subset == labels))
    assert got["imagenet_a@all"] == pytest.approx(np.mean(sims.argmax(1) == labels))
    assert got["imagenet_v2"] == got["imagenet_a@all"]
    assert list(acc.columns) == ["method", "shots", "seed", "dataset", "role", "acc"]
    assert dict(zip(acc["dataset"], acc["role"]))["imagenet_a@all"] == "covariate_all"


# --------------------------------------------------------------------------- configs


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def test_real_configs_describe_the_paper_protocols():
    """ViT-B/16 OpenAI weights, seeds 1-3, the reference schedule; ID class counts of each study."""
    counts = {}
    for name in RUN_STUDIES:
        raw = _config(name)
        studies = study_configs(raw) if "studies" in raw else {name: validate_config(raw)}
        for study, cfg in studies.items():
            assert cfg["backbone"] == {"name": "openclip", "options": {**cfg["backbone"]["options"], "arch": "ViT-B-16",
                                                                       "pretrained": "openai"}}
            assert cfg["fewshot"]["seeds"] == [1, 2, 3] and cfg["data"]["kind"] == "registry"
            assert (cfg["train"]["lr"], cfg["train"]["batch_size"], cfg["train"]["epochs"]) == (0.002, 32, 50)
            assert cfg["prompt"]["n_ctx"] == 16
            counts[study] = (len(id_class_names(cfg["data"])), tuple(cfg["fewshot"]["shots"]))
    assert counts["imagenet1k"] == (1000, (1, 16))
    assert counts["split40"] == (400, (1, 2, 4, 8, 16)) and counts["imagenet10_20"] == (10, (1, 2, 4, 8, 16))
    pacs = {s: c for s, c in counts.items() if s.startswith("pacs_")}
    vlcs = {s: c for s, c in counts.items() if s.startswith("vlcs_")}
    assert set(pacs.values()) == {(7, (16,))} and set(vlcs.values()) == {(5, (16,))}
    assert {s.removeprefix("pacs_") for s in pacs} == set(protocols.PACS_DOMAINS)
    assert {s.removeprefix("vlcs_") for s in vlcs} == set(protocols.VLCS_DOMAINS)
    # ImageNet-A/R are classified among their 200 classes by protocol (whatever folders a copy holds).
    wnids, _ = protocols.imagenet_classes()
    main = validate_config(_config("imagenet1k"))["data"]
    assert class_subset("imagenet_a", main) == sorted(wnids.index(w) for w in protocols.imagenet_a_r_wnids("imagenet_a"))
    assert class_subset("imagenet_v2", main) is None and class_subset("imagenet1k", main) is None
    split = study_configs(_config("hard_ood"))["split40"]["data"]
    id_wnids = [wnids[i] for i in protocols.hard_split(1, 0.4)[0]]
    subset = class_subset("imagenet_r", split)
    assert [id_wnids[i] for i in subset] == sorted(set(id_wnids) & set(protocols.imagenet_a_r_wnids("imagenet_r")))


def test_config_errors_name_the_study_and_key():
    hard = _config("hard_ood")
    hard["studies"]["split40"]["methods"]["locoop"]["top_k"] = 400
    with pytest.raises(ConfigError, match=r"study 'split40'.*'methods\.locoop\.top_k': 400 must be below .* \(400\)"):
        study_configs(hard)
    main = _config("imagenet1k")
    with pytest.raises(ConfigError, match=r"data\.sizes\.imagenet1k\.train_per_class = 8"):
        validate_config({**main, "data": {**main["data"], "sizes": {"imagenet1k": {"train_per_class": 8}}}})
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=r"'data\.protocol': only with data\.kind: registry"):
        validate_config({**demo, "data": {**demo["data"], "protocol": {"name": "imagenet1k"}}})
    with pytest.raises(ConfigError, match=r"'data'.*'protocol' is a required property"):
        validate_config({**main, "data": {k: v for k, v in main["data"].items() if k != "protocol"}})


# --------------------------------------------------------------------------- end to end on miniatures


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(miniatures, override table path) with the archives served on 127.0.0.1 for the module."""
    root = tmp_path_factory.mktemp("mini")
    mini = miniatures.build(root / "data", train_per_class=3, val_per_class=2)
    with miniatures.serve(mini) as server:
        yield mini, miniatures.write_override(root / "sources.json", mini, server)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-init small open_clip model (tests/fixtures/openclip/tiny-vit.json) saved as a local checkpoint."""
    open_clip.add_model_config(TINY)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model(TINY.stem)
    path = tmp_path_factory.mktemp("weights") / "tiny-vit.pt"
    torch.save(model.state_dict(), path)
    return path


def _overlay(path, mini, checkpoint, config: dict) -> None:
    """The only differences from the real config: sizes, backbone, URLs' counts, one shot/seed, short runs."""
    ids = {config["data"]["id"], *(s.get("data", {}).get("id") for s in (config.get("studies") or {}).values())}
    sizes = {i: {"train_per_class": 2, "val_per_class": 1} for i in ids if i}
    over = {
        "backbone": {"options": {"arch": str(TINY), "pretrained": None, "checkpoint": str(checkpoint),
                                 "sha256": sha256_file(checkpoint)}},
        "data": {**mini.data_config(), "sizes": sizes},
        "fewshot": {"shots": [1], "seeds": [1]},
        "features": {"batch_size": 64},
        "prompt": {"n_ctx": 4},  # shorter prompts: CoCoOp encodes K of them per image
        "train": {"epochs": 1},
        "methods": {"cocoop": {"train": {"epochs": 1}}},
        "neglabel": {"max_candidates": 200},
        # Hutchinson with 2 probes (the small model's 4 x 64 context would otherwise take the exact Hessian: 256
        # Hessian-vector products over all ImageNet classes).
        "diagnostics": {"shots": None, "hessian": {"methods": ["coop"], "n_probes": 2, "n_bootstrap": 20,
                                                   "max_samples": 8, "max_exact_params": 0}},
        "ablations": {"c_sweep": {"c": [1, 2]}},
    }
    if config.get("studies"):  # a study's own data.sizes would otherwise replace the overlay's
        over["studies"] = {name: {"data": {"sizes": sizes}} for name in config["studies"]}
    path.write_text(yaml.safe_dump(over))


def _snakemake(workdir, configs, override, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, SOURCES_OVERRIDE_ENV: str(override)}
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--configfile", *map(str, configs),
                           "--cores", "2", *extra], cwd=workdir, capture_output=True, text=True, env=env, timeout=2400)


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:")[1].split("total")[0]
    return {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[3:] if line.strip()}


@pytest.fixture(scope="module")
def runs(served, tiny_checkpoint, tmp_path_factory):
    """{config: (results folder, dry-run job counts of the whole config)}, each run on the miniatures in one
    working folder (the downloads are shared, as in a real checkout); every dry run comes first."""
    mini, override = served
    tmp = tmp_path_factory.mktemp("real")
    configs, out = {}, {}
    for name in RUN_STUDIES:
        overlay = tmp / f"{name}-overlay.yaml"
        _overlay(overlay, mini, tiny_checkpoint, _config(name))
        configs[name] = [ROOT / "config" / f"{name}.yaml", overlay]
        dry = _snakemake(tmp / "work", configs[name], override, "-n")
        assert dry.returncode == 0, dry.stderr[-4000:]
        out[name] = (tmp / "work" / "results" / name, _job_counts(dry.stdout))
    for name, targets in RUN_STUDIES.items():
        proc = _snakemake(tmp / "work", configs[name], override, *(targets or []))
        assert proc.returncode == 0, proc.stderr[-6000:]
    return out


def _read(res, study=None):
    folder = res / study if study else res
    return (pd.read_csv(folder / "metrics" / "detection.csv"), pd.read_csv(folder / "metrics" / "accuracy.csv"),
            folder)


def _check_outputs(folder, det, acc, ood, covariate, id_name):
    """Every run, score and set is in the tidy tables; every report exists without a traceback."""
    assert set(det["dataset"]) == set(ood) and set(det["score"]) == {
        "msp", "maxlogit", "energy", "energy_t1", "entropy", "mcm", "glmcm", "neglabel", "delta_energy"}
    assert set(det["method"]) == set(acc["method"]) == {"zeroshot", "zeroshot_ensemble", "coop", "ebm", "locoop", "cocoop"}
    assert det[["auroc", "fpr95"]].notna().all().all()
    assert {id_name, *covariate} <= set(acc["dataset"])
    index = (folder / "reports" / "index.html").read_text()
    for page in sorted((folder / "reports").glob("*.html")):
        assert "Traceback" not in page.read_text(), page
        assert page.name == "index.html" or page.name in index
    assert len(list((folder / "reports").glob("*.html"))) >= 9


@pytest.mark.workflow
def test_imagenet1k_config_end_to_end(runs, served):
    mini, _ = served
    res, jobs = runs["imagenet1k"]
    det, acc, folder = _read(res)
    assert jobs["fetch_dataset"] == 8 and jobs["build_dataset"] == 9 and "fetch_weights" not in jobs
    _check_outputs(folder, det, acc, ["inaturalist", "sun", "places", "textures"],
                   ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"], "imagenet1k")
    # ImageNet-A/R: accuracy among their 200 classes and among all 1000, from the same predictions.
    assert {"imagenet_a@all", "imagenet_r@all"} <= set(acc["dataset"])
    assert not {"imagenet_v2@all", "imagenet_sketch@all", "imagenet1k@all"} & set(acc["dataset"])
    for name in ["imagenet_a", "imagenet_r"]:
        sidecar = json.loads((folder / "manifests" / f"{name}.csv.json").read_text())
        wnids, _ = protocols.imagenet_classes()
        assert sidecar["class_subset"] == sorted(wnids.index(w) for w in protocols.imagenet_a_r_wnids(name))
        table = pd.read_parquet(folder / "scores" / "coop" / "shots1_seed1" / f"{name}.parquet")
        assert len(table) == 200 and set(table["pred_subset"]) <= set(sidecar["class_subset"])
        assert set(table["label"]) == set(sidecar["class_subset"])
        rows = acc[(acc["method"] == "coop") & acc["dataset"].isin([name, f"{name}@all"])].set_index("dataset")["acc"]
        assert rows[name] == pytest.approx((table["pred_subset"] == table["label"]).mean())
        assert rows[f"{name}@all"] == pytest.approx((table["pred"] == table["label"]).mean())
    manifest = pd.read_csv(folder / "manifests" / "imagenet1k.csv")
    n_classes = mini.counts["imagenet1k"]["classes"]
    assert manifest.groupby("split")["label"].nunique().to_dict() == {"test": n_classes, "train": n_classes,
                                                                       "val": n_classes}
    prov = json.loads((folder / "provenance.json").read_text())
    assert len(prov["id_classes"]["names"]) == 1000 and "open_clip_torch==" in prov["text_metadata"]
    assert prov["backbone"]["weights_sha256"] == prov["config"]["backbone"]["options"]["sha256"]


@pytest.mark.workflow
def test_hard_ood_config_end_to_end(runs):
    res, jobs = runs["hard_ood"]
    assert {k for k in jobs if k.endswith("_index")} == {"split40_index", "imagenet10_20_index"}
    assert jobs["split40_fetch_dataset"] == 4 and "imagenet10_20_fetch_dataset" not in jobs  # shared downloads
    id_index, ood_index = protocols.hard_split(1, 0.4)
    det, acc, folder = _read(res, "split40")
    _check_outputs(folder, det, acc, ["imagenet1k_open"], ["imagenet_v2", "imagenet_sketch", "imagenet_a",
                                                          "imagenet_r"], "imagenet1k")
    classes = json.loads((folder / "manifests" / "classes.json").read_text())
    wnids, _ = protocols.imagenet_classes()
    assert classes["ids"] == [wnids[i] for i in id_index] and len(classes["ids"]) == 400
    # Covariate sets keep only the ID classes; their labels index the 400 ID classes.
    for name in ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]:
        manifest = pd.read_csv(folder / "manifests" / f"{name}.csv")
        kept = {classes["ids"][label] for label in manifest["label"]}
        assert kept and kept <= {wnids[i] for i in id_index}
    open_set = pd.read_csv(folder / "manifests" / "imagenet1k_open.csv")
    assert (open_set["label"] == -1).all() and open_set["path"].str.split("/").str[-2].isin(
        [wnids[i] for i in ood_index]).all()


@pytest.mark.workflow
def test_cross_dataset_config_end_to_end(runs):
    res, jobs = runs["cross_dataset"]
    assert sum(k.endswith("_index") for k in jobs) == 8 and jobs["pacs_art_painting_fetch_dataset"] == 5
    for study, dataset, held_out in [("pacs_sketch", "pacs", "sketch")]:
        det, acc, folder = _read(res, study)
        _check_outputs(folder, det, acc, ["caltech101", "textures", "food101"], [f"{dataset}_{held_out}"], dataset)
        domains, classes = protocols.DOMAINS[dataset]
        id_rows = pd.read_csv(folder / "manifests" / f"{dataset}.csv")
        assert set(id_rows["path"].str.split("/").str[-3]) == set(domains) - {held_out}
        assert id_rows["label"].nunique() == len(classes)
        shifted = pd.read_csv(folder / "manifests" / f"{dataset}_{held_out}.csv")
        assert set(shifted["path"].str.split("/").str[-3]) == {held_out}
        caltech = set(pd.read_csv(folder / "manifests" / "caltech101.csv")["path"].str.split("/").str[-2])
        removed = protocols.cross_dataset(dataset, held_out)["removed"]["caltech101"]
        assert caltech and not caltech & {*removed, *protocols.CALTECH101_NEVER}
