"""Registry of backbones: configs name an entry, ``build_backbone`` constructs it."""

from __future__ import annotations

from typing import Callable

from .base import Backbone, Tokens

BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str):
    """Class decorator adding a backbone factory to ``BACKBONES`` under ``name``."""

    def wrap(factory):
        BACKBONES[name] = factory
        return factory

    return wrap


def build_backbone(name: str, **options) -> Backbone:
    """Build the backbone ``name`` (eval mode, frozen). Unknown names raise with the known ones."""
    if name not in BACKBONES:
        raise KeyError(f"backbone.name: unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    model = BACKBONES[name](**options)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


from . import openclip, standin  # noqa: E402,F401  (register "openclip" and "standin-conse")

__all__ = ["BACKBONES", "Backbone", "Tokens", "build_backbone", "register_backbone"]
