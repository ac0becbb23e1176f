"""Measure the per-image and per-step costs the real benchmarks' GPU-hours estimate (README) scales from.

Usage: python benchmarks/bench_real_costs.py [--threads 2] [--arch ViT-B-16] [--classes 50] [--repeats 3]

On CPU, random-init open_clip weights (the cost does not depend on the weight values), seeded:
1. image tower: seconds per image of ``encode_image`` at the architecture's resolution (batch 4, no grad);
2. text tower, one CoOp step: forward + backward of ``--classes`` prompts of ``--tokens`` tokens through the
   text transformer (the per-step cost is linear in the number of classes; the README scales it to K);
3. JPEG decode + open_clip preprocessing of a 500 x 375 photo-sized JPEG (ImageNet's typical size).
FLOPs of 1 and 2 are counted analytically (multiply-adds x 2: attention projections, MLP, attention
products), so the measured CPU rate (GFLOP/s) is reported next to each time. Writes
benchmarks/results/real-costs-<hostname>-<YYYYMMDD>.json atomically and prints a markdown table; other
processes on the machine inflate the times (the JSON records the load average before and after).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from deltaenergy.io import write_json


def _transformer_flops(tokens: int, width: int, layers: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of ``layers`` pre-LN transformer blocks on ``tokens`` tokens (2 FLOPs per multiply-add)."""
    projections = (4 + 2 * mlp_ratio) * width * width * tokens
    attention = 2 * tokens * tokens * width
    return 2.0 * layers * (projections + attention)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=50, help="prompts per timed text step")
    parser.add_argument("--tokens", type=int, default=26, help="prompt length: SOT + 16 context + name + '.' + EOT")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model(args.arch).eval()
    cfg = open_clip.get_model_config(args.arch)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    size, patch = vision["image_size"], vision["patch_size"]
    image_tokens = (size // patch) ** 2 + 1

    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image_s = _timed(lambda: model.encode_image(images), args.repeats) / len(images)
    image_flops = _transformer_flops(image_tokens, vision["width"], vision["layers"])

    embeds = torch.randn(args.classes, args.tokens, text["width"], generator=torch.Generator().manual_seed(1),
                         requires_grad=True)
    mask = model.attn_mask[: args.tokens, : args.tokens]

    def text_step():
        out = model.transformer(embeds + model.positional_embedding[: args.tokens], attn_mask=mask)
        model.ln_final(out)[:, -1].pow(2).sum().backward()

    text_s = _timed(text_step, args.repeats)
    # backward ~ 2x forward: a step is ~3 forward passes
    text_flops = 3 * args.classes * _transformer_flops(args.tokens, text["width"], text["layers"])

    photo = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    preprocess = open_clip.image_transform(size, is_train=False)
    decode_s = _timed(lambda: [preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for _ in range(20)],
                      args.repeats) / 20

    result = {
        "arch": args.arch, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "host": platform.node(), "torch": torch.__version__, "open_clip": open_clip.__version__,
        "image": {"seconds_per_image": image_s, "flops_per_image": image_flops, "tokens": image_tokens},
        "text_step": {"classes": args.classes, "tokens": args.tokens, "seconds": text_s, "flops": text_flops},
        "jpeg_decode_preprocess": {"seconds_per_image": decode_s, "source": "500x375 JPEG q90"},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    out = Path(__file__).parent / "results" / f"real-costs-{platform.node()}-{dt.date.today():%Y%m%d}.json"
    write_json(out, result)
    print("| cost | seconds | GFLOPs | CPU GFLOP/s |\n|---|---|---|---|")
    print(f"| {args.arch} image forward, per image | {image_s:.4f} | {image_flops / 1e9:.1f} | {image_flops / 1e9 / image_s:.1f} |")
    print(f"| text fwd+bwd, {args.classes} prompts x {args.tokens} tokens | {text_s:.3f} | {text_flops / 1e9:.1f} | "
          f"{text_flops / 1e9 / text_s:.1f} |")
    print(f"| JPEG decode + preprocess, per image | {decode_s:.4f} | | |")
    print(f"\n{out}; load average {load_before[0]:.1f} -> {result['loadavg_after'][0]:.1f}")


if __name__ == "__main__":
    main()
