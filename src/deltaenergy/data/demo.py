"""The offline demo benchmark's nine datasets, built from installed packages, or from verified downloads
of the same data where a Debian data package is missing (:mod:`deltaenergy.data.sources`).

Each dataset is materialised as PNG files ``<out_dir>/<dataset>/<split>/<index:05d>.png`` plus a
manifest (see :mod:`deltaenergy.data.manifest`); manifest paths are ``out_dir`` joined as given
(relative stays relative). Images are uint8, greyscale ``L`` or ``RGB``, 28 px for the MNIST-like
sets, 56 px for sketches, 64 px for clip art, stamps and textures (the backbone resizes).

Fashion-MNIST split rule (every set drawn from it is a pure function of ``seed``): per class, the
IDX train images are permuted by a seeded generator; the first half is the ID pool (``train`` =
its first ``train_per_class``, ``val`` = the next ``val_per_class``) and the second half is held out
for ``fmnist_resampled``. Likewise the IDX t10k images per class: first half -> ID ``test``, second
half -> source of ``fmnist_sketch``/``fmnist_corrupt``/``fmnist_rendition`` (each draws its own
seeded subset, so these three may share source images with each other, never with ID data).
Disjointness therefore holds between datasets built with the same ``seed``.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import logging
import os
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from deltaenergy.data.classes import FASHION_MNIST_CLASSES
from deltaenergy.data.images import load_image_or_skip
from deltaenergy.data.manifest import MANIFEST_COLUMNS, OOD_LABEL, validate_manifest
from deltaenergy.data.sources import SYSTEM_DATA_ENV, system_data_root  # noqa: F401 (re-exported)
from deltaenergy.data.sources import DATASET_SOURCES, resolve
from deltaenergy.io import write_json

log = logging.getLogger(__name__)

CLIPART_CATEGORIES = (
    "animals", "buildings", "electronics", "food", "plants", "science", "tools", "transportation",
)  # fmt: skip
"""openclipart-png top-level folders used as OOD: none is about clothing, bags or shoes."""

CLIPART_EXCLUDE = re.compile(
    r"shirt|shoe|boot|sandal|sneaker|bag|borsa|purse|wallet|dress|coat|jacket|sweater|pullover|"
    r"trouser|pant|skirt|sock|cloth",
    re.IGNORECASE,
)
"""File paths matching this are dropped from the clip-art pool (e.g. AIGA 'coat check', 'baggage')."""

CORRUPTIONS = {
    "gaussian_noise": {"sigma": 0.18},
    "gaussian_blur": {"sigma": 1.0, "kernel_size": 5},
    "jpeg": {"quality": 15},
    "elastic": {"alpha": 34.0, "sigma": 4.0},
    "contrast": {"factor": 0.2},
}
"""Fixed severity. Noise sigma (on 0..1), JPEG quality and contrast factor are ImageNet-C severity 3;
blur sigma is in pixels (ImageNet-C's 3 px at 224 px would vanish at 28 px); elastic is Simard et al.
(2003)'s MNIST setting: displacement = alpha * gaussian_sigma(U[-1, 1]) pixels."""

_RENDITION_STYLES = ("inverted", "colourised", "colourised_inverted")
_SKETCH_SIZE = 56
_PATCH_SIZE = 64
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Part:
    """One split of a built dataset: ``images`` (N, H, W) or (N, H, W, 3) uint8, ``labels`` (N,) int64,
    ``source`` (N,) int64 index into the source collection (provenance and tests; not in manifests),
    ``skipped`` the unreadable source files left out (``{"path", "error"}``, see ``data.on_bad_image``)."""

    split: str
    images: np.ndarray
    labels: np.ndarray
    source: np.ndarray
    skipped: tuple[dict, ...] = ()


@dataclass(frozen=True)
class DemoDataset:
    """Registry entry: ``builder(sizes, seed) -> list[Part]`` is pure (writes nothing); builders that decode
    image files (``reads_image_files``) also take ``on_bad_image``."""

    name: str
    role: str
    source: str
    size_keys: tuple[str, ...]
    builder: Callable[..., list[Part]]
    reads_image_files: bool = False


# --------------------------------------------------------------------------- sources


def _source_path(key: str, relative: str = "") -> Path:
    """``relative`` inside data source ``key`` (installed package, else its verified download)."""
    folder, _ = resolve(key)
    path = folder / relative
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found in data source '{key}' ({folder}). Fix: reinstall its package or delete "
            f"the download {folder} and its .complete marker and fetch it again"
        )
    return path


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for (seed, names): independent streams per dataset/purpose, stable across runs."""
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in keys)])


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzip IDX file (LeCun's MNIST format: 0x0000, dtype code, ndim, big-endian u32 dims)."""
    fix = "Fix: sudo apt-get install --reinstall dataset-fashion-mnist"
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"corrupt IDX file {path}: {err}. {fix}") from err
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4]!r}). {fix}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) != 4 + 4 * ndim + dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"IDX file {path} is truncated: header says shape {shape}. {fix}")
    array = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


@lru_cache(maxsize=4)
def _fashion_mnist_cached(root: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(root)
    images = read_idx(folder / f"{kind}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{kind}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{folder}: {kind} images {images.shape} do not match labels {labels.shape}")
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """IDX ``kind`` ('train' | 't10k') as read-only (N, 28, 28) uint8 images and (N,) int64 labels."""
    for suffix in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        _source_path("fashion-mnist", f"{kind}-{suffix}")
    return _fashion_mnist_cached(str(_source_path("fashion-mnist")), kind)


def read_gimp_pattern(path: Path) -> np.ndarray:
    """Decode a GIMP ``.pat`` file to (H, W, 3) uint8 RGB (alpha composited on white).

    Format (all big-endian u32): header_size, version (1), width, height, bytes per pixel (1 grey,
    2 grey+alpha, 3 RGB, 4 RGBA), magic ``GPAT``; then a NUL-terminated UTF-8 name filling the rest
    of the header, then ``height * width * bpp`` raw row-major pixels.
    """
    raw = Path(path).read_bytes()
    if len(raw) < 24 or raw[20:24] != b"GPAT":
        raise ValueError(
            f"{path} is not a GIMP pattern (no GPAT magic). Fix: sudo apt-get install --reinstall gimp-data"
        )
    header_size, _version, width, height, bpp = struct.unpack(">5I", raw[:20])
    if bpp not in (1, 2, 3, 4) or len(raw) != header_size + width * height * bpp:
        raise ValueError(f"GIMP pattern {path} is truncated or has {bpp} bytes per pixel")
    pixels = np.frombuffer(raw, np.uint8, offset=header_size).reshape(height, width, bpp)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[bpp]
    image = Image.fromarray(pixels[..., 0] if bpp == 1 else pixels, mode)
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"))


# --------------------------------------------------------------------------- Fashion-MNIST splits


def _class_halves(labels: np.ndarray, seed: int, kind: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class, a seeded permutation of its indices split into (ID half, held-out half)."""
    first, second = [], []
    for label in range(len(FASHION_MNIST_CLASSES)):
        perm = _rng(seed, "fashion-mnist", kind, str(label)).permutation(np.flatnonzero(labels == label))
        first.append(perm[: perm.size // 2])
        second.append(perm[perm.size // 2 :])
    return first, second


def _take(pools: list[np.ndarray], start: int, count: int, what: str) -> np.ndarray:
    """Concatenate ``pool[start:start+count]`` of every class, each sorted (order = label, index)."""
    smallest = min(pool.size for pool in pools)
    if start + count > smallest:
        raise ValueError(f"{what}: needs {start + count} images per class, the pool holds {smallest}")
    return np.concatenate([np.sort(pool[start : start + count]) for pool in pools])


def _part(split: str, images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> Part:
    return Part(split, images[index], labels[index].astype(np.int64), index.astype(np.int64))


def _build_fashion_mnist(sizes: dict, seed: int) -> list[Part]:
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("t10k")
    pools, _ = _class_halves(train_y, seed, "train")
    n_train, n_val = sizes["train_per_class"], sizes["val_per_class"]
    train = _take(pools, 0, n_train, "fashion_mnist train")
    val = _take(pools, n_train, n_val, "fashion_mnist train+val")
    test = _take(_class_halves(test_y, seed, "t10k")[0], 0, sizes["test_per_class"], "fashion_mnist test")
    return [
        _part("train", train_x, train_y, train),
        _part("val", train_x, train_y, val),
        _part("test", test_x, test_y, test),
    ]


def _held_out_t10k(name: str, sizes: dict, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, source index) of a seeded per-class subset of the held-out t10k half."""
    test_x, test_y = load_fashion_mnist("t10k")
    _, held = _class_halves(test_y, seed, "t10k")
    pools = [_rng(seed, name, str(label)).permutation(pool) for label, pool in enumerate(held)]
    index = _take(pools, 0, sizes["n_per_class"], name)
    return test_x[index], test_y[index], index


# --------------------------------------------------------------------------- covariate renderings


def sketch(images: np.ndarray) -> np.ndarray:
    """Edge-map 'pencil sketch': (N, 28, 28) uint8 -> (N, 56, 56) uint8, dark lines on white.

    Bilinear 2x upscale, Sobel gradient magnitude (scikit-image), per-image normalisation by the
    99th percentile, ink = clip(2 * magnitude, 0, 1), pixel = 255 * (1 - ink).
    """
    from skimage.filters import sobel
    from skimage.transform import resize

    out = np.empty((len(images), _SKETCH_SIZE, _SKETCH_SIZE), np.uint8)
    for i, image in enumerate(images):
        big = resize(image / 255.0, (_SKETCH_SIZE, _SKETCH_SIZE), order=1, anti_aliasing=False)
        edges = sobel(big)
        edges /= max(np.percentile(edges, 99), 1e-6)
        out[i] = np.rint(255.0 * (1.0 - np.clip(2.0 * edges, 0.0, 1.0)))
    return out


def _corruption(name: str, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``name`` (a :data:`CORRUPTIONS` key) to (n, H, W) uint8 images."""
    import torch
    import torchvision.transforms.v2.functional as F

    p = CORRUPTIONS[name]
    n, height, width = images.shape
    batch = torch.from_numpy(images[:, None].copy())  # (n, 1, H, W) uint8
    if name == "gaussian_noise":
        noisy = images / 255.0 + rng.normal(0.0, p["sigma"], size=images.shape)
        return np.rint(255.0 * np.clip(noisy, 0.0, 1.0)).astype(np.uint8)
    if name == "jpeg":  # PIL's encoder (torchvision.io's JPEG codec is deprecated)
        return np.stack([np.asarray(F.jpeg(Image.fromarray(im), p["quality"])) for im in images])
    if name == "gaussian_blur":
        result = F.gaussian_blur(batch, [p["kernel_size"]] * 2, [p["sigma"]] * 2)
    elif name == "contrast":
        result = F.adjust_contrast(batch, p["factor"])
    else:  # elastic, as v2.ElasticTransform but with a seeded generator
        torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        kernel = int(8 * p["sigma"] + 1) | 1
        field = torch.rand(n, 2, height, width, generator=torch_gen) * 2 - 1
        field = F.gaussian_blur(field, [kernel, kernel], [p["sigma"], p["sigma"]])
        # pixels -> grid_sample's normalised coordinates; last axis is (x, y)
        displacement = field.permute(0, 2, 3, 1) * (torch.tensor([2.0 / width, 2.0 / height]) * p["alpha"])
        result = torch.stack([F.elastic(batch[j], displacement[j : j + 1]) for j in range(n)])
    return result[:, 0].numpy()


def corrupt(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply one :data:`CORRUPTIONS` entry per image (chosen by ``rng``) to (N, H, W) uint8 images.

    Returns (corrupted images, corruption index into ``list(CORRUPTIONS)``). Noise and the elastic
    displacement fields come from ``rng`` (no global RNG); the rest is deterministic.
    """
    names = list(CORRUPTIONS)
    kinds = rng.integers(0, len(names), size=len(images))
    out = images.copy()
    for k, name in enumerate(names):
        index = np.flatnonzero(kinds == k)
        if index.size:
            out[index] = _corruption(name, images[index], rng)
    return out, kinds


def render(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inverted / colourised renditions: (N, H, W) uint8 -> (N, H, W, 3) uint8, style per image.

    Styles (index into ``_RENDITION_STYLES``): black object on white; bright object of a random hue on a
    dark complementary background; dark object on a light complementary background.
    Pixel = background * (1 - a) + foreground * a, with a = intensity / 255.
    """
    from skimage.color import hsv2rgb

    n = len(images)
    styles = rng.integers(0, len(_RENDITION_STYLES), size=n)
    hue = rng.random(n)
    bright = styles == 1
    fg_hsv = np.stack([hue, np.full(n, 0.85), np.where(bright, 1.0, 0.35)], axis=1)
    bg_hsv = np.stack([(hue + 0.5) % 1.0, np.where(bright, 0.6, 0.25), np.where(bright, 0.15, 1.0)], axis=1)
    fg = hsv2rgb(fg_hsv[:, None, :])[:, 0]
    bg = hsv2rgb(bg_hsv[:, None, :])[:, 0]
    fg[styles == 0], bg[styles == 0] = 0.0, 1.0
    alpha = images[..., None] / 255.0
    out = bg[:, None, None, :] * (1.0 - alpha) + fg[:, None, None, :] * alpha
    return np.rint(255.0 * out).astype(np.uint8), styles


def _build_resampled(sizes: dict, seed: int) -> list[Part]:
    train_x, train_y = load_fashion_mnist("train")
    _, held = _class_halves(train_y, seed, "train")
    index = _take(held, 0, sizes["n_per_class"], "fmnist_resampled")
    return [_part("test", train_x, train_y, index)]


def _build_sketch(sizes: dict, seed: int) -> list[Part]:
    images, labels, index = _held_out_t10k("fmnist_sketch", sizes, seed)
    return [Part("test", sketch(images), labels, index)]


def _build_corrupt(sizes: dict, seed: int) -> list[Part]:
    images, labels, index = _held_out_t10k("fmnist_corrupt", sizes, seed)
    return [Part("test", corrupt(images, _rng(seed, "fmnist_corrupt", "apply"))[0], labels, index)]


def _build_rendition(sizes: dict, seed: int) -> list[Part]:
    images, labels, index = _held_out_t10k("fmnist_rendition", sizes, seed)
    return [Part("test", render(images, _rng(seed, "fmnist_rendition", "apply"))[0], labels, index)]


# --------------------------------------------------------------------------- semantic OOD


def _ood_part(images: np.ndarray, index: np.ndarray, skipped: tuple[dict, ...] = ()) -> Part:
    labels = np.full(len(images), OOD_LABEL, np.int64)
    return Part("test", images, labels, index.astype(np.int64), tuple(skipped))


def _sample(total: int, n: int, seed: int, name: str) -> np.ndarray:
    if n > total:
        raise ValueError(f"{name}: n={n} exceeds the {total} images available")
    return np.sort(_rng(seed, name).choice(total, size=n, replace=False))


def _build_digits(sizes: dict, seed: int) -> list[Part]:
    """scikit-learn digits (8x8, 0..16) as MNIST-style 28 px: bilinear to 20 px, 4 px black border."""
    from sklearn.datasets import load_digits

    digits = load_digits().images
    index = _sample(len(digits), sizes["n"], seed, "digits")
    small = np.rint(digits[index] * (255.0 / 16.0)).astype(np.uint8)
    out = np.zeros((len(index), 28, 28), np.uint8)
    for i, image in enumerate(small):
        out[i, 4:24, 4:24] = np.asarray(Image.fromarray(image).resize((20, 20), Image.Resampling.BILINEAR))
    return [_ood_part(out, index)]


def clipart_paths() -> list[Path]:
    """Sorted openclipart-png files of :data:`CLIPART_CATEGORIES`, minus :data:`CLIPART_EXCLUDE`."""
    root = _source_path("openclipart")
    paths = []
    for category in CLIPART_CATEGORIES:
        folder = _source_path("openclipart", category)
        paths += [p for p in folder.rglob("*.png") if not CLIPART_EXCLUDE.search(str(p.relative_to(root)))]
    return sorted(paths)


def _fitted_sample(name: str, paths: list[Path], n: int, seed: int, on_bad_image: str):
    """The first ``n`` readable files of a seeded order of ``paths`` (all of them when fewer), each
    composited on white and fitted (aspect kept) into 64x64 white; in ``paths`` order.

    Returns (images (m, 64, 64, 3) uint8, index into ``paths``, skipped files). Files that fail to open or
    that are decompression bombs stop the build (``on_bad_image='stop'``) or are skipped and recorded
    (``'skip'``); the next file of the seeded order then takes their place.
    """
    images, index, skipped = [], [], []
    for i in _rng(seed, name).permutation(len(paths)):
        if len(images) == n:
            break
        image = load_image_or_skip(paths[i], on_bad_image, skipped)
        if image is None:
            log.info("%s: skipping %s", name, skipped[-1]["error"])
            continue
        canvas = Image.new("RGB", (_PATCH_SIZE, _PATCH_SIZE), (255, 255, 255))
        fitted = ImageOps.contain(image, (_PATCH_SIZE, _PATCH_SIZE), Image.Resampling.LANCZOS)
        canvas.paste(fitted, ((_PATCH_SIZE - fitted.width) // 2, (_PATCH_SIZE - fitted.height) // 2))
        images.append(np.asarray(canvas))
        index.append(i)
    if not images:
        raise ValueError(f"{name}: none of its {len(paths)} files is readable ({len(skipped)} skipped)")
    order = np.argsort(index)
    return np.stack(images)[order], np.asarray(index)[order], tuple(skipped)


def _build_clipart(sizes: dict, seed: int, on_bad_image: str = "stop") -> list[Part]:
    """Seeded sample of exactly ``n`` clip-art files (:func:`_fitted_sample`); fewer readable is an error."""
    images, index, skipped = _fitted_sample("clipart", clipart_paths(), sizes["n"], seed, on_bad_image)
    if len(images) < sizes["n"]:
        raise ValueError(f"clipart: n={sizes['n']} but only {len(images)} readable files ({len(skipped)} skipped)")
    return [_ood_part(images, index, skipped)]


def stamp_paths() -> list[Path]:
    """Sorted PNG files of Tux Paint's animal stamps (every subfolder; the few .svg stamps are left out)."""
    paths = sorted(_source_path("tuxpaint-animals").rglob("*.png"))
    if not paths:
        raise FileNotFoundError(
            f"no .png stamps under {_source_path('tuxpaint-animals')}. Fix: sudo apt-get install --reinstall "
            "tuxpaint-stamps-default, or delete the download and its .complete marker and fetch it again"
        )
    return paths


def _build_stamps_animals(sizes: dict, seed: int, on_bad_image: str = "stop") -> list[Part]:
    """Tux Paint's animal stamps as 64 px clip art (:func:`_fitted_sample`). The collection is small (146
    stamps), so ``n`` is a maximum here: a seeded sample of ``n`` when it holds more, else every readable
    stamp once (never a repeat); the manifest's sidecar records the count against the requested ``n``."""
    paths = stamp_paths()
    if sizes["n"] > len(paths):
        log.warning("stamps_animals: n=%d exceeds the %d stamps; all of them are used, each once",
                    sizes["n"], len(paths))
    images, index, skipped = _fitted_sample("stamps_animals", paths, sizes["n"], seed, on_bad_image)
    return [_ood_part(images, index, skipped)]


def texture_sources() -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8) for every GIMP pattern (sorted paths), then skimage brick/grass/gravel."""
    import skimage.data

    root = _source_path("gimp-patterns")
    sources = [(str(p.relative_to(root)), read_gimp_pattern(p)) for p in sorted(root.rglob("*.pat"))]
    if not sources:
        raise FileNotFoundError(f"no .pat files under {root}. Fix: sudo apt-get install gimp-data")
    for name in ("brick", "grass", "gravel"):
        grey = getattr(skimage.data, name)()
        sources.append((f"skimage:{name}", np.repeat(grey[..., None], 3, axis=2)))
    return sources


def _build_textures(sizes: dict, seed: int) -> list[Part]:
    """Seeded random crops resized to 64x64 RGB; source chosen uniformly per image.

    GIMP patterns are seamless tiles, so they are tiled to 192 px and cropped at a side of 32..96 px;
    the 512 px scikit-image textures are cropped at 64..256 px.
    """
    sources = texture_sources()
    rng = _rng(seed, "textures")
    index = np.sort(rng.integers(0, len(sources), size=sizes["n"]))
    out = np.empty((len(index), _PATCH_SIZE, _PATCH_SIZE, 3), np.uint8)
    for i, s in enumerate(index):
        name, pixels = sources[s]
        if name.startswith("skimage:"):
            side = int(rng.integers(64, 257))
        else:
            reps = (-(-192 // pixels.shape[0]), -(-192 // pixels.shape[1]), 1)
            pixels, side = np.tile(pixels, reps), int(rng.integers(32, 97))
        top = int(rng.integers(0, pixels.shape[0] - side + 1))
        left = int(rng.integers(0, pixels.shape[1] - side + 1))
        crop = Image.fromarray(np.ascontiguousarray(pixels[top : top + side, left : left + side]))
        out[i] = np.asarray(crop.resize((_PATCH_SIZE, _PATCH_SIZE), Image.Resampling.LANCZOS))
    return [_ood_part(out, index)]


# --------------------------------------------------------------------------- registry and writer

_COVARIATE_SOURCE = "derived from Debian dataset-fashion-mnist"

DEMO_DATASETS: dict[str, DemoDataset] = {
    d.name: d
    for d in (
        DemoDataset(
            "fashion_mnist", "id", "Debian dataset-fashion-mnist (IDX train + t10k)",
            ("train_per_class", "val_per_class", "test_per_class"), _build_fashion_mnist,
        ),
        DemoDataset(
            "fmnist_resampled", "covariate", f"{_COVARIATE_SOURCE}: held-out IDX train images (V2-style)",
            ("n_per_class",), _build_resampled,
        ),
        DemoDataset(
            "fmnist_sketch", "covariate", f"{_COVARIATE_SOURCE}: Sobel edge sketches (scikit-image)",
            ("n_per_class",), _build_sketch,
        ),
        DemoDataset(
            "fmnist_corrupt", "covariate",
            f"{_COVARIATE_SOURCE}: ImageNet-C-style corruptions (torchvision v2)",
            ("n_per_class",), _build_corrupt,
        ),
        DemoDataset(
            "fmnist_rendition", "covariate", f"{_COVARIATE_SOURCE}: inverted/colourised renditions",
            ("n_per_class",), _build_rendition,
        ),
        DemoDataset(
            "stamps_animals", "ood", "Debian tuxpaint-stamps-default (animal stamps)", ("n",),
            _build_stamps_animals, reads_image_files=True,
        ),
        DemoDataset("digits", "ood", "scikit-learn load_digits", ("n",), _build_digits),
        DemoDataset("clipart", "ood", "Debian openclipart-png", ("n",), _build_clipart, reads_image_files=True),
        DemoDataset(
            "textures", "ood", "Debian gimp-data patterns + scikit-image textures", ("n",), _build_textures
        ),
    )
}  # fmt: skip


_PYPI_SOURCES = {"digits": "scikit-learn", "textures": "scikit-image"}
"""PyPI packages a demo dataset reads data files from (besides its :data:`DATASET_SOURCES`)."""


def dataset_sources(name: str) -> list[dict]:
    """Provenance of the data dataset ``name`` was built from: one record per source, saying whether it
    came from the installed registry package or from a verified download (see :mod:`.sources`)."""
    records = [resolve(key)[1] for key in DATASET_SOURCES[name]]
    if name in _PYPI_SOURCES:
        package = _PYPI_SOURCES[name]
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        records.append({"source": package, "kind": "registry", "package": f"PyPI {package}", "version": version})
    return records


def _checked_sizes(dataset: DemoDataset, sizes: dict) -> dict:
    checked = {}
    for key in dataset.size_keys:
        if key not in sizes:
            raise ValueError(f"{dataset.name}: sizes is missing '{key}' (needs {list(dataset.size_keys)})")
        value = sizes[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{dataset.name}: sizes['{key}'] must be a positive integer, got {value!r}")
        checked[key] = int(value)
    return checked


def build_demo_dataset(name: str, out_dir: Path, sizes: dict, seed: int, on_bad_image: str = "stop") -> pd.DataFrame:
    """Build dataset ``name`` under ``out_dir/name`` and return its manifest (row order = file order).

    ``sizes`` needs the entry's ``size_keys`` (other keys are ignored). Images are written into
    ``out_dir/.name.tmp`` (a stale one is removed first) and renamed to ``out_dir/name`` only when all
    are written, replacing an older build. ``out_dir/name/sources.json`` records where the data came
    from (:func:`dataset_sources`; also ``attrs['sources']``). The returned frame's ``attrs['skipped']``
    lists the source files left out as unreadable under ``on_bad_image='skip'`` (``{"path", "error"}``;
    clip art and stamps only), ``attrs['sizes']`` the sizes it was asked for (its ``size_keys``).
    """
    if name not in DEMO_DATASETS:
        raise ValueError(f"unknown demo dataset '{name}'; known: {sorted(DEMO_DATASETS)}")
    dataset = DEMO_DATASETS[name]
    options = {"on_bad_image": on_bad_image} if dataset.reads_image_files else {}
    sizes = _checked_sizes(dataset, sizes)
    parts = dataset.builder(sizes, seed, **options)
    out_dir = Path(out_dir)
    final, tmp = out_dir / name, out_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    rows = []
    try:
        for part in parts:
            folder = tmp / part.split
            folder.mkdir(parents=True)
            pairs = tqdm(zip(part.images, part.labels), total=len(part.labels), desc=f"{name}/{part.split}")
            for i, (image, label) in enumerate(pairs):
                file = f"{i:05d}.png"
                Image.fromarray(image).save(folder / file, format="PNG")
                rows.append((str(final / part.split / file), int(label), part.split, name, dataset.role))
        manifest = validate_manifest(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), source=name)
        sources = dataset_sources(name)
        write_json(tmp / "sources.json", sources)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    skipped = [entry for part in parts for entry in part.skipped]
    if skipped:
        log.warning("%s: skipped %d unreadable source files", name, len(skipped))
    manifest.attrs["skipped"] = skipped
    manifest.attrs["sources"] = sources
    manifest.attrs["sizes"] = sizes
    return manifest
