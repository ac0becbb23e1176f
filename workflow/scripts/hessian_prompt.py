"""Hessian consistency of one trained prompt: ID test split vs masked ID and each covariate set."""
import time

import numpy as np
import pandas as pd
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.manifest import read_manifest
from deltaenergy.diagnostics import prompt_hessian_rows
from deltaenergy.features import load_features
from deltaenergy.io import write_csv, write_json
from deltaenergy.logs import log_to
from deltaenergy.methods.train import build_learner

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    params, w = snakemake.params, snakemake.wildcards
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"])
    learner = build_learner(backbone, params.classnames, params.method, params.prompt, seed=0)
    learner.load_learned_state(torch.load(snakemake.input.prompt, map_location="cpu", weights_only=True)["state"])
    learner = learner.to(device)

    def domain(features, manifest, split=None):
        """(features, labels) of a dataset's rows, of one split when given, on the device."""
        table = read_manifest(manifest)
        rows = np.flatnonzero(table["split"] == split) if split else np.arange(len(table))
        labels = torch.tensor(table["label"].to_numpy()[rows])
        return load_features(features)["global"][torch.from_numpy(rows)].to(device), labels.to(device)

    id_data = domain(snakemake.input.id_features, snakemake.input.id_manifest, "test")
    covariate = {d: domain(f, m) for d, f, m in zip(params.domains, snakemake.input.features, snakemake.input.manifests)}
    rows = prompt_hessian_rows(learner, id_data, covariate, params.tau, params.hessian)
    seconds = time.perf_counter() - start
    frame = pd.DataFrame(rows)
    frame.insert(0, "method", w.method)
    frame.insert(1, "shots", int(w.shots))
    frame.insert(2, "seed", int(w.seed))
    write_csv(snakemake.output.csv, frame)
    write_json(snakemake.output.json, {"method": w.method, "shots": int(w.shots), "seed": int(w.seed), "device": device,
                                       "tau": params.tau, "hessian": params.hessian, "seconds": seconds, "rows": rows})
    print(frame.to_string())
    print(f"{seconds:.1f} s on {device}")
