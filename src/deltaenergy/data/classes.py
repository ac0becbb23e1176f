"""ID class names per study (prompt wording, in label order). Import-light: the workflow's config check
reads it without loading image or model code (a registry protocol imports its class lists on demand)."""

FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot"]

ID_CLASSES = {"fashion_mnist": FASHION_MNIST_CLASSES}


def id_class_names(data: dict) -> list[str]:
    """The ID class names of a validated ``data`` config section, in label order.

    ``kind: demo``: the static list of ``data.id``. ``kind: registry``: the ID classes of ``data.protocol``
    (:func:`deltaenergy.data.real.id_classes`): imagenet1k's 1000 classes, the seeded hard_split's ID share,
    MCM's ImageNet-10, or the cross_dataset ID dataset's classes.
    """
    if data["kind"] == "demo":
        return list(ID_CLASSES[data["id"]])
    from .real import id_classes

    return id_classes(data)[1]


SUBSET_DATASETS = ("imagenet_a", "imagenet_r")
"""Datasets that cover only some ImageNet classes by design (their 200 wnids): classified among those."""


def class_subset(dataset: str, data: dict) -> list[int] | None:
    """The ID label indices ``dataset``'s images can have by protocol when fewer than all ID classes
    (ImageNet-A/R: their 200 wnids among the ID classes), else None. From the protocol, not from the
    folders present, so a miniature copy with few classes is evaluated like the real dataset."""
    if data["kind"] != "registry" or dataset not in SUBSET_DATASETS:
        return None
    from .protocols import imagenet_a_r_wnids
    from .real import id_classes

    ids = id_classes(data)[0]
    keep = set(imagenet_a_r_wnids(dataset))
    subset = [label for label, wnid in enumerate(ids) if wnid in keep]
    return subset if len(subset) < len(ids) else None
