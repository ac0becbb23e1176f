"""Time every registered OOD score on CPU for N images x K classes of random unit features.

Usage: python benchmarks/bench_scores.py [--threads 2] [--quick] [--n 50000] [--neg 1000 10000]

Inputs (seeded, built once, not timed as scores): image features f [N, D], text features t [K, D],
local features [N, P, D] and negative-label features [M, D], all L2-normalised Gaussian draws; sims =
f @ tᵀ [N, K], local_sims [N, P, K], neg_sims [N, M] (the time of sims = f @ tᵀ is reported for context).
Each score runs once as a warm-up, then ``--repeats`` times; the table gives median, min and max
wall-clock seconds (time.perf_counter). "total" sums the medians of all rows, i.e. every variant below.
Writes benchmarks/results/scores-<hostname>-<YYYYMMDD>.json atomically and prints a markdown table.
Other processes on the machine inflate the numbers: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, stats
from deltaenergy.io import write_json
from deltaenergy.provenance import cpu_model
from deltaenergy.scores import SCORES, compute_score

def unit(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """L2-normalised (last dim) standard-normal float32 draws."""
    x = torch.randn(*shape, generator=gen)
    return x / x.norm(dim=-1, keepdim=True)


def build_inputs(n: int, k: int, d: int, patches: int, negs: list[int], seed: int) -> tuple[dict, dict]:
    """Score inputs and the seconds it took to build them (sims = f @ tᵀ timed separately)."""
    gen = torch.Generator().manual_seed(seed)
    f, t = unit(gen, n, d), unit(gen, k, d)
    start = time.perf_counter()
    sims = f @ t.T
    sims_s = time.perf_counter() - start
    local = torch.empty(n, patches, k)
    for i in range(0, n, 4096):  # chunks bound the [rows, P, D] temporaries
        local[i : i + 4096] = unit(gen, min(4096, n - i), patches, d) @ t.T
    neg_sims = {m: f @ unit(gen, m, d).T for m in negs}
    return {"sims": sims, "f": f, "t": t, "local": local, "neg": neg_sims}, {"sims_matmul_s": sims_s}


def cases(x: dict, negs: list[int]) -> list[tuple[str, str, dict]]:
    """(row label, registered score, keyword arguments) of every timed score."""
    rows = [
        ("msp (tau=0.01)", "msp", {"tau": 0.01}),
        ("maxlogit (tau=0.01)", "maxlogit", {"tau": 0.01}),
        ("energy (tau=0.01)", "energy", {"tau": 0.01}),
        ("entropy (tau=0.01)", "entropy", {"tau": 0.01}),
        ("mcm (tau=1)", "mcm", {}),
        (f"glmcm (P={x['local'].shape[1]})", "glmcm", {"local_sims": x["local"]}),
    ]
    rows += [(f"neglabel (M={m:,}, ngroup=100)", "neglabel", {"neg_sims": x["neg"][m]}) for m in negs]
    rows += [
        ("delta_energy value c=1", "delta_energy", {"c": 1}),
        ("delta_energy value c=5", "delta_energy", {"c": 5}),
        ("delta_energy text_mask c=1", "delta_energy",
         {"c": 1, "reset_mode": "text_mask", "image_features": x["f"], "text_features": x["t"]}),
        ("delta_energy text_mask c=5", "delta_energy",
         {"c": 5, "reset_mode": "text_mask", "image_features": x["f"], "text_features": x["t"]}),
    ]
    missing = sorted(set(SCORES) - {name for _, name, _ in rows})
    if missing:
        raise SystemExit(f"bench_scores.py does not time registered score(s) {missing}; add them to cases()")
    return rows


def time_case(name: str, sims: torch.Tensor, kwargs: dict, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls after one warm-up call."""
    out = compute_score(name, sims, **kwargs)
    assert out.shape == (sims.shape[0],) and bool(torch.isfinite(out).all()), name
    sync = torch.cuda.synchronize if sims.is_cuda else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        compute_score(name, sims, **kwargs)
        sync()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="images (default 50,000)")
    parser.add_argument("--quick", action="store_true", help="N = 5,000 (overrides --n)")
    parser.add_argument("--k", type=int, default=1_000, help="ID classes")
    parser.add_argument("--d", type=int, default=512, help="feature width")
    parser.add_argument("--patches", type=int, default=16, help="local features per image (GL-MCM)")
    parser.add_argument("--neg", type=int, nargs="+", default=[1_000, 10_000], help="NegLabel M values")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the scores run (inputs are built on the CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON result")
    args = parser.parse_args(argv)
    n = 5_000 if args.quick else args.n
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    start = time.perf_counter()
    x, build = build_inputs(n, args.k, args.d, args.patches, args.neg, args.seed)
    x = {k: ({m: t.to(args.device) for m, t in v.items()} if isinstance(v, dict) else v.to(args.device))
         for k, v in x.items()}
    build["inputs_s"] = time.perf_counter() - start
    rows = []
    for label, name, kwargs in cases(x, args.neg):
        times = time_case(name, x["sims"], kwargs, args.repeats)
        params = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        rows.append({"row": label, "score": name, "params": params, **stats(times)})
    now = dt.datetime.now()
    result = {
        "host": socket.gethostname(),
        "timestamp": now.isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "shape": {"N": n, "K": args.k, "D": args.d, "P": args.patches, "M": args.neg},
        "dtype": "float32",
        "device": args.device,
        "repeats": args.repeats,
        "seed": args.seed,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        **build,
        "rows": rows,
        "total_median_s": sum(r["median_s"] for r in rows),
    }
    path = args.out / f"scores-{result['host']}-{now:%Y%m%d}.json"
    write_json(path, result)

    print(f"N={n:,} K={args.k:,} D={args.d} P={args.patches}, float32, {result['torch_threads']} torch "
          f"threads, {result['cpu']}, 1-min load average {load_before[0]:.2f} -> "
          f"{result['loadavg_after'][0]:.2f}\n")
    print("| score | median s | min s | max s |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |")
    print(f"| **total (sum of medians)** | **{result['total_median_s']:.3f}** | | |")
    print(f"\nsims = f @ tᵀ (context, not a score): {build['sims_matmul_s']:.3f} s; wrote {path}")
    return result


if __name__ == "__main__":
    main()
