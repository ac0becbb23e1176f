"""ID class names per study (prompt wording, in label order). Import-light: the workflow's config check
reads it without loading image or model code (a registry protocol imports its class lists on demand)."""

FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot"]

ID_CLASSES = {"fashion_mnist": FASHION_MNIST_CLASSES}


def id_class_names(data: dict) -> list[str]:
    """The ID class names of a validated ``data`` config section, in label order.

    ``kind: demo``: the static list of ``data.id``. ``kind: registry``: the ID classes of ``data.protocol``
    (deltaenergy.data.protocols): imagenet1k's 1000 classes, the seeded hard_split's ID share, MCM's
    ImageNet-10, or the cross_dataset ID dataset's classes.
    """
    if data["kind"] == "demo":
        return list(ID_CLASSES[data["id"]])
    from . import protocols

    protocol = data["protocol"]
    if protocol["name"] == "cross_dataset":
        return list(protocols.cross_dataset(protocol["dataset"], protocol["held_out"])["classes"])
    wnids, names = protocols.imagenet_classes()
    if protocol["name"] == "hard_split":
        return [names[i] for i in protocols.hard_split(protocol["seed"], protocol["fraction"])[0]]
    if protocol["name"] == "imagenet10_20":
        ten = set(protocols.imagenet10_20()[0])
        return [name for wnid, name in zip(wnids, names) if wnid in ten]
    return names
