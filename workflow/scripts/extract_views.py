"""Encode features.views augmented views of every ID training image once (GPU when visible)."""
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.data.manifest import read_manifest
from deltaenergy.features import extract_views, save_features
from deltaenergy.logs import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"])
    manifest = read_manifest(snakemake.input.manifest)
    feats = extract_views(backbone, manifest, params.views, params.data_seed, tuple(params.scale), params.batch_size,
                          device=device)
    save_features(snakemake.output.features, feats, backbone, snakemake.input.manifest)
    print(f"{feats['rows'].size} training images x {params.views} views encoded on {device}; "
          f"global {feats['global'].shape}, local {feats['local'].shape}")
