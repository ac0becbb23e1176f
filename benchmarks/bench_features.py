"""Feature-extraction throughput (images/s) of the study's extractor, and image-encoder calls per study.

Usage: python benchmarks/bench_features.py [--images 64] [--workers 0 2] [--arch ViT-B-16] [--provenance P]

Times ``deltaenergy.features.extract_features`` (the workflow's extractor: DataLoader with ``workers``
worker processes, pinned memory on CUDA) on ``--images`` seeded random RGB JPEGs (256x256) written to a
temporary folder, through the random-init backbone, once per worker count; median/min/max over
``--repeats``. Each run must encode every image exactly once (the backbone's ``image_forward_count``).
The study's own count comes from the demo's provenance file when it exists: ``image_encoder_calls``
against ``images`` (unique images) and ``augmented_views``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench_train import count_flops
from common import RESULTS, machine, random_clip, save_result, stats, timed
from deltaenergy.features import extract_features

PROVENANCE = Path(__file__).resolve().parents[1] / "results" / "demo" / "provenance.json"


def study_encoder_calls(path: Path) -> dict | None:
    """Image-encoder calls and unique images of a finished study (its provenance file), or None."""
    if not path.is_file():
        return None
    prov = json.loads(path.read_text())
    keys = ("image_encoder_calls", "images", "augmented_views")
    return {"provenance": str(path.name), **{k: prov.get(k) for k in keys}}


def write_images(folder: Path, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        _, backbone = random_clip(args.arch, Path(folder), args.seed, device=args.device)
        one = torch.zeros(1, 3, backbone.image_size, backbone.image_size, device=args.device)
        flops_per_image = count_flops(lambda: backbone.encode_images(one))
        backbone.image_forward_count -= 1
        manifest = pd.DataFrame({"path": write_images(Path(folder), args.images, args.seed)})
        for workers in args.workers:
            def once():
                before = backbone.image_forward_count
                extract_features(backbone, manifest, batch_size=args.batch, num_workers=workers, device=args.device)
                return backbone.image_forward_count - before

            if args.warmup:
                once()
            times, calls = timed(once, args.repeats)
            if calls != args.images:
                raise SystemExit(f"bench_features: {calls} image-encoder calls for {args.images} images")
            rows.append({"workers": workers, "pin_memory": args.device.startswith("cuda"), **stats(times),
                         "images_per_s": args.images / stats(times)["median_s"], "encoder_calls": calls})
            print(f"workers={workers}: {rows[-1]['images_per_s']:.1f} images/s ({time.strftime('%H:%M:%S')})",
                  flush=True)
    return {**machine(), "setup": {"arch": args.arch, "images": args.images, "image_size": backbone.image_size,
                                   "batch": args.batch, "device": args.device,
                                   "flops_per_image": flops_per_image}, "rows": rows,
            "study": study_encoder_calls(args.provenance)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="ViT-B-16")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", action="store_true", help="one untimed run per worker count first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--provenance", type=Path, default=PROVENANCE, help="a study's provenance.json")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON result ('-': none)")
    return p


def table(result: dict) -> str:
    lines = ["| data-loader workers | pinned memory | images/s | s per run (min-max) | encoder calls / images |",
             "|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['workers']} | {r['pin_memory']} | {r['images_per_s']:.1f} | {r['median_s']:.2f} "
                     f"({r['min_s']:.2f}-{r['max_s']:.2f}) | {r['encoder_calls']} / {result['setup']['images']} |")
    study = result["study"]
    lines.append("")
    lines.append(f"Study ({study['provenance']}): {study['image_encoder_calls']:,} image-encoder calls for "
                 f"{study['images']:,} unique images, augmented views {study['augmented_views']}" if study else
                 "Study: no results/demo/provenance.json yet (run the demo first)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    result = run(args)
    print("\n" + table(result))
    save_result(args.out, "features", result)
    return result


if __name__ == "__main__":
    main()
