"""The benchmark suite's helpers: demo time by phase from Snakemake benchmark files, the GPU script's dry run.

``demo_phases`` must aggregate whatever files exist (sums per rule folder or top-level file, the span from
the earliest start to the latest end, unmeasured "-" fields as 0). ``gpu.sh --dry`` runs the GPU script's
code on the CPU with the tiny model: every item, the equality check of the float32 step, TFLOP/s rows and
the result files, and the suite's markdown summary of those items.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import demo_phases  # noqa: E402
import gpu  # noqa: E402
import run  # noqa: E402

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench_file(path: Path, seconds: float, cpu: str, rss: float, end: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    os.utime(path, (end, end))


def test_demo_phases_sums_rules_and_spans_parallel_jobs(tmp_path):
    _bench_file(tmp_path / "train" / "coop_seed1.tsv", 10.0, "8.0", 100, end=1000.0)
    _bench_file(tmp_path / "train" / "ebm_seed1.tsv", 6.0, "-", 300, end=1004.0)  # ran alongside: 994..1004
    _bench_file(tmp_path / "metrics.tsv", 2.0, "1.5", 50, end=1010.0)
    result = demo_phases.demo_phases(tmp_path)
    train, metrics = result["phases"]
    assert train == {"phase": "train", "jobs": 2, "sum_s": 16.0, "cpu_s": 8.0, "max_rss_mb": 300, "span_s": 14.0}
    assert metrics["phase"] == "metrics" and metrics["span_s"] == 2.0
    assert result["total"]["jobs"] == 3 and result["total"]["span_s"] == 20.0  # 990 .. 1010
    assert "| train | 2 | 16.0 | 14.0 | 8.0 | 300 |" in demo_phases.table(result)
    assert demo_phases.demo_phases(tmp_path / "missing") == {"folder": "missing", "phases": [], "total": None}
    assert "run the demo first" in demo_phases.table(demo_phases.demo_phases(tmp_path / "missing"))


def test_peak_lookup_prefers_the_specific_name():
    assert gpu.peak_tflops("NVIDIA H100 PCIe")["bfloat16"] == 756.0
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3")["bfloat16"] == 989.0
    assert gpu.peak_tflops("NVIDIA H200") == gpu.PEAK_TFLOPS["H200"]
    assert gpu.peak_tflops(None) is None and gpu.peak_tflops("Some GPU") is None


def test_gpu_script_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    [path] = tmp_path.glob("gpu-*-dry.json")
    result = json.loads(path.read_text())
    assert result["dry"]
    assert set(result["items"]) == {"train_float32", "train_bfloat16", "features", "scores", "hessian"}
    fp32 = result["items"]["train_float32"]["rows"]
    assert [r["K"] for r in fp32] == [3, 40]
    assert all(r["grad_rel_diff"] < 1e-5 and r["ours_tflops"] > 0 and r["reference_tflops"] > 0 for r in fp32)
    assert set(result["matmul_ceiling_tflops"]) == {"float32", "bfloat16"}
    assert all(r["tflops"] > 0 for r in result["items"]["features"]["rows"])
    assert "## 1. Prompt-learning step" in path.with_suffix(".md").read_text()

    items = result["items"]  # the suite's summary renders the same items
    suite = {"machine": result["machine"], "quick": True, "command": "make bench-quick", "wall_s": 1.0,
             "loadavg_after": [0.0, 0.0, 0.0], "items": {"train": items["train_float32"]["raw"],
             "features": items["features"], "scores": items["scores"], "hessian": items["hessian"],
             "demo_phases": demo_phases.demo_phases(tmp_path / "none")}}
    text = run.summary(suite)
    assert "| 40 |" in text and "## 5. Demo study by phase" in text and "run the demo first" in text


def test_projection_counts_the_study():
    import projection

    result = {"items": {"train": {"rows": [{"K": 1000, "speedup": 5.0, "flops": {"ours": 10, "reference": 200}}]},
                        "features": {"setup": {"flops_per_image": 1}}}}
    out = projection.projection(result, [1.0])
    assert out["steps"] == 3 * 3 * (32 + 63 + 125 + 250 + 500) * 50 and out["models"] == 45
    images = 1000 * (1 + 2 + 4 + 8 + 16) * 3 + projection.EVAL_IMAGES
    assert out["flops"]["ours"] == out["steps"] * 10 + images
    assert out["flops"]["reference"] == out["steps"] * 200 + 45 * projection.EVAL_IMAGES
    assert out["gpu_hours"]["1.0"]["ours"] == out["flops"]["ours"] / 1e12 / 3600
