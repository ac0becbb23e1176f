"""Score every dataset of the study under one run's class text features (zero-shot or learned)."""
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.classes import FASHION_MNIST_CLASSES
from deltaenergy.data.manifest import read_manifest
from deltaenergy.evaluate import score_table
from deltaenergy.features import load_features
from deltaenergy.io import write_parquet
from deltaenergy.logs import log_to
from deltaenergy.prompts import PromptLearner, template_ensemble, zeroshot_text_features

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    cfg = snakemake.config
    method = snakemake.wildcards.method
    backbone = build_backbone(cfg["backbone"]["name"], **cfg["backbone"]["options"])
    with torch.no_grad():
        if method == "zeroshot":
            text = zeroshot_text_features(backbone, FASHION_MNIST_CLASSES, [cfg["zeroshot"]["template"]])
        elif method == "zeroshot_ensemble":
            text = zeroshot_text_features(backbone, FASHION_MNIST_CLASSES, template_ensemble(cfg["zeroshot"]["ensemble"]))
        else:
            learner = PromptLearner(backbone, FASHION_MNIST_CLASSES, cfg["prompt"]["n_ctx"], cfg["prompt"]["ctx_init"])
            learner.ctx.copy_(torch.load(snakemake.input.prompt, map_location="cpu", weights_only=True)["ctx"])
            text = learner()
    for features, manifest, out in zip(snakemake.input.features, snakemake.input.manifests, snakemake.output):
        table = score_table(load_features(features), text, read_manifest(manifest), cfg["scores"])
        write_parquet(out, table)
        print(f"{out}: {len(table)} rows")
