"""Shared fixtures. ``two_runs``: the demo DAG on a reduced config, run twice in two folders, once per test
session; the workflow tests and the browser test of the reports all read its outputs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

REDUCED = {
    "data": {"sizes": {"fashion_mnist": {"train_per_class": 6, "val_per_class": 2, "test_per_class": 8},
                       "covariate": {"n_per_class": 3}, "ood": {"n": 24}}},
    "fewshot": {"shots": [4], "seeds": [1, 2], "method_shots": {"cocoop": [4]}, "method_seeds": {"cocoop": [1]}},
    "train": {"epochs": 3},
    "features": {"views": 2},
    "neglabel": {"max_candidates": 300},
    # Every training method at this tiny size; CoCoOp's own shorter schedule overridden to fit.
    "methods": {"locoop": {"kind": "locoop", "lambda": 0.25, "top_k": 2},
                "cocoop": {"kind": "cocoop", "train": {"epochs": 2}}},
    # The fewest Hutchinson probes that give a standard error; every diagnostic and ablation still runs.
    "diagnostics": {"hessian": {"methods": ["coop", "ebm", "locoop"], "n_probes": 2, "n_bootstrap": 20}},
    "ablations": {"c_sweep": {"c": [1, 2, 5], "methods": ["zeroshot", "coop", "ebm", "locoop"]}},
}


def _merge(base, over):
    for key, value in over.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def restrict_methods(cfg: dict, methods: dict) -> dict:
    """``cfg`` training only ``methods``: the diagnostics and ablations that name methods fall back to their
    defaults (every trained method) and the EBM grid is dropped unless its base method is kept."""
    cfg["methods"] = methods
    for key in ("method_shots", "method_seeds"):
        cfg["fewshot"][key] = {m: v for m, v in cfg["fewshot"].get(key, {}).items() if m in methods}
    cfg["diagnostics"]["hessian"]["methods"] = None
    cfg["ablations"]["c_sweep"]["methods"] = None
    if (cfg["ablations"].get("ebm_grid") or {}).get("base") not in methods:
        cfg["ablations"]["ebm_grid"] = None
    return cfg


def reduced_config(tmp: Path) -> Path:
    cfg = _merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), REDUCED)
    cfg["benchmark"] = "demo_small"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_snakemake(workdir: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    # One reduced run is ~390 CPU-s of jobs (~110 of them diagnostics); on 2 cores shared at load ~10 it
    # took over 25 min, hence the 40-min cap.
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--configfile", str(config), "--cores", "2", *extra],
        cwd=workdir, capture_output=True, text=True, timeout=2400,
    )


@pytest.fixture(scope="session")
def run_snakemake():
    """``run_snakemake(workdir, config, *extra_args)``: Snakemake on this checkout's Snakefile, 2 cores."""
    return _run_snakemake


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory):
    """(config path, tmp folder, [results of run1, results of run2]) of the reduced demo, run twice."""
    tmp = tmp_path_factory.mktemp("demo")
    config = reduced_config(tmp)
    runs = []
    for name in ["run1", "run2"]:
        proc = _run_snakemake(tmp / name, config)
        assert proc.returncode == 0, proc.stderr[-5000:]
        runs.append(tmp / name / "results" / "demo_small")
    return config, tmp, runs
