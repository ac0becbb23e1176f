"""Train one prompt (method, shots, seed) on cached ID features; write the prompt and its step log."""
from pathlib import Path

import pandas as pd
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.classes import FASHION_MNIST_CLASSES
from deltaenergy.features import load_features
from deltaenergy.io import atomic_path, write_csv
from deltaenergy.logs import log_to
from deltaenergy.methods.train import train_prompt

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    torch.use_deterministic_algorithms(True)
    cfg = snakemake.config
    w = snakemake.wildcards
    method = cfg["methods"][w.method]
    backbone = build_backbone(cfg["backbone"]["name"], **cfg["backbone"]["options"])
    rows = pd.read_csv(snakemake.input.fewshot)
    feats = load_features(snakemake.input.features)["global"][torch.from_numpy(rows["row"].to_numpy())]
    labels = torch.from_numpy(rows["label"].to_numpy())
    ctx, log = train_prompt(backbone, FASHION_MNIST_CLASSES, feats, labels, method, cfg["train"], cfg["prompt"],
                            int(w.seed), snakemake.params.checkpoint)
    write_csv(snakemake.output.log, pd.DataFrame(log))
    with atomic_path(snakemake.output.prompt) as tmp:
        torch.save({"ctx": ctx, "method": w.method, "shots": int(w.shots), "seed": int(w.seed)}, tmp)
    Path(snakemake.params.checkpoint).unlink()
    print(f"final train loss {log[-1]['loss']:.4f}, batch accuracy {log[-1]['acc']:.3f}")
