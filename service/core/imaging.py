"""Uploaded image bytes -> the model's input: decode, limits, grayscale/colour, fit, invert, normalize.

Two steps so the caller can choose where the work runs: ``open_image`` reads only the header and
enforces the pixel limit before any pixel is decoded; ``render`` decodes and brings the image to
the bundle's input (uint8, channels first). ``Normalizer`` turns a uint8 batch into float32; it is
defined once, in ``rbn.contract.preprocess``, so that evaluation (rbn.experiments.evaluate) feeds the graph the same tensors.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rbn.contract.bundle import InputSpec
from rbn.contract.preprocess import Normalizer  # noqa: F401 - the service's normalize step, imported from here
from service.core.errors import CorruptImage, EmptyBody, ServiceError, TooManyPixels, UndecodableImage

# Formats we read; Pillow's other plugins (EPS via Ghostscript, PSD, ...) are never tried on user data.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG also opens multi-picture (MPO) files
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_RESAMPLE = Image.Resampling.LANCZOS
_BACKGROUND = (255, 255, 255, 255)  # transparent pixels become white, then 'auto' inverts like a product photo


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the image from its header; refuse it before decoding when it has too many pixels."""
    if not data:
        raise EmptyBody("empty image: the request carries no bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own guard, far above ours
        raise TooManyPixels(f"image refused before decoding: the limit is {max_pixels} pixels ({exc})") from None
    except UnidentifiedImageError:
        raise UndecodableImage("cannot identify an image in the data; send JPEG, PNG, WebP, BMP, GIF or TIFF") from None
    except Exception as exc:  # broken headers raise many types
        raise CorruptImage(f"cannot read the image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise CorruptImage(f"image has no pixels ({width}x{height})")
    return image


def render(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Decode (first frame, EXIF orientation) and bring to ``spec``: uint8 (C, H, W)."""
    try:
        if image.format in ("JPEG", "MPO"):  # let libjpeg decode at a reduced scale when it can
            side = max(spec.height, spec.width)
            image.draft("L" if spec.channels == 1 and image.mode == "RGB" else None, (side, side))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        image = _to_mode(image, spec.channels)
        pixels = _fit(image, spec)
    except ServiceError:
        raise
    except Exception as exc:  # truncated or broken data; decoders raise many types
        raise CorruptImage(f"cannot decode the image ({image.format}): {exc}") from None
    if spec.invert == "always" or spec.invert == "auto" and _border_mean(pixels) > 127.5:
        pixels = 255 - pixels
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def decode(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """``open_image`` then ``render``."""
    return render(open_image(data, max_pixels), spec)


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any supported mode -> 8-bit 'L' (one channel) or 'RGB' (three); alpha composited on white."""
    target = {1: "L", 3: "RGB", 4: "RGBA", 2: "LA"}[channels]
    mode = image.mode
    if mode in _HIGH_DEPTH:
        image = Image.fromarray(_to_uint8(np.asarray(image), mode))
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "1":
        image = image.convert("L")
    if image.mode in _ALPHA and target in ("L", "RGB"):
        canvas = Image.new("RGBA", image.size, _BACKGROUND)
        canvas.alpha_composite(image.convert("RGBA"))
        image = canvas
    if image.mode not in ("L", "RGB", "RGBA", "LA"):  # CMYK, YCbCr, LAB, HSV, ...
        image = image.convert("RGB")
    return image if image.mode == target else image.convert(target)


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit and 32-bit integer images cover 0..65535; float images 0..255."""
    if mode == "F":
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.rint(np.clip(array.astype(np.float32), 0, 65535) / 257.0).astype(np.uint8)


def _fit(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Resize to the input size: 'stretch' ignores the aspect ratio; 'fit' keeps it and pads with the border colour."""
    size = (spec.width, spec.height)
    if image.size == size:
        return np.asarray(image)
    if spec.resize == "stretch":
        return np.asarray(image.resize(size, _RESAMPLE, reducing_gap=3.0))
    width, height = image.size
    scale = min(spec.width / width, spec.height / height)
    inner = (min(spec.width, max(1, round(width * scale))), min(spec.height, max(1, round(height * scale))))
    pixels = np.asarray(image.resize(inner, _RESAMPLE, reducing_gap=3.0))
    if inner == size:
        return pixels
    fill = np.rint(_border_values(pixels).mean(axis=0)).astype(np.uint8)
    canvas = np.empty((spec.height, spec.width, *pixels.shape[2:]), np.uint8)
    canvas[...] = fill
    top, left = (spec.height - inner[1]) // 2, (spec.width - inner[0]) // 2
    canvas[top : top + inner[1], left : left + inner[0]] = pixels
    return canvas


def _border_values(pixels: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels, (n,) or (n, C)."""
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]]).astype(np.float32)


def _border_mean(pixels: np.ndarray) -> float:
    return float(_border_values(pixels).mean())


def to_png(image: np.ndarray) -> bytes:
    """uint8 (C, H, W) with 1 or 3 channels -> PNG bytes (what the page shows as the model's input)."""
    pixels = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)  # tens of pixels: fast beats small
    return buffer.getvalue()


def warm_up(spec: InputSpec) -> None:
    """Decode one tiny PNG and JPEG so the first request does not pay for loading Pillow's plugins."""
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.new("RGB", (spec.width * 2, spec.height), (200, 200, 200)).save(buffer, fmt)
        decode(buffer.getvalue(), spec, spec.width * spec.height * 4)
