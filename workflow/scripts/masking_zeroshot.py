"""Fig. 3 data: prediction change of the zero-shot model under keep-positive / keep-negative masking of
every image feature (anchor = the zero-shot top-1 class), one row per image and mask mode."""
import pandas as pd
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.manifest import read_manifest
from deltaenergy.diagnostics import MASK_MODES, masking_effect
from deltaenergy.features import load_features
from deltaenergy.io import write_parquet
from deltaenergy.logs import log_to
from deltaenergy.prompts import zeroshot_text_features

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"])
    with torch.no_grad():
        text = zeroshot_text_features(backbone, params.classnames, [params.zeroshot["template"]])
    frames = []
    for features, manifest in zip(snakemake.input.features, snakemake.input.manifests):
        table = read_manifest(manifest)
        keep = ((table["role"] != "id") | (table["split"] == "test")).to_numpy()
        feats = load_features(features)["global"][torch.from_numpy(keep.nonzero()[0])]
        for mode in MASK_MODES:
            effect = masking_effect(feats, text, params.masking["tau"], mode, params.masking["renormalize"])
            effect.insert(0, "dataset", table["dataset"].iloc[0])
            effect.insert(1, "role", table["role"].iloc[0])
            frames.append(effect)
    out = pd.concat(frames, ignore_index=True)
    write_parquet(snakemake.output[0], out)
    print(out.groupby(["dataset", "mask_mode"])["changed"].mean().to_string())
