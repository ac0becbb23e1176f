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
