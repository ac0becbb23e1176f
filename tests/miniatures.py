"""Miniatures of every real dataset in its real on-disk and archive format, served on 127.0.0.1.

Each miniature keeps the real archive type (tar, tar.gz, zip), the real top folder (the registry's
``member``), real folder names (wnids, ImageNetV2's class indices, DTD textures, Caltech101 and Food-101
categories, PACS/VLCS domains and classes), real file types (``.JPEG``/``.jpeg``/``.jpg``, PACS sketches
``.png``) and real companion files (DTD's ``labels/``, Food-101's ``meta/classes.txt``, ImageNet-A/R's
``README.txt``), with a few tiny images. Only the sizes differ: :attr:`Miniatures.counts` is the
``data.counts`` table that makes the layout validation expect them.

The inner layout of OpenOOD's three zips is not documented; here they hold ``<name>/<folder>/<image>``
(read as an image tree at any depth, as the registry does for them).

:func:`serve` publishes each archive at the path (and query) of the registry's first URL on a
:class:`fault_server.FaultServer`; :func:`write_override` writes the ``$DELTAENERGY_SOURCES_OVERRIDE``
table (URLs on that server, SHA-256 of each archive, or ``None`` for the datasets to fetch by trust on
first use). ImageNet-1k is a folder (it is never downloaded): ``imagenet1k/`` with class-folder
``val/``, and :func:`flat_val_imagenet` makes the flat-val variants.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from deltaenergy.data import protocols
from deltaenergy.data.registry import REAL_DATASETS
from fault_server import FaultServer

WNIDS = protocols.imagenet_wnids()
A_WNIDS = protocols.imagenet_a_r_wnids("imagenet_a")
R_WNIDS = protocols.imagenet_a_r_wnids("imagenet_r")
MINI_WNIDS = sorted({*protocols.IMAGENET10, *protocols.IMAGENET20, *A_WNIDS[:2], *R_WNIDS[:2]})
"""ImageNet classes present in the ImageNet-1k, -V2 and -Sketch miniatures (ImageNet-A/R hold all 200)."""

TEXTURES = ("banded", "blotchy", "braided")
CALTECH = ("BACKGROUND_Google", "Faces", "Faces_easy", "accordion", "airplanes", "chair", "dalmatian",
           "elephant", "emu", "pizza")  # fmt: skip
FOOD = ("apple_pie", "hot_dog", "pizza")
OPENOOD_FOLDERS = {"ssb_hard": ("n00440747", "n00470682"), "ninco": ("Caracal_caracal", "ice_cream_cone"),
                   "openimage_o": ("images",)}  # fmt: skip


@dataclass
class Miniatures:
    """``archives[name]``: the built archive file; ``counts[name]``: its ``data.counts`` entry;
    ``imagenet``: the ImageNet-1k folder."""

    root: Path
    archives: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)
    imagenet: Path | None = None

    def sha256(self, name: str) -> str:
        return "sha256:" + hashlib.sha256(self.archives[name].read_bytes()).hexdigest()

    def data_config(self) -> dict:
        """``data.roots`` (ImageNet-1k) and ``data.counts`` of a config reading these miniatures."""
        return {"roots": {"imagenet1k": str(self.imagenet)}, "counts": json.loads(json.dumps(self.counts))}


def _image(seed: int, suffix: str) -> bytes:
    """A tiny 8x8 RGB image (JPEG, or PNG for '.png') whose colours depend on ``seed``."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG" if suffix.lower() == ".png" else "JPEG", quality=90)
    return buf.getvalue()


class _Tree:
    """Files to pack: {relative path: bytes}; images get distinct contents."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def image(self, path: str) -> None:
        self.files[path] = _image(len(self.files) + 7919 * len(path), Path(path).suffix)

    def images(self, folder: str, n: int, pattern: str) -> None:
        for k in range(1, n + 1):
            self.image(f"{folder}/{pattern.format(k)}")


def _pack(tree: _Tree, path: Path) -> Path:
    """Pack as the name says: .zip, .tar.gz or plain .tar (folders as their own members, like the real ones)."""
    folders = sorted({str(p) for f in tree.files for p in Path(f).parents if str(p) != "."})
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for d in folders:
                zf.writestr(d + "/", b"")
            for name, data in sorted(tree.files.items()):
                zf.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz" if path.name.endswith(".tar.gz") else "w") as tar:
        for d in folders:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in sorted(tree.files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def build(root: Path, train_per_class: int = 4, val_per_class: int = 2) -> Miniatures:
    """Build every miniature under ``root`` (archives in ``root/archives``, ImageNet in ``root/imagenet1k``)."""
    mini = Miniatures(root)
    (root / "archives").mkdir(parents=True, exist_ok=True)

    def add(name: str, tree: _Tree, counts: dict) -> None:
        (remote,) = REAL_DATASETS[name].files
        mini.archives[name] = _pack(tree, root / "archives" / remote.name)
        mini.counts[name] = counts

    for name, top in (("inaturalist", "iNaturalist"), ("sun", "SUN"), ("places", "Places")):
        t = _Tree()
        t.images(f"{top}/images", 4, "{:032x}.jpg")
        add(name, t, {"images": 4})
    t = _Tree()
    for texture in TEXTURES:
        t.images(f"dtd/images/{texture}", 2, texture + "_{:04d}.jpg")
    t.files["dtd/labels/labels_joint_anno.txt"] = "".join(f"{x}/{x}_0001.jpg {x}\n" for x in TEXTURES).encode()
    add("textures", t, {"classes": len(TEXTURES), "images": 2 * len(TEXTURES)})
    t = _Tree()
    for wnid in MINI_WNIDS:
        t.images(f"imagenetv2-matched-frequency-format-val/{WNIDS.index(wnid)}", 1, wnid + "{:02d}.jpeg")
    add("imagenet_v2", t, {"classes": len(MINI_WNIDS), "images": len(MINI_WNIDS)})
    t = _Tree()
    for wnid in MINI_WNIDS:
        t.images(f"sketch/{wnid}", 1, "sketch_{}.JPEG")
    add("imagenet_sketch", t, {"classes": len(MINI_WNIDS), "images": len(MINI_WNIDS)})
    for name, top, wnids in (("imagenet_a", "imagenet-a", A_WNIDS), ("imagenet_r", "imagenet-r", R_WNIDS)):
        t = _Tree()
        for wnid in wnids:
            t.images(f"{top}/{wnid}", 1, "0.000_{:04d}.jpg")
        t.files[f"{top}/README.txt"] = b"miniature\n"
        add(name, t, {"classes": 200, "images": 200})
    t = _Tree()
    for folder in CALTECH:
        t.images(f"101_ObjectCategories/{folder}", 2, "image_{:04d}.jpg")
    add("caltech101", t, {"classes": len(CALTECH), "images": 2 * len(CALTECH)})
    t = _Tree()
    for dish in FOOD:
        t.images(f"food-101/images/{dish}", 2, "{}0001.jpg")
    t.files["food-101/meta/classes.txt"] = "".join(f"{d}\n" for d in FOOD).encode()
    add("food101", t, {"classes": len(FOOD), "images": 2 * len(FOOD)})
    for name, top in (("pacs", "kfold"), ("vlcs", "VLCS")):
        domains, classes = protocols.DOMAINS[name]
        t = _Tree()
        for domain in domains:
            suffix = ".png" if domain == "sketch" else ".jpg"
            for c in classes:
                t.images(f"{top}/{domain}/{c}", 4, "pic_{:03d}" + suffix)
        add(name, t, {"domains": len(domains), "classes": len(classes), "images": 4 * len(domains) * len(classes)})
    for name, folders in OPENOOD_FOLDERS.items():
        t = _Tree()
        for folder in folders:
            t.images(f"{name}/{folder}", 2, folder + "_{:05d}.jpg")
        add(name, t, {"images": 2 * len(folders)})

    imagenet = root / "imagenet1k"
    val_index = 0
    for wnid in MINI_WNIDS:
        for folder, n, name in (("train", train_per_class, wnid + "_{}.JPEG"), ("val", val_per_class, None)):
            (imagenet / folder / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                if name is None:
                    val_index += 1
                    file = f"ILSVRC2012_val_{val_index:08d}.JPEG"
                else:
                    file = name.format(k)
                (imagenet / folder / wnid / file).write_bytes(_image(zlib.crc32(f"{folder}/{wnid}/{k}".encode()), ".JPEG"))
    mini.imagenet = imagenet
    mini.counts["imagenet1k"] = {"classes": len(MINI_WNIDS), "train": train_per_class * len(MINI_WNIDS),
                                 "val": val_per_class * len(MINI_WNIDS)}
    return mini


def flat_val_imagenet(mini: Miniatures, target: Path, form: str) -> Path:
    """A copy of the ImageNet miniature with a flat ``val/`` and its labels in ``form``: 'csv'
    (Kaggle's LOC_val_solution.csv) or 'devkit' (ILSVRC2012_devkit_t12: ground truth + meta.mat, whose
    ILSVRC2012_IDs are deliberately not in wnid order, as in the real devkit)."""
    import scipy.io

    shutil.copytree(mini.imagenet / "train", target / "train")
    (target / "val").mkdir(parents=True)
    labels = {}
    for wnid_dir in sorted((mini.imagenet / "val").iterdir()):
        for image in sorted(wnid_dir.iterdir()):
            shutil.copyfile(image, target / "val" / image.name)
            labels[image.stem] = wnid_dir.name
    order = sorted(labels)
    if form == "csv":
        lines = ["ImageId,PredictionString"] + [f"{i},{labels[i]} 1 2 3 4 {labels[i]} 5 6 7 8" for i in reversed(order)]
        (target / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
        return target
    ilsvrc_id = {w: 1000 - i for i, w in enumerate(WNIDS)}  # reversed: ID order is not wnid order
    data = target / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ilsvrc_id[labels[i]]}\n" for i in order))
    synsets = np.array([(ilsvrc_id[w], w, w, "gloss", 0) for w in WNIDS],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
                              ("num_children", "O")])
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    return target


def url_path(url: str) -> str:
    """The request path (with query) a server on 127.0.0.1 must answer for ``url``."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def serve(mini: Miniatures) -> FaultServer:
    """A (not yet started) server publishing each archive at its registry URL's path."""
    server = FaultServer()
    for name, archive in mini.archives.items():
        (remote,) = REAL_DATASETS[name].files
        server.files[url_path(remote.urls[0])] = archive.read_bytes()
    return server


def write_override(path: Path, mini: Miniatures, server: FaultServer, first_use: tuple[str, ...] = (),
                   digests: dict | None = None) -> Path:
    """The ``$DELTAENERGY_SOURCES_OVERRIDE`` table: every archive from ``server`` with its SHA-256, except
    ``first_use`` datasets (digest None: trust on first use) and ``digests`` (explicit, e.g. wrong ones)."""
    table = {}
    for name in mini.archives:
        (remote,) = REAL_DATASETS[name].files
        digest = None if name in first_use else (digests or {}).get(name, mini.sha256(name))
        table[name] = [{"name": remote.name, "urls": [server.url(url_path(remote.urls[0]))], "digest": digest}]
    path.write_text(json.dumps(table, indent=2))
    return path
