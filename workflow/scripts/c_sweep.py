"""ΔEnergy c sweep (scores only): detection metrics of ΔE_c per run, c and OOD set, from cached features."""
import pandas as pd
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.manifest import read_manifest
from deltaenergy.diagnostics import delta_energy_c_sweep
from deltaenergy.features import load_features
from deltaenergy.io import write_csv
from deltaenergy.logs import log_to
from deltaenergy.methods.train import build_learner
from deltaenergy.prompts import (ConditionalPromptLearner, image_conditioned_sims, template_ensemble,
                                 zeroshot_text_features)

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"])
    feats = {}
    for features, manifest in zip(snakemake.input.features, snakemake.input.manifests):
        table = read_manifest(manifest)
        keep = ((table["role"] == "ood") | (table["split"] == "test")).to_numpy()
        feats[table["dataset"].iloc[0]] = load_features(features)["global"][torch.from_numpy(keep.nonzero()[0])]
    prompts = dict(zip(params.trained_runs, snakemake.input.prompts))
    frames = []
    for method, shots, seed in params.runs:
        with torch.no_grad():
            if method in ("zeroshot", "zeroshot_ensemble"):
                templates = [params.zeroshot["template"]] if method == "zeroshot" else template_ensemble(params.zeroshot["ensemble"])
                text = zeroshot_text_features(backbone, params.classnames, templates)
            else:
                learner = build_learner(backbone, params.classnames, params.methods[method], params.prompt, seed=0)
                state = torch.load(prompts[f"{method}/shots{shots}_seed{seed}"], map_location="cpu", weights_only=True)
                learner.load_learned_state(state["state"])
                text = None if isinstance(learner, ConditionalPromptLearner) else learner()
            sims = {d: image_conditioned_sims(learner, f) if text is None else f @ text.T for d, f in feats.items()}
        id_sims = sims.pop(params.id_dataset)
        frame = delta_energy_c_sweep(id_sims, sims, params.c, params.score["tau"], params.score["reset_value"])
        frame.insert(0, "method", method)
        frame.insert(1, "shots", shots)
        frame.insert(2, "seed", seed)
        frames.append(frame)
        print(f"{method} shots{shots} seed{seed}: done")
    write_csv(snakemake.output[0], pd.concat(frames, ignore_index=True))
