"""Train one prompt (method, shots, seed) on cached ID features; write the learned state and its step log."""
from pathlib import Path

import pandas as pd
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.features import load_features, view_positions
from deltaenergy.io import write_csv
from deltaenergy.logs import log_to
from deltaenergy.methods.train import save_prompt, train_learner

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    # Deterministic kernels matter on CUDA; on CPU the trainer's kernels are deterministic already (the workflow
    # test runs the study twice and compares bytes), and the switch imports torch._inductor (1.6 s per job).
    if torch.cuda.is_available():
        torch.use_deterministic_algorithms(True)
    params = snakemake.params
    w = snakemake.wildcards
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"])
    rows = pd.read_csv(snakemake.input.fewshot)
    index = torch.from_numpy(rows["row"].to_numpy())
    data = load_features(snakemake.input.features)
    labels = torch.from_numpy(rows["label"].to_numpy())
    views = None
    if snakemake.input.views:  # [] when features.views is 0
        cached = load_features(snakemake.input.views[0])
        views = {k: cached[k][view_positions(cached["rows"], index)] for k in ("global", "local")}
    learner, log = train_learner(backbone, params.classnames, data["global"][index], labels, params.method,
                                 params.train, params.prompt, int(w.seed), params.checkpoint,
                                 local_feats=data["local"][index], views=views)
    write_csv(snakemake.output.log, pd.DataFrame(log))
    save_prompt(snakemake.output.prompt, learner, method=w.method, shots=int(w.shots), seed=int(w.seed))
    Path(params.checkpoint).unlink()
    print(f"final train loss {log[-1]['loss']:.4f}, batch accuracy {log[-1]['acc']:.3f}")
