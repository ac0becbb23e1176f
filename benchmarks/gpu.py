"""GPU benchmark (run by benchmarks/gpu.sh): items 1-4 at real scale on one CUDA device, in TFLOP/s.

Usage: benchmarks/gpu.sh [--compile] [--dry]

1. prompt-learning step, ViT-B/16 random init, K = 10, 100, 1000, n_ctx 16, batch 32: ours and the
   CoOp-style reference in float32 (TF32 off), checked equal (rel. diff < 1e-5) as on the CPU; then ours
   under bfloat16 autocast (the study's GPU default), its loss and gradient against the float32 reference
   reported (tolerance 2e-2), optionally under ``torch.compile`` (``--compile``);
2. feature extraction, 2048 images (random JPEGs), data-loader workers 0, 4, 8, pinned memory;
3. every OOD score on 50,000 x 1,000 on the device;
4. the Hessian diagnostic (exact vs Hutchinson) of a CoOp prompt on the random-init ViT-B/16's text
   tower (10 Fashion-MNIST class names, n_ctx 1-16: p = 512-8,192), on the device.
Achieved TFLOP/s = counted FLOPs (torch.utils.flop_counter) / median seconds, against the device's
datasheet peak (dense, ``PEAK_TFLOPS``) and against a measured large-matmul ceiling. ``--dry`` runs the
same code on the CPU with a tiny model and small sizes (what tests/test_bench_reference.py runs).
Writes benchmarks/results/gpu-<host>-<date>.json and .md (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch

import bench_features
import bench_hessian
import bench_scores
import bench_train
import run as run_suite
from common import RESULTS, machine, stats, timed
from deltaenergy.io import atomic_path, write_json

TINY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openclip" / "tiny-vit.json"
# Dense datasheet peaks in TFLOP/s (float32 without TF32, bfloat16 tensor cores), by device-name substring;
# the first match wins, so more specific names come first.
PEAK_TFLOPS = {
    "H200": {"float32": 67.0, "bfloat16": 989.0},
    "H100 PCIe": {"float32": 51.0, "bfloat16": 756.0},
    "H100": {"float32": 67.0, "bfloat16": 989.0},
    "A100": {"float32": 19.5, "bfloat16": 312.0},
    "L40S": {"float32": 91.6, "bfloat16": 362.0},
    "L4": {"float32": 30.3, "bfloat16": 121.0},
    "A10": {"float32": 31.2, "bfloat16": 125.0},
}


def peak_tflops(device_name: str | None) -> dict | None:
    """Datasheet peaks of a device name (``PEAK_TFLOPS``), or None when unknown."""
    return next((peak for key, peak in PEAK_TFLOPS.items() if device_name and key in device_name), None)


def matmul_ceiling(device: str, size: int, repeats: int) -> dict:
    """Measured TFLOP/s of a ``size``³ matmul per dtype: what dense kernels reach on this device."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size, device=device, dtype=dtype)

        def run():
            a @ a
            sync()

        run()
        times, _ = timed(run, repeats)
        out[str(dtype).removeprefix("torch.")] = 2 * size**3 / stats(times)["median_s"] / 1e12
    return out


def train_rows(result: dict, precision: str, peak: dict | None, ceiling: dict) -> list[dict]:
    """Per K: achieved TFLOP/s of ours and the reference and their share of the peak and the ceiling."""
    rows = []
    for r in result["rows"]:
        row = {"K": r["K"], "precision": precision, "speedup": r["speedup"], "loss_rel_diff": r["loss_rel_diff"],
               "grad_rel_diff": r["grad_rel_diff"]}
        for side, dtype in (("ours", precision), ("reference", "float32")):
            tflops = r["flops"][side] / r[side]["median_s"] / 1e12
            row[f"{side}_s"] = r[side]["median_s"]
            row[f"{side}_tflops"] = tflops
            row[f"{side}_of_peak"] = tflops / peak[dtype] if peak else None
            row[f"{side}_of_ceiling"] = tflops / ceiling[dtype]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = ["| K | ours precision | ours s | ours TFLOP/s (peak, ceiling) | ref s (fp32) "
             "| ref TFLOP/s (peak, ceiling) "
             "| speedup | loss / grad rel diff |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['K']:,} | {r['precision']} | {r['ours_s']:.4f} | {r['ours_tflops']:.2f} ({pct(r['ours_of_peak'])}, "
            f"{pct(r['ours_of_ceiling'])}) | {r['reference_s']:.4f} | {r['reference_tflops']:.2f} "
            f"({pct(r['reference_of_peak'])}, {pct(r['reference_of_ceiling'])}) | {r['speedup']:.1f}x | "
            f"{r['loss_rel_diff']:.1e} / {r['grad_rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny model, small sizes (checks the script)")
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile (bfloat16)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device; run with --dry to check the script on the CPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (the exactness checks need it)
    torch.backends.cudnn.allow_tf32 = False
    device = "cpu" if args.dry else "cuda"
    dev = ["--device", device, "--threads", "2"]
    arch = ["--arch", str(TINY)] if args.dry else ["--arch", "ViT-B-16"]
    ks = ["--k", "3", "40"] if args.dry else ["--k", "10", "100", "1000"]
    big = ["--batch", "4", "--repeats", "2"] if args.dry else ["--batch", "32", "--repeats", "10"]
    train = [*arch, *ks, *big, *dev, "--ref-chunk", "0", "--ref-warmup-max-k", "100000"]
    start = time.perf_counter()
    info = machine()
    peak = peak_tflops(info["cuda"])
    ceiling = matmul_ceiling(device, 512 if args.dry else 8192, 3 if args.dry else 20)
    result = {"machine": info, "peak_tflops": peak, "matmul_ceiling_tflops": ceiling, "dry": args.dry, "items": {}}
    items = result["items"]
    runs = [("float32", train), ("bfloat16", [*train, "--amp", "--tolerance", "2e-2"])]
    if args.compile:
        runs.append(("bfloat16+compile", [*train, "--amp", "--compile", "--tolerance", "2e-2"]))
    for name, argv_train in runs:
        res = bench_train.run(bench_train.parser().parse_args(argv_train))
        items[f"train_{name}"] = {"raw": res, "rows": train_rows(res, name.split("+")[0], peak, ceiling)}
        print(f"[{time.strftime('%H:%M:%S')}] train {name} done", flush=True)
    feats = ["--images", "8", "--workers", "0", "2", "--batch", "4", "--repeats", "1"] if args.dry else \
        ["--images", "2048", "--workers", "0", "4", "8", "--batch", "256", "--repeats", "3", "--warmup"]
    items["features"] = bench_features.run(bench_features.parser().parse_args([*arch, *feats, *dev]))
    print(f"[{time.strftime('%H:%M:%S')}] features done", flush=True)
    for row in items["features"]["rows"]:
        row["tflops"] = items["features"]["setup"]["flops_per_image"] * row["images_per_s"] / 1e12
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        scores = ["--n", "2000", "--k", "50", "--neg", "100", "--repeats", "2"] if args.dry else ["--repeats", "10"]
        items["scores"] = bench_scores.main([*scores, *dev, "--out", scratch])
        hessian = ["--n-ctx", "1", "--repeats", "1", "--n", "32", "--probes", "2", "--hvp-vectors", "2", "--chunk", "2",
                   "--exact-max-params", "0", "--demo-n-ctx", "1"] if args.dry else \
            ["--n-ctx", "1", "2", "4", "8", "16", "--repeats", "3", "--exact-max-params", "2048"]
        items["hessian"] = bench_hessian.main([*hessian, *arch, *dev, "--out", scratch])
    result["wall_s"] = time.perf_counter() - start
    parts = [f"# GPU benchmarks: {info['cuda'] or info['cpu']} ({'dry run on the CPU' if args.dry else device}), "
             f"{info['timestamp']}",
             f"Datasheet peak TFLOP/s {peak}; measured matmul ceiling "
             f"{', '.join(f'{k} {v:.1f}' for k, v in ceiling.items())} TFLOP/s. Wall time {result['wall_s']:.0f} s.",
             "## 1. Prompt-learning step", *[table(items[f'train_{n}']['rows']) for n, _ in runs],
             "## 2. Feature extraction", bench_features.table(items["features"]),
             "## 3. Scores", run_suite.scores_table(items["scores"]),
             "## 4. Hessian", run_suite.hessian_table(items["hessian"])]
    text = "\n\n".join(parts) + "\n"
    stem = f"gpu-{info['host']}-{time.strftime('%Y%m%d')}{'-dry' if args.dry else ''}"
    write_json(args.out / f"{stem}.json", result)
    with atomic_path(args.out / f"{stem}.md") as tmp:
        tmp.write_text(text)
    print(text + f"\nwrote {args.out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
