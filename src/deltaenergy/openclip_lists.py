"""open_clip's ImageNet class names and CLIP's 80 prompt templates, read without importing open_clip.

``open_clip/zero_shot_metadata.py`` holds plain lists, but importing it runs open_clip's package
``__init__``, which imports torchvision and every model definition (~2 s of each job that only needs the
lists: feature extraction's ConSE labels, the zero-shot ensemble). This loads that one file by path.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


@functools.cache
def zero_shot_metadata() -> ModuleType:
    """The module ``open_clip.zero_shot_metadata`` (``IMAGENET_CLASSNAMES``, ``OPENAI_IMAGENET_TEMPLATES``)."""
    if "open_clip" in sys.modules:  # already paid for
        return importlib.import_module("open_clip.zero_shot_metadata")
    package = importlib.util.find_spec("open_clip")
    if package is None or package.origin is None:
        raise ModuleNotFoundError("open_clip_torch is not installed; install the project (pip install -e .)")
    spec = importlib.util.spec_from_file_location("deltaenergy._open_clip_zero_shot_metadata",
                                                  Path(package.origin).parent / "zero_shot_metadata.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
