"""Opening input images: one place for the checks every stage needs, and the pixel ranges judges see."""

from __future__ import annotations

import io
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

# What an image may be given as: a path, encoded bytes, or a PIL image (typed loosely: PIL loads lazily).
ImageInput = Union[str, Path, bytes, Any]


@dataclass(frozen=True)
class PixelRange:
    """Where an image's pixel count is brought before a judge sees it. `factor` 1: the aspect ratio
    kept exactly; a larger factor: both sides rounded to multiples of it, as qwen-vl-utils'
    `smart_resize` does (the references' own preprocessing)."""

    min_pixels: int
    max_pixels: int
    factor: int = 1

    def size(self, width: int, height: int) -> tuple[int, int]:
        if self.factor > 1:
            h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
            return w, h
        return _fit((width, height), self.max_pixels, self.min_pixels)


# qwen-vl-utils' `fetch_image` defaults (IMAGE_MIN/MAX_TOKEN_NUM 4 / 16384 at patch 14, merge 2): what
# GEdit-Bench's Qwen2.5-VL judge and EditScore's judges call through `process_vision_info`.
QWEN_VL_UTILS = PixelRange(4 * 28 * 28, 16384 * 28 * 28, 28)
MAX_RATIO = 200


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils 0.0.14 `vision_process.smart_resize` (Apache-2.0), unchanged in effect: both sides
    multiples of `factor`, the pixel count within [min_pixels, max_pixels], the aspect ratio kept as
    closely as that allows. Returns (height, width)."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, "
                         f"got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def open_rgb(path: ImageInput | None, pixels: PixelRange | None = None, resize_to: tuple[int, int] | None = None):
    """An RGB image, first resized to exactly `resize_to` when given (PIL's default resampling, bicubic,
    as the references' `resize(size)` calls), then brought into `pixels` (bicubic, as qwen-vl-utils).
    Raises with a readable reason for a missing, empty or undecodable file."""
    from PIL import Image

    with _open(path) as image:
        if pixels and pixels.factor == 1 and not resize_to:
            image.draft("RGB", pixels.size(*image.size))  # JPEG: decode at reduced size
        image = _to_rgb(image)
    if resize_to and image.size != tuple(resize_to):
        image = image.resize(tuple(resize_to), Image.Resampling.BICUBIC)
    if not pixels:
        return image
    size = pixels.size(*image.size)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


def image_size(path: ImageInput | None) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with _open(path) as image:
        return image.size


def _open(path: ImageInput | None):
    """A context manager over the image: a file (a path), encoded bytes (PNG, JPEG... as a request
    sends them) or a PIL image already in memory (left open: it is the caller's)."""
    from PIL import Image

    if isinstance(path, Image.Image):
        return nullcontext(path)
    if isinstance(path, (bytes, bytearray, memoryview)):
        if not path:
            raise ValueError("empty image bytes")
        return Image.open(io.BytesIO(path))
    if not path:
        raise ValueError("no image path given")
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return Image.open(path)


def _to_rgb(image):
    """8-bit RGB from any mode: 16-bit grey is scaled (a plain convert would clip it to white),
    transparency is flattened onto white (a plain convert would show the hidden pixels; qwen-vl-utils'
    `to_rgb` flattens RGBA onto white the same way)."""
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
