"""Registry of backbones: configs name an entry, ``build_backbone`` constructs it.

A backbone's module is imported when the backbone is first built (``BACKBONE_MODULES``), not when this
package is: open_clip (with torchvision) costs seconds to import, and jobs that build the stand-in never
need it.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .base import Backbone, Tokens

BACKBONES: dict[str, Callable[..., Backbone]] = {}
"""Factories registered so far (a module registers its backbone when imported)."""

BACKBONE_MODULES = {"openclip": ".openclip", "standin-conse": ".standin"}
"""The module (relative to this package) that registers each known backbone."""


def register_backbone(name: str):
    """Class decorator adding a backbone factory to ``BACKBONES`` under ``name``."""

    def wrap(factory):
        BACKBONES[name] = factory
        return factory

    return wrap


def build_backbone(name: str, **options) -> Backbone:
    """Build the backbone ``name`` (eval mode, frozen), importing its module on first use. Unknown names
    raise with the known ones."""
    if name not in BACKBONES and name in BACKBONE_MODULES:
        importlib.import_module(BACKBONE_MODULES[name], __name__)
    if name not in BACKBONES:
        raise KeyError(f"backbone.name: unknown backbone {name!r}; known: {sorted({*BACKBONES, *BACKBONE_MODULES})}")
    model = BACKBONES[name](**options)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


__all__ = ["BACKBONES", "BACKBONE_MODULES", "Backbone", "Tokens", "build_backbone", "register_backbone"]
