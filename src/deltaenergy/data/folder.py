"""Manifests of class-folder datasets: ``root/<class>/<image>`` (ImageNet, DTD and most image datasets).

Conventions: ``classes`` is the expected class list in label order and names the folders exactly; every
one must exist and hold at least one readable image, and a folder not in the list is an error (its images
would get no label or a wrong one). Image files are the direct children of a class folder whose suffix is
in :data:`IMAGE_SUFFIXES` (case-insensitive), sorted by name; other files and hidden entries are ignored.
Each image is fully decoded once here (:func:`deltaenergy.data.images.load_image`), so a truncated,
unreadable or decompression-bomb file stops the build or is skipped and recorded (``on_bad_image``)
before any feature is computed. Labels are the class index, or -1 for ``role='ood'``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .images import ON_BAD_IMAGE, load_image_or_skip
from .manifest import MANIFEST_COLUMNS, OOD_LABEL, validate_manifest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (direct children, see the module docstring), sorted by name. Uses
    ``os.scandir`` (no stat per file where the file system reports types: ImageNet's 1.28M files)."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                      and e.is_file())


def folder_manifest(
    root: str | os.PathLike,
    classes: list[str],
    dataset: str,
    role: str,
    split: str = "test",
    on_bad_image: str = "stop",
) -> pd.DataFrame:
    """The manifest of ``root/<class>/<image>`` for the expected ``classes`` (see the module docstring).

    Raises ``FileNotFoundError`` naming ``root`` or every missing class folder, and ``ValueError`` naming
    unexpected folders, empty class folders, class folders left without a readable image, and (with
    ``on_bad_image='stop'``) the first unreadable image. ``attrs['skipped']`` lists the skipped files.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"data.on_bad_image: {on_bad_image!r} is not one of {ON_BAD_IMAGE}")
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"{dataset}: the expected class list must be non-empty and without repeats, got {classes}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset folder {root} not found; expected {root}/<class>/<image>")
    missing = [str(root / c) for c in classes if not (root / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{dataset}: class folder(s) missing: {', '.join(missing)}; every class of the "
                                f"expected list needs its folder (restore it, or fix the class list)")
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in classes)
    if extra:
        raise ValueError(f"{dataset}: folder(s) {', '.join(str(root / e) for e in extra)} are not in the expected "
                         f"class list; remove them or add the classes")
    files = {c: image_files(root / c) for c in classes}
    empty = [str(root / c) for c, found in files.items() if not found]
    if empty:
        raise ValueError(f"{dataset}: class folder(s) without images ({', '.join(IMAGE_SUFFIXES)}): "
                         f"{', '.join(empty)}; restore their images")
    rows, skipped = [], []
    for label, name in enumerate(classes):
        before = len(rows)
        for path in files[name]:
            if load_image_or_skip(path, on_bad_image, skipped) is not None:
                rows.append((str(path), OOD_LABEL if role == "ood" else label, split, dataset, role))
        if len(rows) == before:
            raise ValueError(f"{dataset}: class folder {root / name} has no readable image "
                             f"({len(files[name])} skipped as unreadable); restore its images")
    manifest = validate_manifest(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), source=str(root))
    manifest.attrs["skipped"] = skipped
    return manifest
