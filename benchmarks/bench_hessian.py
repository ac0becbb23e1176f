"""Time the Hessian diagnostic (deltaenergy.hessian) of a stand-in CoOp prompt on CPU, exact vs Hutchinson.

Usage: python benchmarks/bench_hessian.py [--threads 2] [--n-ctx 1 2 4 8] [--repeats 3] [--exact-max-params 1536]

Setup (seeded): PromptLearner on ``standin-conse`` (or, with ``--arch``, a random-init open_clip model) with
the 10 Fashion-MNIST class names, random context
(p = n_ctx * 384 parameters), 160 random unit features with random labels, tau = 0.01. Timed:
1. HVP throughput on the demo prompt (``--demo-n-ctx``): seconds per Hessian-vector product for both HVP
   methods, vmapped in blocks of ``--chunk`` vs a plain loop (chunk 1, no vmap).
2. ``hessian_summary`` (trace, dominant eigenvalue, Frobenius norm) per n_ctx: exact mode (p HVPs; skipped
   above ``--exact-max-params``) and Hutchinson mode (``--probes`` probes + power iteration), median/min/max
   of ``--repeats`` wall-clock runs (time.perf_counter). Hutchinson estimates are compared with the exact
   values as z = (estimate - exact) / SE. The crossover is the p where the exact and Hutchinson medians
   meet (linear interpolation between measured p).
Writes benchmarks/results/hessian-<hostname>-<YYYYMMDD>.json atomically and prints markdown tables. Other
processes on the machine inflate the numbers (several-fold: torch's threads wait on busy cores): the JSON
records the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, random_clip, stats, timed
from deltaenergy.backbones import build_backbone
from deltaenergy.data.classes import FASHION_MNIST_CLASSES
from deltaenergy.hessian import (
    HVP_METHODS,
    MAX_EXACT_PARAMS,
    HessianOperator,
    hessian_summary,
    prompt_loss_fn,
    rademacher,
)
from deltaenergy.io import write_json
from deltaenergy.prompts import PromptLearner
from deltaenergy.provenance import cpu_model

def prompt(backbone, n_ctx: int, n: int, tau: float, seed: int, device: str = "cpu"):
    """(loss_fn, theta, tokens per prompt) of a random-context prompt on n random unit features."""
    gen = torch.Generator().manual_seed(seed)
    learner = PromptLearner(backbone, FASHION_MNIST_CLASSES, n_ctx=n_ctx, generator=gen).to(device)
    feats = F.normalize(torch.randn(n, backbone.embed_dim, generator=gen), dim=-1).to(device)
    labels = torch.randint(0, len(FASHION_MNIST_CLASSES), (n,), generator=gen).to(device)
    return prompt_loss_fn(learner, feats, labels, tau), learner.ctx.detach().flatten(), learner.tokens.ids.shape[1]


def hvp_throughput(loss, theta, vectors: int, chunk: int, repeats: int, seed: int) -> list[dict]:
    """Seconds per HVP for each method, vmapped in blocks of ``chunk`` and looped (chunk 1)."""
    probes = rademacher(vectors, theta.numel(), torch.Generator().manual_seed(seed), theta.dtype)
    rows = []
    for method in HVP_METHODS:
        for block in (chunk, 1):
            op = HessianOperator(loss, theta, block, method)
            op(probes[:2])  # warm-up; sets vmap_ok for blocks > 1
            times, _ = timed(lambda: op(probes), repeats)
            per = [t / vectors for t in times]
            rows.append({"method": method, "chunk": block, "vmap": op.vmap_ok if block > 1 else False, **stats(per)})
    return rows


def crossover(points: list[tuple[int, float, float]]) -> dict | None:
    """p where the exact and Hutchinson medians meet: interpolated between measured (p, exact, Hutchinson)
    points, or, when exact is already slower at the smallest p, extrapolated below it with exact time ∝ p."""
    if not points:
        return None
    p0, e0, h0 = points[0]
    if e0 > h0:
        return {"p": p0 * h0 / e0, "extrapolated": True}
    for (p0, e0, h0), (p1, e1, h1) in zip(points, points[1:]):
        d0, d1 = e0 - h0, e1 - h1
        if d0 <= 0 < d1:
            return {"p": p0 + (p1 - p0) * (-d0) / (d1 - d0), "extrapolated": False}
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[1, 2, 4, 8], help="context lengths (p = 384 n_ctx)")
    parser.add_argument("--demo-n-ctx", type=int, default=4, help="the demo prompt's n_ctx (config prompt.n_ctx)")
    parser.add_argument("--n", type=int, default=160, help="features in the domain")
    parser.add_argument("--probes", type=int, default=64, help="Hutchinson probes")
    parser.add_argument("--chunk", type=int, default=64, help="HVPs per vmapped block")
    parser.add_argument("--hvp-vectors", type=int, default=32, help="vectors in the HVP throughput test")
    parser.add_argument("--exact-max-params", type=int, default=1536, help="skip exact mode above this p")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default=None,
                        help="a random-init open_clip architecture instead of the stand-in (e.g. ViT-B-16)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON result")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tau = 0.01

    load_before = os.getloadavg()
    if args.arch:
        with tempfile.TemporaryDirectory() as folder:
            _, backbone = random_clip(args.arch, Path(folder), args.seed, device=args.device)
    else:
        backbone = build_backbone("standin-conse").to(args.device)
    loss, theta, _ = prompt(backbone, args.demo_n_ctx, args.n, tau, args.seed, args.device)
    hvp_rows = hvp_throughput(loss, theta, args.hvp_vectors, args.chunk, args.repeats, args.seed)

    rows = []
    for n_ctx in args.n_ctx:
        loss, theta, length = prompt(backbone, n_ctx, args.n, tau, args.seed, args.device)
        p = theta.numel()
        row = {"n_ctx": n_ctx, "p": p, "tokens_per_prompt": length, "exact": None}
        common = {"n_probes": args.probes, "seed": args.seed, "chunk": args.chunk}
        times, hut = timed(lambda: hessian_summary(loss, theta, max_exact_params=0, **common), args.repeats)
        row["hutchinson"] = {**stats(times), **hut.to_dict()}
        if p <= args.exact_max_params:
            times, ex = timed(lambda: hessian_summary(loss, theta, max_exact_params=p, **common), args.repeats)
            row["exact"] = {**stats(times), **ex.to_dict()}
            row["z_trace"] = (hut.trace - ex.trace) / hut.trace_se
            row["z_frobenius"] = (hut.frobenius_norm - ex.frobenius_norm) / hut.frobenius_se
            row["top_eigenvalue_abs_error"] = abs(hut.top_eigenvalue - ex.top_eigenvalue)
        rows.append(row)
        print(f"n_ctx={n_ctx} p={p} done ({time.strftime('%H:%M:%S')})", flush=True)

    both = [(r["p"], r["exact"]["median_s"], r["hutchinson"]["median_s"]) for r in rows if r["exact"]]
    demo = next((r for r in rows if r["n_ctx"] == args.demo_n_ctx), None)
    now = dt.datetime.now()
    result = {
        "host": socket.gethostname(),
        "timestamp": now.isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "setup": {"backbone": f"openclip {args.arch} (random init)" if args.arch else "standin-conse",
                  "classes": len(FASHION_MNIST_CLASSES), "n": args.n, "tau": tau, "dtype": "float32",
                  "probes": args.probes, "chunk": args.chunk, "demo_n_ctx": args.demo_n_ctx},
        "repeats": args.repeats,
        "seed": args.seed,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "hvp": hvp_rows,
        "rows": rows,
        "crossover_p": crossover(both),
        "max_exact_params_default": MAX_EXACT_PARAMS,
        "demo_default_mode": "exact" if demo and demo["p"] <= MAX_EXACT_PARAMS else "hutchinson",
    }
    path = args.out / f"hessian-{result['host']}-{now:%Y%m%d}.json"
    write_json(path, result)

    print(f"\n{result['setup']['backbone']} prompt, K={len(FASHION_MNIST_CLASSES)}, N={args.n}, float32, {result['torch_threads']} torch "
          f"threads, {result['cpu']}, 1-min load average {load_before[0]:.2f} -> {result['loadavg_after'][0]:.2f}\n")
    print(f"HVP throughput, demo prompt n_ctx={args.demo_n_ctx} ({args.hvp_vectors} vectors)\n")
    print("| method | block | vmap | median s/HVP | min | max |\n|---|---:|---|---:|---:|---:|")
    for r in hvp_rows:
        print(f"| {r['method']} | {r['chunk']} | {r['vmap']} | {r['median_s']:.4f} | {r['min_s']:.4f} | "
              f"{r['max_s']:.4f} |")
    print(f"\nhessian_summary, {args.probes} probes, block {args.chunk}\n")
    print("| n_ctx | p | exact median s (min-max) | Hutchinson median s (min-max) | HVPs exact / Hutch | "
          "z trace | z Frobenius | |Δλ_top| |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        h, e = r["hutchinson"], r["exact"]
        ex = f"{e['median_s']:.1f} ({e['min_s']:.1f}-{e['max_s']:.1f})" if e else "skipped"
        z = "- | - | -"
        if e:
            z = f"{r['z_trace']:+.2f} | {r['z_frobenius']:+.2f} | {r['top_eigenvalue_abs_error']:.3g}"
        print(f"| {r['n_ctx']} | {r['p']} | {ex} | {h['median_s']:.1f} ({h['min_s']:.1f}-{h['max_s']:.1f}) | "
              f"{e['n_hvp'] if e else '-'} / {h['n_hvp']} | {z} |")
    cross = result["crossover_p"]
    if cross:
        how = "extrapolated below the smallest p, exact time ∝ p" if cross["extrapolated"] else "interpolated"
        print(f"\nexact = Hutchinson at p ≈ {cross['p']:.0f} ({how})")
    elif both:
        print("\nexact is faster than Hutchinson at every measured p")
    else:
        print("\nno exact timings (every p above --exact-max-params)")
    if demo and demo[result["demo_default_mode"]]:
        mode = result["demo_default_mode"]
        print(f"demo prompt (n_ctx={args.demo_n_ctx}, p={demo['p']}): default mode {mode} "
              f"(max_exact_params={MAX_EXACT_PARAMS}), median {demo[mode]['median_s']:.1f} s")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
