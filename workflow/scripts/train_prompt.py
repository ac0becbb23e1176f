"""Train one prompt (method, shots, seed) on cached ID features; write the prompt and its step log."""
from pathlib import Path

import pandas as pd
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.features import load_features
from deltaenergy.io import atomic_path, write_csv
from deltaenergy.logs import log_to
from deltaenergy.methods.train import train_prompt

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    torch.use_deterministic_algorithms(True)
    params = snakemake.params
    w = snakemake.wildcards
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"])
    rows = pd.read_csv(snakemake.input.fewshot)
    feats = load_features(snakemake.input.features)["global"][torch.from_numpy(rows["row"].to_numpy())]
    labels = torch.from_numpy(rows["label"].to_numpy())
    ctx, log = train_prompt(backbone, params.classnames, feats, labels, params.method, params.train, params.prompt,
                            int(w.seed), params.checkpoint)
    write_csv(snakemake.output.log, pd.DataFrame(log))
    with atomic_path(snakemake.output.prompt) as tmp:
        torch.save({"ctx": ctx, "method": w.method, "shots": int(w.shots), "seed": int(w.seed)}, tmp)
    Path(params.checkpoint).unlink()
    print(f"final train loss {log[-1]['loss']:.4f}, batch accuracy {log[-1]['acc']:.3f}")
