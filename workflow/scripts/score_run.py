"""Score every dataset of the study under one run's class text features (zero-shot or learned); a dataset
with a class subset (params.class_subsets: ImageNet-A/R) is also classified among those classes only.
For score_run, also the run's ΔEnergy c sweep (ablations.c_sweep) from the same similarities."""
from pathlib import Path

import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.manifest import read_manifest
from deltaenergy.diagnostics import delta_energy_c_sweep
from deltaenergy.evaluate import score_table
from deltaenergy.features import load_features
from deltaenergy.io import write_csv, write_parquet
from deltaenergy.logs import log_to
from deltaenergy.neglabel import load_negative_labels
from deltaenergy.methods.train import build_learner, load_prompt
from deltaenergy.prompts import ConditionalPromptLearner, image_conditioned_text, template_ensemble, zeroshot_text_features

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    method = snakemake.wildcards.method
    # Text features on the job's GPU when one is visible (e.g. allocated by SLURM), else CPU; the scores
    # themselves are computed on CPU from the cached image features.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"]).to(device)
    with torch.no_grad():
        if method == "zeroshot":
            text = zeroshot_text_features(backbone, params.classnames, [params.zeroshot["template"]]).cpu()
        elif method == "zeroshot_ensemble":
            text = zeroshot_text_features(backbone, params.classnames, template_ensemble(params.zeroshot["ensemble"])).cpu()
        else:
            learner = build_learner(backbone, params.classnames, params.method, params.prompt, seed=0)
            load_prompt(snakemake.input.prompt, learner)
            # CoCoOp's class texts depend on the image: score_table calls this per chunk of image features.
            text = (lambda f: image_conditioned_text(learner, f)) if isinstance(learner, ConditionalPromptLearner) else learner().cpu()
    neglabels = snakemake.input.neglabels  # the mined-labels file, or empty when no neglabel score is configured
    neg_text = load_negative_labels(neglabels)[1] if neglabels else None
    sweep = getattr(params, "c_sweep", None)  # score_ablation has none
    id_sims, ood_sims = None, {}
    for features, manifest, out in zip(snakemake.input.features, snakemake.input.manifests, snakemake.output.tables):
        subset = params.class_subsets.get(Path(out).stem)
        table, sims = score_table(load_features(features), text, read_manifest(manifest), params.scores, neg_text,
                                  class_subset=subset, return_sims=True)
        write_parquet(out, table)
        print(f"{out}: {len(table)} rows" + (f", also classified among its {len(subset)} classes" if subset else ""))
        if table["role"].iloc[0] == "id":
            id_sims = sims[torch.from_numpy((table["split"] == "test").to_numpy())]
        elif table["role"].iloc[0] == "ood":
            ood_sims[table["dataset"].iloc[0]] = sims
    if sweep is not None:
        write_csv(snakemake.output.c_sweep, delta_energy_c_sweep(id_sims, ood_sims, sweep["c"], sweep["score"]["tau"],
                                                                 sweep["score"]["reset_value"]))
