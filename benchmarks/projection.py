"""Projected GPU-hours of the full ImageNet study, ours vs the CoOp-style pipeline, from a results file.

Usage: python benchmarks/projection.py benchmarks/results/<host>-<date>.json [--tflops 15 200]

Inputs from the results file (``make bench``): FLOPs of one training step at K=1000 (ours; the reference:
batch through the image encoder + 1000 prompts x 77 positions forward and backward) and of one image
encoding. Study (docs/benchmarks.md protocol, config defaults): CoOp, EBM and LoCoOp (CoCoOp, whose step
encodes B x K prompts, is left out), shots 1, 2, 4, 8, 16, seeds 1-3, 1000 classes, 50 epochs of batch 32;
evaluation on ImageNet val (50,000), the four OOD sets (3 x 10,000 + 5,640) and the four covariate sets
(10,000 + 50,889 + 7,500 + 30,000). Ours encodes every image once (train pool: all shots and seeds, no
augmented views); the CoOp-style pipeline encodes the training batch at every step (inside its step
FLOPs) and the evaluation images once per trained prompt. GPU-hours = FLOPs / achieved TFLOP/s for each
``--tflops`` (assumptions until benchmarks/gpu.sh measures them; the same rate for both pipelines).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SHOTS, SEEDS, METHODS, CLASSES, EPOCHS, BATCH = (1, 2, 4, 8, 16), 3, 3, 1000, 50, 32
EVAL_IMAGES = 50_000 + 3 * 10_000 + 5_640 + 10_000 + 50_889 + 7_500 + 30_000


def projection(result: dict, tflops: list[float]) -> dict:
    """FLOPs and GPU-hours of the study for both pipelines (see the module docstring)."""
    row = next(r for r in result["items"]["train"]["rows"] if r["K"] == CLASSES)
    per_image = result["items"]["features"]["setup"]["flops_per_image"]
    steps = METHODS * SEEDS * sum(math.ceil(CLASSES * s / BATCH) * EPOCHS for s in SHOTS)
    models = METHODS * SEEDS * len(SHOTS)
    train_images = CLASSES * sum(SHOTS) * SEEDS  # upper bound: no image shared between shot counts or seeds
    ours = steps * row["flops"]["ours"] + (train_images + EVAL_IMAGES) * per_image
    ref = steps * row["flops"]["reference"] + models * EVAL_IMAGES * per_image
    hours = {str(t): {"ours": ours / (t * 1e12) / 3600, "reference": ref / (t * 1e12) / 3600} for t in tflops}
    return {"steps": steps, "models": models, "flops": {"ours": ours, "reference": ref}, "flop_ratio": ref / ours,
            "cpu_step_speedup_k1000": row["speedup"], "gpu_hours": hours}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--tflops", type=float, nargs="+", default=[15.0, 200.0],
                        help="assumed achieved TFLOP/s (default: fp32 on an A100-class GPU, bf16 on an H100-class)")
    args = parser.parse_args(argv)
    out = projection(json.loads(args.results.read_text()), args.tflops)
    print(f"{out['steps']:,} training steps, {out['models']} trained prompts; study FLOPs: ours "
          f"{out['flops']['ours'] / 1e18:.3f} EFLOP, CoOp-style {out['flops']['reference'] / 1e18:.2f} EFLOP "
          f"({out['flop_ratio']:.1f}x)")
    for rate, h in out["gpu_hours"].items():
        print(f"at {rate} TFLOP/s achieved: ours {h['ours']:.1f} GPU-hours, CoOp-style {h['reference']:.1f}")
    return out


if __name__ == "__main__":
    main()
