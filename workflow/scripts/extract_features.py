"""Encode every image of one dataset once with the configured backbone (GPU when visible); for the
extract_views rule (params.views), encode that many augmented views of each ID training image instead."""
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.manifest import read_manifest
from deltaenergy.features import extract_features, extract_views, save_features
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"])
    manifest = read_manifest(snakemake.input.manifest)
    if hasattr(params, "views"):
        feats = extract_views(backbone, manifest, params.views, params.data_seed, tuple(params.scale),
                              params.batch_size, device=device)
        what = f"{feats['rows'].size} training images x {params.views} views"
    else:
        feats = extract_features(backbone, manifest, params.batch_size, device=device)
        what = f"{len(manifest)} images"
    save_features(snakemake.output.features, feats, backbone, snakemake.input.manifest)
    print(f"{what} encoded on {device}; global {feats['global'].shape}, local {feats['local'].shape}")
