"""Safe image loading: every image leaves here as a fully decoded 8-bit RGB ``PIL.Image``.

Conventions: transparency (RGBA, LA, PA, palette with a transparent colour) is composited on white;
16/32-bit integer greyscale (``I;16*``, ``I``) is scaled from 0..65535 to 0..255; float (``F``) is
clipped to 0..255; CMYK/YCbCr/LAB/HSV use PIL's own conversion (CMYK: each of R, G, B is
(255 − C)(255 − K) / 255). EXIF orientation is not applied (as in the CLIP/ImageNet reference
pipelines, which open and ``convert("RGB")`` only).

``on_bad_image`` (config ``data.on_bad_image``): ``stop`` raises on the first unreadable file (truncated,
not an image, decompression bomb), naming it; ``skip`` leaves the file out and records it, so the
builder can write the count and the files into the manifest's sidecar (``<manifest>.json``).
"""

from __future__ import annotations

import os
import warnings
import zlib

import numpy as np
from PIL import Image

MAX_PIXELS = 89_478_485
"""Largest accepted width × height: PIL's own decompression-bomb threshold (about 0.25 GB as RGB)."""

ON_BAD_IMAGE = ("stop", "skip")
"""Values of ``data.on_bad_image``; the first is the default."""

_FIX = "delete or re-fetch the file (for a download, re-run its rule so the checksum is verified)"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to 8-bit RGB (alpha composited on white)."""
    mode = im.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(mode)
    if {"A", "a"} & set(im.getbands()):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I"):
        grey = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert ``path`` to RGB.

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` (naming the file and the fix)
    if it is larger than ``max_pixels`` (a decompression bomb), truncated or not an image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides
            im = Image.open(path)
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise Image.DecompressionBombError(
                    f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            im.load()
            return _to_rgb(im)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image not found: {path}; check the manifest's path column") from err
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"unreadable image {path}: decompression bomb refused ({err}); "
            f"drop the file or pass a larger max_pixels if it is trusted"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as err:
        raise ValueError(f"unreadable image {path}: {err}; {_FIX}") from err


def load_image_or_skip(
    path: str | os.PathLike, on_bad_image: str, skipped: list[dict], max_pixels: int = MAX_PIXELS
) -> Image.Image | None:
    """:func:`load_image`, or, with ``on_bad_image='skip'``, None for an unreadable file after appending
    ``{"path", "error"}`` to ``skipped``. A missing file always raises (it is a wrong path, not bad data)."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"data.on_bad_image: {on_bad_image!r} is not one of {ON_BAD_IMAGE}")
    try:
        return load_image(path, max_pixels)
    except ValueError as err:
        if on_bad_image == "stop":
            raise ValueError(f"{err} (data.on_bad_image: stop; set it to skip to leave such files out)") from err
        skipped.append({"path": str(path), "error": str(err)})
        return None
