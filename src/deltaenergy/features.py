"""Feature extraction: every image of a manifest goes through the image tower exactly once.

Output (``.npz``, rows in manifest order): ``global`` [N, D] and ``local`` [N, P, D] float32, both
L2-normalised. A JSON sidecar records the backbone's cache key and ``image_forward_count``, the number
of images the image tower processed for this file (= N), which the workflow tests sum over a study.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .backbones import Backbone
from .data.images import load_image
from .io import read_npz, write_json, write_npz


class ManifestImages(Dataset):
    """Images of a manifest, preprocessed by ``preprocess``; errors name the file."""

    def __init__(self, paths: list[str], preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(load_image(self.paths[i]))


@torch.no_grad()
def extract_features(
    backbone: Backbone, manifest: pd.DataFrame, batch_size: int = 128, num_workers: int = 0, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Encode every row of ``manifest`` once; return ``{"global": [N, D], "local": [N, P, D]}``."""
    loader = DataLoader(
        ManifestImages(manifest["path"].tolist(), backbone.preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.startswith("cuda"),
    )
    backbone.to(device)
    glob, loc = [], []
    for images in tqdm(loader, desc="encoding images", unit="batch"):
        g, l = backbone.encode_images(images.to(device))
        glob.append(g.float().cpu())
        loc.append(l.float().cpu())
    return {"global": torch.cat(glob).numpy(), "local": torch.cat(loc).numpy()}


def save_features(path: str | Path, feats: dict[str, np.ndarray], backbone: Backbone, manifest_path: str) -> None:
    """Write the features and their JSON sidecar (``<path>.json``)."""
    write_npz(path, **feats)
    write_json(
        f"{path}.json",
        {"backbone": backbone.cache_key(), "manifest": str(manifest_path), "n_images": int(feats["global"].shape[0]),
         "image_forward_count": backbone.image_forward_count},
    )


def load_features(path: str | Path) -> dict[str, torch.Tensor]:
    """Read cached features as float32 tensors."""
    return {k: torch.from_numpy(v) for k, v in read_npz(path).items()}
