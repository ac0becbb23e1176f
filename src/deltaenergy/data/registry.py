"""Registry of the paper's real datasets: where each comes from, how it is packed and laid out, and how big
it is. Import-light (no image or model code): the workflow reads it while parsing.

Conventions:

- ``files``: the source archive(s) as :class:`deltaenergy.data.sources.RemoteFile` (mirrors in order).
  ``digest`` is the published checksum (``"sha256:<hex>"``, or ``"md5:<hex>"`` where only an MD5 sum is
  published), or ``None`` where none is published: then the first download records its SHA-256 in
  ``<downloads>/checksums.lock`` (trust on first use, printed loudly) and every later download is
  verified against that record (:mod:`deltaenergy.data.real`). Manual datasets have no files.
- ``reference_md5``: for a file without a published digest, an MD5 that third-party loaders pin for it
  (one source, not the publisher): the first download is compared with it and the result printed with
  the trust-on-first-use record; a difference is reported, not fatal.
- ``member``: the folder inside the archive that becomes the dataset folder (``None`` = the archive root).
- ``layout``: one of :data:`LAYOUTS`; ``counts`` the exact numbers a complete copy has (keys per layout
  in :data:`LAYOUTS`). A config's ``data.counts.<name>`` replaces them (miniature tests; a re-released
  dataset).
- URLs are the ones the dataset authors (or the benchmark code the paper follows) document; none is
  guessed. Google Drive files are reached through Drive's direct-download endpoint with the file id the
  benchmark's own download script uses; Drive may answer with a quota or warning page instead, which the
  fetch detects (see README: bring your own archive).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from deltaenergy.data.sources import RemoteFile, override_files

LAYOUTS = {
    "imagenet": ("classes", "train", "val"),
    "class_folders": ("classes", "images"),
    "domains": ("domains", "classes", "images"),
    "image_tree": ("images",),
}
"""Layout kinds and the count keys each validates.

- ``imagenet``: ``train/<wnid>/<image>`` and ``val/<wnid>/<image>`` (class-folder val), or a flat
  ``val/<image>`` with labels from ``LOC_val_solution.csv`` or the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (see :mod:`deltaenergy.data.real`). ``classes`` = class
  folders of ``train``; ``train``/``val`` = images.
- ``class_folders``: ``<class>/<image>``; ``classes`` = folders, ``images`` = images in them.
- ``domains``: ``<domain>/<class>/<image>``; every domain has the same ``classes`` folders.
- ``image_tree``: images at any depth (OOD sets whose folders carry no labels).
"""


@dataclass(frozen=True)
class RealDataset:
    """One real dataset (see the module docstring for the conventions)."""

    name: str
    title: str
    homepage: str
    licence: str
    files: tuple[RemoteFile, ...]
    member: str | None
    layout: str
    counts: dict
    manual: bool = False
    notes: str = ""
    reference_md5: str | None = None
    extra: dict = field(default_factory=dict)


def _drive_urls(file_id: str) -> tuple[str, ...]:
    """A Google Drive file: the direct-download endpoint (no interstitial page), then the classic link."""
    return (f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
            f"https://drive.google.com/uc?export=download&id={file_id}")


def _drive(file_id: str, name: str, digest: str | None) -> RemoteFile:
    return RemoteFile(name, _drive_urls(file_id), digest)


_MOS = "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/"
# reference_md5 of the MOS archives: as a third-party torchvision-style loader (MOSSUN, MOSPlaces365,
# MOSiNaturalist classes) pins them.
_MOS_NOTE = ("The 10,000-image subset of Huang & Li (MOS, CVPR 2021) with classes overlapping ImageNet-1k "
             "removed; MOS publishes no checksum. Its folder holds one sub-folder of images.")
_MOS_LICENCE = ("No licence stated by the MOS authors; the images keep the terms of their source dataset "
                "({}). Research use.")
_OPENOOD_NOTE = ("OpenOOD v1.5 (Zhang et al. 2023) packs this set as <name>.zip on Google Drive (file id from "
                 "its scripts/download/download.py); no checksum is published. Count as reported by OpenOOD "
                 "v1.5's ImageNet-1k benchmark.")

REAL_DATASETS: dict[str, RealDataset] = {
    d.name: d
    for d in (
        RealDataset(
            "imagenet1k", "ImageNet-1k (ILSVRC-2012)", "https://www.image-net.org/download.php",
            "ImageNet terms of access: non-commercial research and education only; download it yourself "
            "after agreeing to them.",
            (), None, "imagenet", {"classes": 1000, "train": 1_281_167, "val": 50_000}, manual=True,
            notes="Read-only from data.roots.imagenet1k (a folder with train/ and val/); never downloaded.",
        ),
        RealDataset(
            "inaturalist", "iNaturalist (MOS OOD subset)", "https://github.com/deeplearning-wisc/large_scale_ood",
            _MOS_LICENCE.format("iNaturalist 2017: images under their photographers' licences"),
            (RemoteFile("iNaturalist.tar.gz", (_MOS + "iNaturalist.tar.gz",), None),),
            "iNaturalist", "image_tree", {"images": 10_000}, notes=_MOS_NOTE,
            reference_md5="5be6ea8aa027d7b631916427b32cb335",
        ),
        RealDataset(
            "sun", "SUN (MOS OOD subset)", "https://github.com/deeplearning-wisc/large_scale_ood",
            _MOS_LICENCE.format("SUN database: research use"),
            (RemoteFile("SUN.tar.gz", (_MOS + "SUN.tar.gz",), None),),
            "SUN", "image_tree", {"images": 10_000}, notes=_MOS_NOTE,
            reference_md5="8469c3ada62211477954ec1be53b12d0",
        ),
        RealDataset(
            "places", "Places (MOS OOD subset)", "https://github.com/deeplearning-wisc/large_scale_ood",
            _MOS_LICENCE.format("Places365: non-commercial research and education"),
            (RemoteFile("Places.tar.gz", (_MOS + "Places.tar.gz",), None),),
            "Places", "image_tree", {"images": 10_000}, notes=_MOS_NOTE,
            reference_md5="b5cb5eba2754ae2a28beea8718db699a",
        ),
        # MD5 as torchvision's DTD pins it for this URL.
        RealDataset(
            "textures", "Describable Textures Dataset (DTD) r1.0.1", "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
            "Made available by its authors for research purposes (see the homepage).",
            (RemoteFile("dtd-r1.0.1.tar.gz", ("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
                        "md5:fff73e5086ae6bdbea199a49dfb8a4c1"),),
            "dtd/images", "class_folders", {"classes": 47, "images": 5_640},
        ),
        # Hugging Face hosts the authors' own tarball; the S3 bucket is the one their imagenetv2_pytorch loader uses.
        RealDataset(
            "imagenet_v2", "ImageNetV2 matched-frequency", "https://github.com/modestyachts/ImageNetV2",
            "MIT licence (release); images collected from Flickr like ImageNet's, research use.",
            (RemoteFile("imagenetv2-matched-frequency.tar.gz", (
                "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
                "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
            ), None),),
            "imagenetv2-matched-frequency-format-val", "class_folders", {"classes": 1000, "images": 10_000},
            notes="Class folders are named 0..999: the class index in the standard (sorted wnid) order.",
        ),
        RealDataset(
            "imagenet_sketch", "ImageNet-Sketch", "https://github.com/HaohanWang/ImageNet-Sketch",
            "MIT licence (release); images found by Google Image search, research use.",
            (RemoteFile("ImageNet-Sketch.zip", (
                "https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
                "https://huggingface.co/datasets/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
                *_drive_urls("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA"),  # the authors' README link
            ), None),),
            "sketch", "class_folders", {"classes": 1000, "images": 50_889},
            notes="The authors' release is a zip on Google Drive; Hugging Face hosts the same zip.",
        ),
        RealDataset(
            "imagenet_a", "ImageNet-A", "https://github.com/hendrycks/natural-adv-examples",
            "MIT licence (release); web images, research use.",
            (RemoteFile("imagenet-a.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",), None),),
            "imagenet-a", "class_folders", {"classes": 200, "images": 7_500},
            notes="200 of the 1000 ImageNet classes (wnid folders); evaluated 200-way and 1000-way.",
        ),
        RealDataset(
            "imagenet_r", "ImageNet-R (renditions)", "https://github.com/hendrycks/imagenet-r",
            "MIT licence (release); web images, research use.",
            (RemoteFile("imagenet-r.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",), None),),
            "imagenet-r", "class_folders", {"classes": 200, "images": 30_000},
            notes="200 of the 1000 ImageNet classes (wnid folders); evaluated 200-way and 1000-way.",
        ),
        # CoOp's DATASETS.md link, then torchvision's Google Drive copy; MD5 as torchvision's Caltech101 pins it
        # for both. The authors now publish
        # it inside caltech-101.zip (https://data.caltech.edu/records/mzrjq-6wc02): bring that inner tar.gz
        # as data.archives.caltech101 if the old link is down. 9,144 images = CoOp's 8,242 split images +
        # Faces_easy (435) + BACKGROUND_Google (467).
        RealDataset(
            "caltech101", "Caltech-101", "https://data.caltech.edu/records/mzrjq-6wc02",
            "CC BY 4.0 (Caltech data record).",
            (RemoteFile("101_ObjectCategories.tar.gz",
                        ("http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz",
                         *_drive_urls("137RyRjvTBkBiIfeYBNZBtViDHQ6_Ewsp")),
                        "md5:b224c7392d521a49829488ab0f1120d9"),),
            "101_ObjectCategories", "class_folders", {"classes": 102, "images": 9_144},
            notes="102 folders: 101 categories + BACKGROUND_Google (never used as a class).",
        ),
        # MD5 as torchvision's Food101 pins it for this URL.
        RealDataset(
            "food101", "Food-101", "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
            "Images from foodspotting.com under their terms (fair use); research use (see the homepage).",
            (RemoteFile("food-101.tar.gz", ("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",),
                        "md5:85eeb15f3717b99a5da872d97d918f87"),),
            "food-101/images", "class_folders", {"classes": 101, "images": 101_000},
        ),
        # DomainBed's scripts/download.py: Drive file 1JFr8f80... (a zip whose top folder is kfold/).
        RealDataset(
            "pacs", "PACS", "https://domaingeneralization.github.io/",
            "Research use (Li et al., ICCV 2017); images keep their sources' terms.",
            (_drive("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS.zip", None),),
            "kfold", "domains", {"domains": 4, "classes": 7, "images": 9_991},
            notes="Domains art_painting, cartoon, photo, sketch (sketch images are PNG).",
        ),
        # DomainBed's scripts/download.py: Drive file 1skwblH1... (VLCS.tar.gz). No publisher checksum; third-party
        # DomainBed loaders pin the MD5 below (reference only).
        RealDataset(
            "vlcs", "VLCS", "https://github.com/facebookresearch/DomainBed",
            "Research use; images keep the terms of PASCAL VOC 2007, LabelMe, Caltech-101 and SUN09.",
            (_drive("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", "VLCS.tar.gz", None),),
            "VLCS", "domains", {"domains": 4, "classes": 5, "images": 10_729},
            notes="Domains Caltech101, LabelMe, SUN09, VOC2007.", reference_md5="8870171eba660927d9668f4e515928e4",
        ),
        RealDataset(
            "ssb_hard", "SSB-hard (OpenOOD v1.5 near-OOD)", "https://github.com/Jingkang50/OpenOOD",
            "Images from ImageNet-21k: ImageNet terms of access (non-commercial research).",
            (_drive("1PzkA-WGG8Z18h0ooL_pDdz9cO-DCIouE", "ssb_hard.zip", None),),
            None, "image_tree", {"images": 49_000}, notes=_OPENOOD_NOTE.replace("<name>", "ssb_hard"),
        ),
        RealDataset(
            "ninco", "NINCO (OpenOOD v1.5 near-OOD)", "https://github.com/j-cb/NINCO",
            "See the NINCO repository (per-image source licences are listed there).",
            (_drive("1Z82cmvIB0eghTehxOGP5VTdLt7OD3nk6", "ninco.zip", None),),
            None, "image_tree", {"images": 5_879}, notes=_OPENOOD_NOTE.replace("<name>", "ninco"),
        ),
        RealDataset(
            "openimage_o", "OpenImage-O (OpenOOD v1.5 far-OOD)", "https://github.com/Jingkang50/OpenOOD",
            "Open Images: images CC BY 2.0 (per image), annotations CC BY 4.0.",
            (_drive("1VUFXnB_z70uHfdgJG2E_pjYOcEgqM7tE", "openimage_o.zip", None),),
            None, "image_tree", {"images": 15_869}, notes=_OPENOOD_NOTE.replace("<name>", "openimage_o"),
        ),
    )
}  # fmt: skip


def real_dataset(name: str) -> RealDataset:
    """Registry entry ``name``; ``$DELTAENERGY_SOURCES_OVERRIDE`` (tests: a JSON table ``{name: [{"name",
    "urls", "digest"}, ...]}``, the same table as for the demo's sources) replaces its files."""
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown real dataset '{name}'; known: {sorted(REAL_DATASETS)}")
    entry = REAL_DATASETS[name]
    replaced = override_files(name)
    if replaced:
        files, override = replaced
        entry = replace(entry, files=files, extra={**entry.extra, "override": override})
    return entry


def expected_counts(name: str, counts: dict | None = None) -> dict:
    """The registry's exact counts of ``name``, with ``counts`` (``data.counts.<name>``) replacing keys."""
    entry = REAL_DATASETS[name]
    allowed = LAYOUTS[entry.layout]
    unknown = sorted(set(counts or {}) - set(allowed))
    if unknown:
        raise ValueError(f"data.counts.{name}: unknown key(s) {unknown}; a '{entry.layout}' dataset counts {list(allowed)}")
    return {**entry.counts, **(counts or {})}
