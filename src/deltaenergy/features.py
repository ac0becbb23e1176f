"""Feature extraction: every image of a manifest goes through the image tower exactly once.

Output (``.npz``, rows in manifest order): ``global`` [N, D] and ``local`` [N, P, D] float32, both
L2-normalised. A JSON sidecar records the backbone's cache key and ``image_forward_count``, the number
of images the image tower processed for this file (= N), which the workflow tests sum over a study.

Augmented views (optional, for training): V views per training image, each a random resized crop plus
a random horizontal flip (CoOp's training augmentation) applied to the decoded image before the
backbone's own preprocessing, drawn from a seed fixed by (data seed, manifest row, view). They are
encoded once, like the plain images (``global`` [N, V, D], ``local`` [N, V, P, D], ``rows`` [N]: the
manifest rows), and training samples one view per image per epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .backbones import Backbone
from .data.images import load_image
from .io import read_npz, write_json, write_npz


def augment_view(image: Image.Image, seed: int, scale: tuple[float, float]) -> Image.Image:
    """A random resized crop (area fraction in ``scale``, aspect ratio in [3/4, 4/3], resized back to the
    image's own size) then a horizontal flip with probability 1/2, all drawn from ``seed`` alone."""
    from torchvision import transforms  # imported here: training jobs import this module, torchvision is slow
    from torchvision.transforms.v2 import functional as TF

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        top, left, height, width = transforms.RandomResizedCrop.get_params(image, scale=list(scale), ratio=[3 / 4, 4 / 3])
        flip = bool(torch.rand(()) < 0.5)
    view = TF.resized_crop(image, top, left, height, width, [image.height, image.width], antialias=True)
    return TF.horizontal_flip(view) if flip else view


def view_seed(data_seed: int, row: int, view: int) -> int:
    """The seed of augmented view ``view`` of manifest row ``row`` (independent of batching and workers)."""
    return int(np.random.SeedSequence([data_seed, row, view]).generate_state(1)[0])


class ManifestImages(Dataset):
    """Images of a manifest, preprocessed by ``preprocess``; errors name the file. With ``views`` > 0,
    item ``i`` is view ``i % views`` of image ``i // views`` (see :func:`augment_view`)."""

    def __init__(self, paths: list[str], preprocess, views: int = 0, rows: list[int] | None = None,
                 data_seed: int = 0, scale: tuple[float, float] = (0.08, 1.0)) -> None:
        self.paths, self.preprocess, self.views = paths, preprocess, views
        self.rows, self.data_seed, self.scale = rows, data_seed, scale

    def __len__(self) -> int:
        return len(self.paths) * max(self.views, 1)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not self.views:
            return self.preprocess(load_image(self.paths[i]))
        image, view = divmod(i, self.views)
        seed = view_seed(self.data_seed, self.rows[image], view)
        return self.preprocess(augment_view(load_image(self.paths[image]), seed, self.scale))


@torch.no_grad()
def _encode(backbone: Backbone, images: Dataset, batch_size: int, num_workers: int, device: str) -> dict[str, np.ndarray]:
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, pin_memory=device.startswith("cuda"))
    backbone.to(device)
    glob, loc = [], []
    for batch in tqdm(loader, desc="encoding images", unit="batch"):
        g, l = backbone.encode_images(batch.to(device))
        glob.append(g.float().cpu())
        loc.append(l.float().cpu())
    return {"global": torch.cat(glob).numpy(), "local": torch.cat(loc).numpy()}


def extract_features(
    backbone: Backbone, manifest: pd.DataFrame, batch_size: int = 128, num_workers: int = 0, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Encode every row of ``manifest`` once; return ``{"global": [N, D], "local": [N, P, D]}``."""
    return _encode(backbone, ManifestImages(manifest["path"].tolist(), backbone.preprocess), batch_size, num_workers,
                   device)


def extract_views(
    backbone: Backbone, manifest: pd.DataFrame, views: int, data_seed: int, scale: tuple[float, float],
    batch_size: int = 128, num_workers: int = 0, device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Encode ``views`` augmented views of every ``train`` row of ``manifest``; return ``global``
    [N, V, D], ``local`` [N, V, P, D] and ``rows`` [N] (the manifest row of each image)."""
    rows = np.flatnonzero(manifest["split"].to_numpy() == "train")
    images = ManifestImages(manifest["path"].iloc[rows].tolist(), backbone.preprocess, views, rows.tolist(),
                            data_seed, scale)
    feats = _encode(backbone, images, batch_size, num_workers, device)
    return {k: v.reshape(len(rows), views, *v.shape[1:]) for k, v in feats.items()} | {"rows": rows}


def view_positions(view_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Positions in a views file (whose manifest rows are ``view_rows``, sorted) of manifest ``rows``."""
    pos = torch.searchsorted(view_rows, rows).clamp(max=len(view_rows) - 1)
    missing = rows[view_rows[pos] != rows]
    if len(missing):
        raise ValueError(f"augmented views: manifest rows {missing[:5].tolist()} are not training images with cached "
                         f"views; the few-shot manifest and the views file come from different manifests")
    return pos


def save_features(path: str | Path, feats: dict[str, np.ndarray], backbone: Backbone, manifest_path: str) -> None:
    """Write the features and their JSON sidecar (``<path>.json``)."""
    write_npz(path, **feats)
    views = {"views": int(feats["global"].shape[1])} if feats["global"].ndim == 3 else {}
    write_json(
        f"{path}.json",
        {"backbone": backbone.cache_key(), "manifest": str(manifest_path), "n_images": int(feats["global"].shape[0]),
         **views, "image_forward_count": backbone.image_forward_count},
    )


def load_features(path: str | Path) -> dict[str, torch.Tensor]:
    """Read cached features as float32 tensors."""
    return {k: torch.from_numpy(v) for k, v in read_npz(path).items()}
