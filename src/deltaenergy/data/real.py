"""Real datasets: fetch (download, verify, extract), validate the layout with exact counts, find the folder,
and build manifests, for the registry of :mod:`deltaenergy.data.registry` and the protocols of
:mod:`deltaenergy.data.protocols`.

Conventions:

- Downloads live under the downloads root (:func:`deltaenergy.data.sources.fetched_data_root`,
  ``resources/downloads`` in the workflow): archives in ``archives/<name>/``, the extracted and validated
  dataset in ``datasets/<name>/`` next to its marker ``datasets/<name>.complete`` (a JSON record, written
  last: a dataset that failed any check is never marked complete).
- Checksums: the registry's published digest, else the SHA-256 recorded in ``checksums.lock`` (JSON
  ``{"<name>/<file>": {"digest", "url", "recorded"}}``) by the first download (trust on first use: logged
  as a warning and printed to stderr; later downloads and bring-your-own archives are verified against it).
  The lock is written only after the archive extracted safely and its layout validated.
- Config keys read (``data.*``): ``roots.<name>`` (an existing dataset folder, read-only: validated,
  never written), ``archives.<name>`` (a local archive used instead of the download: verified when a
  digest is known, extracted into the downloads root), ``counts.<name>`` (replaces registry counts),
  ``imagenet_val_labels`` (flat ImageNet val: the labels file, default: looked up in the ImageNet folder),
  ``protocol`` (see :func:`dataset_spec`), ``id``/``covariate``/``ood``, ``sizes.<id>`` (``train_per_class``,
  ``val_per_class``), ``seed``.
- ImageNet flat val: ``val/ILSVRC2012_val_XXXXXXXX.JPEG`` with labels from Kaggle's ``LOC_val_solution.csv``
  (``ImageId,PredictionString``; the first word of the prediction string is the wnid) or from the devkit
  (``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt``: line i = ILSVRC2012_ID of image
  i; ``meta.mat`` next to it maps ILSVRC2012_ID to wnid).
- Per-class pools: a class's images (sorted by path) are permuted by
  ``numpy.random.default_rng([seed, crc32(dataset), crc32(key)])`` (key: the class folder, or
  ``<domain>/<class>`` for PACS/VLCS, whose pools are per domain and class); the ID train split is the
  first ``train_per_class``, val the next ``val_per_class``, and test the rest (ImageNet: test = its val
  folder).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import json
import logging
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deltaenergy import download as dl
from deltaenergy.data import protocols
from deltaenergy.data.folder import IMAGE_SUFFIXES, image_files
from deltaenergy.data.images import ON_BAD_IMAGE, load_image_or_skip
from deltaenergy.data.manifest import MANIFEST_COLUMNS, OOD_LABEL, validate_manifest
from deltaenergy.data.registry import LAYOUTS, REAL_DATASETS, expected_counts, real_dataset
from deltaenergy.data.sources import fetched_data_root
from deltaenergy.io import write_json

log = logging.getLogger(__name__)

LOCK_NAME = "checksums.lock"
VAL_LABEL_FILES = ("LOC_val_solution.csv", "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")
LAYOUT_HELP = {
    "imagenet": "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, or a flat val/*.JPEG with LOC_val_solution.csv or "
                "ILSVRC2012_devkit_t12/ in the same folder (or data.imagenet_val_labels)",
    "class_folders": "<class>/<image>",
    "domains": "<domain>/<class>/<image>",
    "image_tree": "image files at any depth",
}


class DatasetLayoutError(ValueError):
    """A dataset folder does not hold what the registry (or ``data.counts``) expects."""


def dataset_target(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the download of ``name`` is extracted: ``<root>/datasets/<name>`` (its marker is a sibling)."""
    return Path(fetched_data_root() if root is None else root) / "datasets" / name


# --------------------------------------------------------------------------- layout


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))


def tree_images(folder: Path) -> list[Path]:
    """Image files at any depth under ``folder`` (hidden entries and ``__MACOSX`` skipped), sorted."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__MACOSX"))]
        found += [Path(top) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def imagenet_val_labels(folder: Path, labels_file: str | os.PathLike | None = None) -> dict[str, str]:
    """Flat ImageNet val: {image file name: wnid} from ``labels_file`` or the first of
    :data:`VAL_LABEL_FILES` found in ``folder`` (see the module docstring for both formats)."""
    candidates = [Path(labels_file)] if labels_file else [folder / f for f in VAL_LABEL_FILES]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetLayoutError(
            f"imagenet1k: {folder / 'val'} is flat (no class folders) but no labels file was found at "
            f"{', '.join(map(str, candidates))}. Fix: put LOC_val_solution.csv (Kaggle) or the devkit folder "
            f"ILSVRC2012_devkit_t12/ (image-net.org) next to val/, or set data.imagenet_val_labels")
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return {f"{row['ImageId']}.JPEG": row["PredictionString"].split()[0] for row in csv.DictReader(fh)}
    import scipy.io

    meta = scipy.io.loadmat(path.parent / "meta.mat", squeeze_me=True)["synsets"]
    wnid_of = {int(i): str(w) for i, w in zip(meta["ILSVRC2012_ID"], meta["WNID"])}
    ids = [int(x) for x in path.read_text().split()]
    return {f"ILSVRC2012_val_{i:08d}.JPEG": wnid_of[c] for i, c in enumerate(ids, start=1)}


def _count(name: str, layout: str, folder: Path, val_labels) -> tuple[dict, list[str]]:
    """(found counts, problems other than counts) of ``folder`` read as ``layout``."""
    known = protocols.known_folders(name)
    problems: list[str] = []

    def class_dirs(where: Path) -> list[str]:
        names = _subdirs(where)
        if known is not None:
            unknown = sorted(set(names) - set(known))
            if unknown:
                problems.append(f"{where} holds folders that are not {name} classes: {unknown[:5]}"
                                f"{' ...' if len(unknown) > 5 else ''}")
        return names

    if layout == "image_tree":
        return {"images": len(tree_images(folder))}, problems
    if layout == "class_folders":
        names = class_dirs(folder)
        return {"classes": len(names), "images": sum(len(image_files(folder / c)) for c in names)}, problems
    if layout == "domains":
        domains = _subdirs(folder)
        per_domain = {d: class_dirs(folder / d) for d in domains}
        sets = {tuple(v) for v in per_domain.values()}
        if len(sets) > 1:
            problems.append(f"the domains hold different class folders: {per_domain}")
        images = sum(len(image_files(folder / d / c)) for d, cs in per_domain.items() for c in cs)
        return {"domains": len(domains), "classes": max((len(v) for v in per_domain.values()), default=0),
                "images": images}, problems
    # imagenet
    train, val = folder / "train", folder / "val"
    for part in (train, val):
        if not part.is_dir():
            problems.append(f"{part} is missing")
    if problems:
        return {}, problems
    classes = class_dirs(train)
    found = {"classes": len(classes), "train": sum(len(image_files(train / c)) for c in classes)}
    val_dirs = _subdirs(val)
    if val_dirs:
        if val_dirs != classes:
            problems.append(f"val/ and train/ hold different class folders "
                            f"({sorted(set(classes) ^ set(val_dirs))[:5]} ...)")
        found["val"] = sum(len(image_files(val / c)) for c in val_dirs)
    else:
        files = [p.name for p in image_files(val)]
        labels = imagenet_val_labels(folder, val_labels)
        unlabelled = [f for f in files if f not in labels]
        if unlabelled:
            problems.append(f"{len(unlabelled)} val images have no label (first: {unlabelled[0]})")
        found["val"] = len(files)
    return found, problems


def validate_layout(name: str, folder: str | os.PathLike, counts: dict | None = None, *, origin: str = "download",
                    val_labels: str | os.PathLike | None = None) -> dict:
    """Check that ``folder`` is a complete copy of registry dataset ``name`` (exact counts: the registry's,
    or ``counts`` = ``data.counts.<name>``); return the counts found.

    ``origin`` ('download' | 'roots' | 'archives') only chooses the fix the error suggests. Raises
    :class:`DatasetLayoutError` naming the dataset, the folder, expected vs found, and the fix. Reads only.
    """
    entry = REAL_DATASETS[name]
    expected = expected_counts(name, counts)
    folder = Path(folder)
    if origin == "roots":
        fix = (f"point data.roots.{name} at a complete copy laid out as {LAYOUT_HELP[entry.layout]} (it is only "
               f"read, never written), or remove the key to download it")
    else:
        fix = (f"delete {folder} and rerun the rule fetch_dataset (snakemake --until fetch_dataset), or bring "
               f"the archive with data.archives.{name} or a folder with data.roots.{name}")
    if not folder.is_dir():
        raise DatasetLayoutError(f"{name}: dataset folder {folder} not found (expected {LAYOUT_HELP[entry.layout]}). "
                                 f"Fix: {fix}")
    found, problems = _count(name, entry.layout, folder, val_labels)
    wrong = [f"{k}: expected {v}, found {found.get(k, 'none')}" for k, v in expected.items()
             if v is not None and found.get(k) != v]
    if wrong or problems:
        known = protocols.known_folders(name)
        missing = ""
        if known is not None and expected.get("classes") == len(known) and entry.layout == "class_folders":
            lost = sorted(set(known) - set(_subdirs(folder)))
            missing = f"; missing class folders: {lost[:10]}{' ...' if len(lost) > 10 else ''}" if lost else ""
        raise DatasetLayoutError(
            f"{name}: {folder} is not a complete copy ({LAYOUT_HELP[entry.layout]}): "
            f"{'; '.join(wrong + problems)}{missing}. Fix: {fix}; if the published dataset itself changed, "
            f"set data.counts.{name} to the new counts")
    return found


# --------------------------------------------------------------------------- fetch


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{LOCK_NAME}.mutex", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield root / LOCK_NAME
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_lock(root: str | os.PathLike | None = None) -> dict:
    """The trust-on-first-use checksum records of the downloads root (empty when none)."""
    path = Path(fetched_data_root() if root is None else root) / LOCK_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _record_first_use(root: Path, key: str, archive: Path, url: str, reference_md5: str | None) -> str:
    """Record ``archive``'s SHA-256 under ``key`` in the lock, say so loudly, return the digest."""
    digest = f"sha256:{dl.file_digest(archive)}"
    reference = ""
    if reference_md5:
        md5 = dl.file_digest(archive, "md5")
        reference = (f" Its MD5 {md5} {'matches' if md5 == reference_md5 else 'DIFFERS FROM'} the MD5 "
                     f"{reference_md5} third-party loaders pin for it.")
    with _locked(root) as path:
        table = json.loads(path.read_text()) if path.exists() else {}
        table[key] = {"digest": digest, "url": url,
                      "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        write_json(path, table)
    message = (f"TRUST ON FIRST USE: {key} has no published checksum; recorded {digest} (from {url}) in "
               f"{path}. Later downloads are verified against it; keep or commit that file to pin the data."
               f"{reference}")
    log.warning(message)
    print(f"\n*** {message} ***\n", file=sys.stderr)
    return digest


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(1024).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def fetch_dataset(name: str, root: str | os.PathLike | None = None, *, archive: str | os.PathLike | None = None,
                  counts: dict | None = None, **download_options) -> dict:
    """Download (or take ``archive``), verify, safely extract and validate registry dataset ``name`` into
    :func:`dataset_target`; write its completion marker last and return the marker's record.

    ``download_options`` go to :func:`deltaenergy.download.download`. A half-downloaded archive (``.part``)
    is resumed. Raises :class:`deltaenergy.download.DownloadError`/``ChecksumError``,
    :class:`deltaenergy.download.UnsafeArchiveError` or :class:`DatasetLayoutError`, each naming the dataset
    and the fix; on any failure the dataset is not marked complete.
    """
    entry = real_dataset(name)
    if entry.manual:
        raise ValueError(f"{name} cannot be downloaded ({entry.licence}) Fix: set data.roots.{name} to your copy "
                         f"({LAYOUT_HELP[entry.layout]}); it is read, never written")
    root = Path(fetched_data_root() if root is None else root)
    target = dataset_target(name, root)
    dl.complete_marker(target).unlink(missing_ok=True)
    if len(entry.files) != 1:
        raise ValueError(f"{name}: the registry lists {len(entry.files)} files; fetch_dataset takes one archive")
    (remote,) = entry.files
    key = f"{name}/{remote.name}"
    locked = read_lock(root).get(key, {}).get("digest")
    digest = remote.digest or locked
    what = f"dataset '{name}' ({remote.name})"
    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise FileNotFoundError(f"{what}: data.archives.{name} = {path} is not a file. Fix: point it at the "
                                    f"downloaded {remote.name} or remove the key to download it")
        if digest:
            dl.verify(path, digest, what)
        url = f"local archive {path}"
    else:
        path = root / "archives" / name / remote.name
        url = dl.download(remote.urls, path, digest, what=what, **download_options) or f"existing file {path}"
    try:
        if _looks_like_html(path):
            raise dl.UnsafeArchiveError(f"{path} is an HTML page, not an archive (a quota, consent or "
                                        f"virus-scan page of the host)")
        dl.extract_archive(path, target, subdir=entry.member, mark=False)
    except dl.UnsafeArchiveError as err:
        if archive is None and digest is None:
            path.unlink(missing_ok=True)  # unverified and unusable: the next run downloads it again
        raise dl.UnsafeArchiveError(
            f"{what}: {err}. Nothing was extracted and the dataset is not marked complete. Fix: download "
            f"{remote.name} in a browser from {remote.urls[0]} (or the homepage {entry.homepage}) and set "
            f"data.archives.{name} to it, or set data.roots.{name} to an extracted copy") from err
    found = validate_layout(name, target, counts, origin="download")
    if digest is None:
        sha256 = _record_first_use(root, key, path, url, entry.reference_md5)
    else:
        sha256 = f"sha256:{dl.file_digest(path)}"
    record = {"dataset": name, "path": str(target), "layout": entry.layout, "counts": found,
              "file": {"name": remote.name, "sha256": sha256, "verified_with": digest or "first use (recorded)",
                       "url": url, "mirrors": list(remote.urls)}, **entry.extra}
    dl.mark_complete(target, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def dataset_folder(name: str, data_config: dict) -> Path:
    """The validated folder of registry dataset ``name``: ``data.roots.<name>`` (validated with
    ``data.counts.<name>``, read-only) or its completed download. Raises naming the fix."""
    entry = REAL_DATASETS[name]
    roots = data_config.get("roots") or {}
    counts = (data_config.get("counts") or {}).get(name)
    if roots.get(name):
        folder = Path(roots[name])
        validate_layout(name, folder, counts, origin="roots", val_labels=data_config.get("imagenet_val_labels"))
        return folder
    if entry.manual:
        raise FileNotFoundError(f"{name}: no folder configured and it cannot be downloaded ({entry.licence}) "
                                f"Fix: set data.roots.{name} to your copy ({LAYOUT_HELP[entry.layout]})")
    target = dataset_target(name)
    if not dl.is_complete(target):
        raise FileNotFoundError(f"{name}: no completed download at {target}. Fix: run the rule fetch_dataset "
                                f"(snakemake --until fetch_dataset on a machine with internet), or set "
                                f"data.archives.{name} or data.roots.{name}")
    return target


# --------------------------------------------------------------------------- manifests


def _pool(paths: list[Path], per_class: tuple[int, int | None] | None, seed: int, dataset: str, key: str):
    """The ``per_class`` slice of ``paths`` permuted by (seed, dataset, key), in path order."""
    if per_class is None:
        return paths
    order = np.random.default_rng([int(seed), zlib.crc32(dataset.encode()), zlib.crc32(key.encode())])
    picked = order.permutation(len(paths))[per_class[0]:per_class[1]]
    return [paths[i] for i in sorted(picked)]


def real_manifest(name: str, folder: str | os.PathLike, role: str, classes: list[str] | None = None,
                  label_of: dict[str, int] | None = None, split: str = "test", on_bad_image: str = "stop", *,
                  dataset: str | None = None, domains: list[str] | None = None,
                  per_class: tuple[int, int | None] | None = None, seed: int = 0,
                  val_labels: str | os.PathLike | None = None) -> pd.DataFrame:
    """Manifest rows of registry dataset ``name`` stored in ``folder`` (already validated).

    ``classes``: the class folders kept (None = all; ignored for ``image_tree``), ``label_of``: folder ->
    ID label (default: position in ``classes``; OOD rows get -1). ``dataset``: the manifest's dataset
    column (default ``name``). ``domains`` (``domains`` layout): the domains read (None = all).
    ``per_class``: the ``[start, stop)`` slice of each class's seeded permutation (module docstring).
    ImageNet: ``split`` 'train'/'val' read ``train/``, 'test' reads ``val/``. Every image is decoded
    once (``on_bad_image``: stop | skip, skipped files in ``attrs['skipped']``).
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"data.on_bad_image: {on_bad_image!r} is not one of {ON_BAD_IMAGE}")
    entry = REAL_DATASETS[name]
    folder, dataset = Path(folder), dataset or name
    groups: list[tuple[str, str | None, list[Path]]] = []  # (pool key, class folder, its images)
    if entry.layout == "image_tree":
        groups = [("", None, tree_images(folder))]
    elif entry.layout == "domains":
        for domain in domains or _subdirs(folder):
            for c in classes or _subdirs(folder / domain):
                groups.append((f"{domain}/{c}", c, image_files(folder / domain / c)))
    elif entry.layout == "class_folders":
        groups = [(c, c, image_files(folder / c)) for c in classes or _subdirs(folder)]
    else:
        part = folder / ("val" if split == "test" else "train")
        kept = classes or _subdirs(folder / "train")
        if split == "test" and not _subdirs(part):
            wnid_of = imagenet_val_labels(folder, val_labels)
            by_class: dict[str, list[Path]] = {c: [] for c in kept}
            for path in image_files(part):
                if wnid_of.get(path.name) in by_class:
                    by_class[wnid_of[path.name]].append(path)
            groups = [(c, c, paths) for c, paths in by_class.items()]
        else:
            groups = [(c, c, image_files(part / c)) for c in kept]
    if label_of is None:
        label_of = {c: i for i, c in enumerate(classes or sorted({c for _, c, _ in groups if c is not None}))}
    rows, skipped = [], []
    for key, group, paths in groups:
        label = OOD_LABEL if role == "ood" else label_of[group]
        for path in _pool(paths, per_class, seed, dataset, key):
            if load_image_or_skip(path, on_bad_image, skipped) is not None:
                rows.append((str(path), label, split, dataset, role))
    if not rows:
        raise DatasetLayoutError(f"{dataset}: no readable image in {folder} for classes {classes} "
                                 f"(split {split}, per_class {per_class}); check the protocol and data.sizes")
    manifest = validate_manifest(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), source=str(folder))
    manifest.attrs["skipped"] = skipped
    return manifest


# --------------------------------------------------------------------------- protocols -> datasets


@dataclass(frozen=True)
class DatasetSpec:
    """How manifest dataset ``dataset`` is made from registry dataset ``registry``: its ``role``, the class
    folders kept (``None`` = all), folder -> ID label, and the domains read (``domains`` layout)."""

    dataset: str
    registry: str
    role: str
    folders: tuple[str, ...] | None
    label_of: dict
    domains: tuple[str, ...] | None = None


PROTOCOLS = ("imagenet1k", "hard_split", "imagenet10_20", "cross_dataset")
"""``data.protocol.name`` values. Other keys: hard_split ``seed`` (default 0) and ``fraction`` (0.4);
cross_dataset ``held_out`` (a domain of ``data.id``, pacs or vlcs)."""


def _protocol(data_config: dict) -> dict:
    protocol = dict(data_config.get("protocol") or {"name": "imagenet1k"})
    if protocol.get("name") not in PROTOCOLS:
        raise ValueError(f"data.protocol.name: {protocol.get('name')!r} is not one of {PROTOCOLS}")
    return protocol


def id_classes(data_config: dict) -> tuple[list[str], list[str]]:
    """(ids, names) of the ID classes in label order: ImageNet wnids and open_clip names, or PACS/VLCS
    folder names (names with '_' as spaces)."""
    ids = id_class_ids(data_config)
    if _protocol(data_config)["name"] == "cross_dataset":
        return ids, [c.replace("_", " ") for c in ids]
    wnids, names = protocols.imagenet_classes()
    index = {w: i for i, w in enumerate(wnids)}
    return ids, [names[index[w]] for w in ids]


def id_class_ids(data_config: dict) -> list[str]:
    """The ids of :func:`id_classes` without loading the class names (no open_clip import)."""
    protocol = _protocol(data_config)
    if protocol["name"] == "cross_dataset":
        return protocols.cross_dataset(data_config["id"], protocol["held_out"])["classes"]
    wnids = protocols.imagenet_wnids()
    if protocol["name"] == "imagenet1k":
        return wnids
    if protocol["name"] == "hard_split":
        return [wnids[i] for i in protocols.hard_split(protocol.get("seed", 0), protocol.get("fraction", 0.4))[0]]
    return protocols.imagenet10_20()[0]


def dataset_spec(dataset: str, data_config: dict) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset named in ``data.id``/``covariate``/``ood`` under
    ``data.protocol``. Names: registry names, plus ``imagenet10``/``imagenet20`` (imagenet10_20),
    ``imagenet1k_open`` (hard_split: val images of the OOD classes) and ``<pacs|vlcs>_<domain>`` (the
    held-out domain). Covariate ImageNet sets keep only folders of ID classes."""
    protocol = _protocol(data_config)
    ids = id_class_ids(data_config)
    label = {c: i for i, c in enumerate(ids)}
    role = ("id" if dataset == data_config.get("id") else
            "covariate" if dataset in (data_config.get("covariate") or ()) else "ood")
    wnids = protocols.imagenet_wnids()
    if protocol["name"] == "cross_dataset":
        setup = protocols.cross_dataset(data_config["id"], protocol["held_out"])
        if dataset == data_config["id"]:
            return DatasetSpec(dataset, dataset, "id", tuple(ids), label, tuple(setup["train_domains"]))
        if dataset == f"{data_config['id']}_{protocol['held_out']}":
            return DatasetSpec(dataset, data_config["id"], role, tuple(ids), label, (protocol["held_out"],))
        if dataset in protocols.CROSS_DATASET_OOD:
            return DatasetSpec(dataset, dataset, "ood", None, {})  # folders: protocols.ood_classes at build time
    elif dataset in ("imagenet1k", "imagenet10"):
        return DatasetSpec(dataset, "imagenet1k", role, tuple(ids), label)
    elif dataset == "imagenet1k_open" and protocol["name"] == "hard_split":
        return DatasetSpec(dataset, "imagenet1k", "ood", tuple(w for w in wnids if w not in label), {})
    elif dataset == "imagenet20" and protocol["name"] == "imagenet10_20":
        return DatasetSpec(dataset, "imagenet1k", "ood", tuple(protocols.imagenet10_20()[1]), {})
    elif dataset in ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        folder_wnid = {str(i): w for i, w in enumerate(wnids)} if dataset == "imagenet_v2" else {w: w for w in wnids}
        label_of = {f: label[w] for f, w in folder_wnid.items() if w in label}
        return DatasetSpec(dataset, dataset, role, None, label_of)
    elif dataset == "textures" or dataset in REAL_DATASETS and REAL_DATASETS[dataset].layout == "image_tree":
        return DatasetSpec(dataset, dataset, "ood", None, {})
    raise ValueError(f"data: dataset {dataset!r} has no meaning under protocol {protocol['name']!r} "
                     f"(see deltaenergy.data.real.dataset_spec)")


def fetch_markers(dataset: str, data_config: dict, downloads: str) -> list[str]:
    """The completion marker (under ``downloads``) the manifest of ``dataset`` waits for: none when its
    registry data is a configured folder (``data.roots``) or manual."""
    name = dataset_spec(dataset, data_config).registry
    if (data_config.get("roots") or {}).get(name) or REAL_DATASETS[name].manual:
        return []
    return [f"{downloads}/datasets/{name}.complete"]


def build_real_dataset(dataset: str, data_config: dict, on_bad_image: str = "stop") -> tuple[pd.DataFrame, dict]:
    """(manifest, sidecar extras) of ``dataset``: the ID set gets train/val/test splits (per-class pools of
    ``data.sizes.<id>``), other sets one test split. Extras: ``class_subset`` (sorted ID labels its images
    can have; [] for OOD) and ``source`` (registry name, folder, origin)."""
    spec = dataset_spec(dataset, data_config)
    entry = REAL_DATASETS[spec.registry]
    folder = dataset_folder(spec.registry, data_config)
    seed = int(data_config.get("seed", 0))
    options = dict(on_bad_image=on_bad_image, dataset=dataset, domains=spec.domains, seed=seed,
                   val_labels=data_config.get("imagenet_val_labels"))
    present = (_subdirs(folder / "train") if entry.layout == "imagenet" else
               _subdirs(folder / (spec.domains or _subdirs(folder))[0]) if entry.layout == "domains" else
               _subdirs(folder) if entry.layout == "class_folders" else None)
    folders = None if present is None else [f for f in (spec.folders or present) if f in present]
    if spec.role != "id" and spec.label_of and folders is not None:
        folders = [f for f in folders if f in spec.label_of]  # covariate sets: ID classes only
    if spec.registry in protocols.OOD_OVERLAP and spec.role == "ood":
        folders = protocols.ood_classes(spec.registry, folders, id_class_ids(data_config))
    label_of = {f: spec.label_of[f] for f in folders} if spec.label_of and folders is not None else None
    if spec.role == "id":
        sizes = (data_config.get("sizes") or {}).get(dataset) or {}
        n_train, n_val = int(sizes.get("train_per_class", 16)), int(sizes.get("val_per_class", 4))
        parts = [real_manifest(spec.registry, folder, "id", folders, label_of, "train", per_class=(0, n_train),
                               **options),
                 real_manifest(spec.registry, folder, "id", folders, label_of, "val",
                               per_class=(n_train, n_train + n_val), **options)]
        if entry.layout == "imagenet":
            parts.append(real_manifest(spec.registry, folder, "id", folders, label_of, "test", **options))
        else:
            parts.append(real_manifest(spec.registry, folder, "id", folders, label_of, "test",
                                       per_class=(n_train + n_val, None), **options))
        manifest = validate_manifest(pd.concat(parts, ignore_index=True), source=dataset)
        manifest.attrs["skipped"] = [s for p in parts for s in p.attrs["skipped"]]
    else:
        manifest = real_manifest(spec.registry, folder, spec.role, folders, label_of, "test", **options)
    subset = sorted(set(label_of.values())) if label_of else []
    roots = data_config.get("roots") or {}
    extras = {"class_subset": subset,
              "source": {"registry": spec.registry, "folder": str(folder),
                         "origin": "data.roots" if roots.get(spec.registry) else "download",
                         "classes_kept": None if folders is None else len(folders),
                         "domains": list(spec.domains) if spec.domains else None}}
    return manifest, extras


if __name__ == "__main__":  # python -m deltaenergy.data.real NAME [NAME ...]: fetch into resources/downloads
    for arg in sys.argv[1:] or sorted(n for n, e in REAL_DATASETS.items() if not e.manual):
        print(json.dumps(fetch_dataset(arg), indent=2))

