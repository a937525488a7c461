"""Opening input images: one place for the checks every stage needs."""

from __future__ import annotations

import math
from pathlib import Path


def open_rgb(path: str | None, max_pixels: int | None = None, min_pixels: int = 1,
             resize_to: tuple[int, int] | None = None):
    """An RGB image, scaled into [min_pixels, max_pixels] keeping its aspect ratio when a cap is
    given; first resized to exactly `resize_to` (bicubic, as PIL's `resize` default) when given.
    Raises with a readable reason for a missing, empty or undecodable file."""
    from PIL import Image

    with _open(path) as image:
        if max_pixels and not resize_to:
            image.draft("RGB", _fit(image.size, max_pixels, min_pixels))  # JPEG: decode at reduced size
        image = _to_rgb(image)
    if resize_to and image.size != tuple(resize_to):
        image = image.resize(tuple(resize_to), Image.Resampling.BICUBIC)
    if not max_pixels:
        return image
    size = _fit(image.size, max_pixels, min_pixels)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


def image_size(path: str | None) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with _open(path) as image:
        return image.size


def _open(path: str | None):
    from PIL import Image

    if not path:
        raise ValueError("no image path given")
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return Image.open(path)


def _to_rgb(image):
    """8-bit RGB from any mode: 16-bit grey is scaled (a plain convert would clip it to white),
    transparency is flattened onto white (a plain convert would show the hidden pixels)."""
    from PIL import Image

    if image.mode.startswith("I"):
        image = image.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _fit(size: tuple[int, int], max_pixels: int, min_pixels: int) -> tuple[int, int]:
    w, h = size
    if min_pixels <= w * h <= max_pixels:
        return size
    scale = math.sqrt((max_pixels if w * h > max_pixels else min_pixels) / (w * h))
    return max(1, round(w * scale)), max(1, round(h * scale))
