"""The real benchmarks' protocols as pure functions (class lists, splits, overlaps; no images, no models).

Class lists:

- ImageNet-1k: the standard 1000-class order is the sorted wnids (torchvision's ImageFolder order, the
  order of open_clip's ``IMAGENET_CLASSNAMES``). ``imagenet_wnids.txt``, ``imagenet_a_wnids.txt`` and
  ``imagenet_r_wnids.txt`` next to this module were generated once from timm 1.0.31 (PyPI), copying
  ``timm/data/_info/imagenet_synsets.txt``, ``imagenet_a_synsets.txt`` and ``imagenet_r_synsets.txt``
  (tests/test_real_data.py compares them with the installed timm when present).
- ImageNet-10 / ImageNet-20: MCM's lists (Ming et al., NeurIPS 2022, ``obtain_ImageNet{10,20}_classes``),
  in wnid order; class names from open_clip as for every ImageNet class.
- PACS / VLCS: DomainBed's folder names (domains and classes).

Overlap rule (cross-dataset OOD): a class folder of Caltech101, DTD or Food101 is removed when its images
show an ID class or a kind of it (WordNet hyponym), judged from the folder name: :data:`OOD_OVERLAP`.
Caltech101's ``BACKGROUND_Google`` (clutter, not a class) and ``Faces_easy`` (a duplicate of ``Faces``,
as CoOp drops it) are never used.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

_HERE = Path(__file__).parent

IMAGENET10 = ("n01530575", "n01641577", "n02107574", "n02123597", "n02389026",
              "n02422699", "n03095699", "n03417042", "n04285008", "n04552348")  # fmt: skip
"""MCM's ImageNet-10: brambling, bullfrog, Greater Swiss Mountain dog, Siamese cat, sorrel (horse), impala,
container ship, garbage truck, sports car, warplane."""

IMAGENET20 = ("n01630670", "n01631663", "n01632458", "n01693334", "n01697457", "n02114367", "n02120079",
              "n02132136", "n02317335", "n02391049", "n02782093", "n02917067", "n02951358", "n03773504",
              "n03785016", "n04147183", "n04252077", "n04266014", "n04310018", "n04389033")  # fmt: skip
"""MCM's ImageNet-20 (near-OOD for ImageNet-10): newts, salamander, lizard, crocodile, wolf, fox, bear,
starfish, zebra, balloon, bullet train, canoe, missile, moped, schooner, snowmobile, space shuttle,
steam locomotive, tank."""

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
VLCS_DOMAINS = ("Caltech101", "LabelMe", "SUN09", "VOC2007")
VLCS_CLASSES = ("bird", "car", "chair", "dog", "person")
DOMAINS = {"pacs": (PACS_DOMAINS, PACS_CLASSES), "vlcs": (VLCS_DOMAINS, VLCS_CLASSES)}

CROSS_DATASET_OOD = ("caltech101", "textures", "food101")
CALTECH101_NEVER = ("BACKGROUND_Google", "Faces_easy")

OOD_OVERLAP = {
    "caltech101": {
        "dog": ("dalmatian", "snoopy"), "elephant": ("elephant",), "guitar": ("electric_guitar",),
        "person": ("Faces", "buddha"), "bird": ("emu", "flamingo", "flamingo_head", "ibis", "pigeon", "rooster"),
        "car": ("car_side",), "chair": ("chair", "windsor_chair", "wheelchair"),
    },
    "textures": {},  # 47 texture words: none is an object class of PACS or VLCS
    "food101": {},  # 101 dishes: none is an ID class ('hot_dog' is a dish, not a dog)
}  # fmt: skip
"""Per OOD dataset: ID class -> its folders that show that class (removed when the class is ID).
giraffe, horse and house have no Caltech101 folder (okapi is a giraffid, not a giraffe; pagoda and minaret
are not houses)."""


def _lines(filename: str) -> list[str]:
    return (_HERE / filename).read_text().split()


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in the standard (sorted) order, without importing open_clip."""
    return _lines("imagenet_wnids.txt")


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from ..openclip_lists import zero_shot_metadata

    names = zero_shot_metadata().IMAGENET_CLASSNAMES
    wnids = imagenet_wnids()
    if len(wnids) != 1000 or len(names) != 1000:
        raise ValueError(f"ImageNet class lists: {len(wnids)} wnids, {len(names)} names; expected 1000")
    return tuple(wnids), tuple(names)


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(wnids, names) of ImageNet-1k in the standard order (names: open_clip's ``IMAGENET_CLASSNAMES``)."""
    wnids, names = _imagenet_classes()
    return list(wnids), list(names)


def imagenet_a_r_wnids(name: str) -> list[str]:
    """The 200 wnids of ``imagenet_a`` or ``imagenet_r`` (sorted, a subset of the 1000)."""
    if name not in ("imagenet_a", "imagenet_r"):
        raise ValueError(f"imagenet_a_r_wnids: {name!r} is not 'imagenet_a' or 'imagenet_r'")
    return _lines(f"{name}_wnids.txt")


def imagenet10_20() -> tuple[list[str], list[str]]:
    """(ImageNet-10 wnids, ImageNet-20 wnids), MCM's lists in wnid order."""
    return list(IMAGENET10), list(IMAGENET20)


def hard_split(seed: int, fraction: float = 0.4, n_classes: int = 1000) -> tuple[list[int], list[int]]:
    """(ID class indices, OOD class indices), both sorted: a seeded ``round(fraction * n_classes)`` of the
    classes are ID (``numpy.random.default_rng(seed).permutation``), the rest open-set OOD. Same seed,
    same split; another seed, another split."""
    if not 0 < fraction < 1:
        raise ValueError(f"hard_split: fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(int(seed)).permutation(n_classes)
    n_id = int(round(fraction * n_classes))
    return sorted(int(i) for i in order[:n_id]), sorted(int(i) for i in order[n_id:])


def ood_classes(ood_name: str, folders: list[str], id_classes: list[str]) -> list[str]:
    """``folders`` of OOD dataset ``ood_name`` minus those showing an ID class (:data:`OOD_OVERLAP`) and,
    for Caltech101, minus :data:`CALTECH101_NEVER`."""
    if ood_name not in OOD_OVERLAP:
        raise ValueError(f"no overlap list for OOD dataset '{ood_name}'; known: {sorted(OOD_OVERLAP)}")
    drop = {f for c in id_classes for f in OOD_OVERLAP[ood_name].get(c, ())}
    if ood_name == "caltech101":
        drop |= set(CALTECH101_NEVER)
    return [f for f in folders if f not in drop]


def cross_dataset(id_name: str, held_out: str) -> dict:
    """Leave-one-domain-out on ``pacs`` or ``vlcs``: ``{"train_domains", "held_out", "classes", "removed"}``
    where ``removed[ood]`` lists the folders each OOD dataset loses to :func:`ood_classes`."""
    if id_name not in DOMAINS:
        raise ValueError(f"cross_dataset: ID dataset {id_name!r} is not one of {sorted(DOMAINS)}")
    domains, classes = DOMAINS[id_name]
    if held_out not in domains:
        raise ValueError(f"cross_dataset: held-out domain {held_out!r} is not a {id_name} domain {list(domains)}")
    removed = {ood: sorted({f for c in classes for f in OOD_OVERLAP[ood].get(c, ())}) for ood in CROSS_DATASET_OOD}
    return {"train_domains": [d for d in domains if d != held_out], "held_out": held_out,
            "classes": list(classes), "removed": removed}


def known_folders(name: str) -> list[str] | None:
    """The class folder names registry dataset ``name`` may hold (layout validation), or None if open."""
    if name in ("imagenet1k", "imagenet_sketch"):
        return imagenet_wnids()
    if name in ("imagenet_a", "imagenet_r"):
        return imagenet_a_r_wnids(name)
    if name == "imagenet_v2":
        return [str(i) for i in range(1000)]
    if name in DOMAINS:
        return list(DOMAINS[name][1])
    return None
