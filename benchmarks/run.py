"""The benchmark suite: `make bench` (7.5 minutes measured on 2 unshared cores) and `make bench-quick` (under 2).

Usage: python benchmarks/run.py [--quick] [--threads 2] [--out benchmarks/results]

Runs, in one process and with ``--threads`` torch threads:
1. prompt-learning step, ours vs the CoOp-style reference (bench_train.py), K = 10, 100, 1000
   (quick: 10, 100), ViT-B/16 random init, n_ctx 16, batch 32;
2. feature-extraction throughput with the data loader (bench_features.py) and the study's image-encoder
   calls (results/demo/provenance.json when present);
3. every OOD score on 50,000 x 1,000 (bench_scores.py; quick: 5,000 x 1,000);
4. the Hessian diagnostic, exact vs Hutchinson (bench_hessian.py; fewer context lengths and repeats);
5. the demo study's time by phase (demo_phases.py, whatever results/demo/benchmarks holds).
Writes benchmarks/results/<host>-<date>[-quick].json (after each item, ``complete`` false until the
end) and a markdown summary (.md) next to it (``--summary FILE`` rewrites it from a results file); every
figure is a median of repeats with min and max. The per-item scripts run alone too (their --help).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import torch

import bench_features
import bench_hessian
import bench_scores
import bench_train
import demo_phases
from common import RESULTS, machine
from deltaenergy.io import atomic_path, write_json

# (quick, full) arguments of each item; chosen so the suite fits its time on 2 unloaded cores
# (the reference's K=1000 step takes minutes: one timed step there, 3 below; no reference warm-up)
TRAIN = (["--k", "10", "100", "--repeats", "3", "--ref-warmup-max-k", "0", "--ref-repeats-large", "1",
          "--large-k", "100"],
         ["--k", "10", "100", "1000", "--repeats", "3", "--ref-warmup-max-k", "0", "--ref-repeats-large", "1"])
FEATURES = (["--images", "16", "--repeats", "1"], ["--images", "32", "--repeats", "3"])
SCORES = (["--quick", "--repeats", "3"], ["--repeats", "3"])
HESSIAN = (["--n-ctx", "1", "2", "--demo-n-ctx", "1", "--repeats", "1", "--probes", "16", "--hvp-vectors", "8",
            "--exact-max-params", "384"],
           ["--n-ctx", "1", "2", "4", "--demo-n-ctx", "4", "--repeats", "2", "--exact-max-params", "768"])


def _quiet(fn, *args):
    """``fn(*args)`` with its printed tables captured (the summary prints them once)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def scores_table(result: dict) -> str:
    lines = ["| score | median s | min s | max s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['row']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |" for r in result["rows"]]
    lines.append(f"| **all (sum of medians)** | **{result['total_median_s']:.2f}** | | |")
    return "\n".join(lines)


def hessian_table(result: dict) -> str:
    lines = ["| n_ctx | p | exact median s (min-max) | Hutchinson median s (min-max) |", "|---:|---:|---:|---:|"]
    for r in result["rows"]:
        e, h = r["exact"], r["hutchinson"]
        ex = f"{e['median_s']:.1f} ({e['min_s']:.1f}-{e['max_s']:.1f})" if e else "skipped"
        lines.append(f"| {r['n_ctx']} | {r['p']:,} | {ex} | {h['median_s']:.1f} ({h['min_s']:.1f}-{h['max_s']:.1f}) |")
    cross = result["crossover_p"]
    lines.append("")
    lines.append(f"Exact = Hutchinson at p ≈ {cross['p']:.0f}" + (" (extrapolated)" if cross["extrapolated"] else "")
                 if cross else "No crossover in the measured range.")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """The markdown summary of a suite result (items a stopped run did not reach are named as such)."""
    m, items = result["machine"], result["items"]
    missing = "Not measured: the run stopped before this item."
    s = items.get("scores")
    after = f", {result['loadavg_after'][0]:.2f} after" if "loadavg_after" in result else ""
    wall = f" Suite wall time {result['wall_s']:.0f} s." if "wall_s" in result else " The run did not complete."
    parts = [
        f"# Benchmarks: {m['host']}, {m['timestamp']}{' (quick)' if result['quick'] else ''}",
        f"{m['cpu']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}; 1-minute load "
        f"average {m['loadavg'][0]:.2f} before{after} (other processes inflate times; compare ratios).{wall} "
        f"Command: `{result['command']}`.",
        "## 1. Prompt-learning step: ours vs CoOp-style reference (ViT-B/16 random init, n_ctx 16, batch 32, fp32)",
        bench_train.table(items["train"]) if "train" in items else missing,
        "## 2. Feature extraction (ViT-B/16, data loader)",
        bench_features.table(items["features"]) if "features" in items else missing,
        f"## 3. Scores, N={s['shape']['N']:,} x K={s['shape']['K']:,} (D={s['shape']['D']})" if s else "## 3. Scores",
        scores_table(s) if s else missing,
        "## 4. Hessian diagnostic (stand-in CoOp prompt)",
        hessian_table(items["hessian"]) if "hessian" in items else missing,
        "## 5. Demo study by phase (Snakemake benchmark files)",
        demo_phases.table(items["demo_phases"]) if "demo_phases" in items else missing,
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 2 minutes instead of about 10")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--summary", type=Path, help="only (re)write the .md summary of this results file")
    args = parser.parse_args(argv)
    if args.summary:
        with atomic_path(args.summary.with_suffix(".md")) as tmp:
            tmp.write_text(summary(json.loads(args.summary.read_text())))
        return {}
    torch.set_num_threads(args.threads)
    mode = 0 if args.quick else 1
    threads = ["--threads", str(args.threads)]
    start = time.perf_counter()
    result = {"machine": machine(), "quick": args.quick,
              "command": f"make bench{'-quick' if args.quick else ''} (python benchmarks/run.py"
                         f"{' --quick' if args.quick else ''} --threads {args.threads})", "items": {}}
    items = result["items"]
    with tempfile.TemporaryDirectory() as scratch:
        none = ["--out", scratch]  # the items' own JSON files: the suite's file holds their results
        steps = [
            ("train", lambda: bench_train.run(bench_train.parser().parse_args(TRAIN[mode] + threads))),
            ("features", lambda: bench_features.run(bench_features.parser().parse_args(FEATURES[mode] + threads))),
            ("scores", lambda: _quiet(bench_scores.main, SCORES[mode] + threads + none)),
            ("hessian", lambda: _quiet(bench_hessian.main, HESSIAN[mode] + threads + none)),
            ("demo_phases", lambda: demo_phases.demo_phases()),
        ]
        stem = f"{result['machine']['host']}-{time.strftime('%Y%m%d')}{'-quick' if args.quick else ''}"
        for name, step in steps:
            began = time.perf_counter()
            items[name] = step()
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {time.perf_counter() - began:.0f} s", flush=True)
            write_json(args.out / f"{stem}.json", {**result, "complete": False})  # what is done so far
    result["wall_s"] = time.perf_counter() - start
    result["loadavg_after"] = machine()["loadavg"]
    result["complete"] = True
    write_json(args.out / f"{stem}.json", result)
    text = summary(result)
    with atomic_path(args.out / f"{stem}.md") as tmp:
        tmp.write_text(text)
    print("\n" + text + f"\nwrote {args.out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
