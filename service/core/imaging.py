"""Uploaded image bytes -> the model's input: decode, limits, grayscale/colour, geometry, invert, normalize.

Two steps so the caller can choose where the work runs: ``open_image`` reads only the header and
enforces the pixel limit before any pixel is decoded; ``render`` decodes and brings the image to
the bundle's input (uint8, channels first), mapping decoder failures to ``CorruptImage``. The pixel
steps (JPEG draft decoding, mode, fit / stretch / ImageNet shorter-side-and-centre-crop, invert) and
``Normalizer`` are defined once, in ``rbn.contract.preprocess``, where training and evaluation
(rbn.experiments) read them too.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from rbn.contract.bundle import InputSpec
from rbn.contract.preprocess import Normalizer  # noqa: F401 - the service's normalize step, imported from here
from rbn.contract.preprocess import prepare
from service.core.errors import CorruptImage, EmptyBody, ServiceError, TooManyPixels, UndecodableImage

# Formats we read; Pillow's other plugins (EPS via Ghostscript, PSD, ...) are never tried on user data.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG also opens multi-picture (MPO) files


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
    """Decode (first frame, EXIF orientation; a JPEG at the smallest DCT scale the spec allows) and
    bring to ``spec``: uint8 (C, H, W). The steps are ``rbn.contract.preprocess.prepare``'s."""
    try:
        return prepare(image, spec)
    except ServiceError:
        raise
    except Exception as exc:  # truncated or broken data; decoders raise many types
        raise CorruptImage(f"cannot decode the image ({image.format}): {exc}") from None


def decode(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """``open_image`` then ``render``."""
    return render(open_image(data, max_pixels), spec)


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
