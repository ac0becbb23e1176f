"""Datasets, manifests and few-shot subsets. Knows nothing of models (see docs/architecture.md)."""

from deltaenergy.data.demo import DEMO_DATASETS, FASHION_MNIST_CLASSES, build_demo_dataset
from deltaenergy.data.fewshot import fewshot_indices
from deltaenergy.data.images import load_image
from deltaenergy.data.manifest import MANIFEST_COLUMNS, read_manifest, validate_manifest, write_manifest

__all__ = [
    "DEMO_DATASETS",
    "FASHION_MNIST_CLASSES",
    "MANIFEST_COLUMNS",
    "build_demo_dataset",
    "fewshot_indices",
    "load_image",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]
