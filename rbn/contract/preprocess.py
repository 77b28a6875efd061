"""The models' input preprocessing, defined once: a decoded image -> uint8 (C, H, W) -> float32.

Two steps, both following the bundle's input spec (``rbn.contract.bundle.InputSpec``):

- ``prepare`` brings an opened Pillow image to the spec's uint8 (C, H, W): JPEG draft decoding at a
  reduced scale, EXIF orientation, mode (grey or RGB; palette, alpha, CMYK and 16-bit converted),
  geometry (``fit``, ``stretch`` or ImageNet's ``shorter_side_crop``) and inversion;
- ``Normalizer`` turns a uint8 (N, C, H, W) batch into float32 ``(x / 255 - mean) / std`` per channel.

The service (``service.core.imaging``, which adds the limits and its error answers) calls both;
training and evaluation call ``Normalizer`` on Fashion-MNIST's uint8 tensors (``rbn.experiments.data``)
and ``prepare`` on image files (``rbn.experiments.imagefolder``), so evaluation measures the tensors
the service feeds the graph, bit for bit. It lives in rbn/ rather than service/ because the dependencies run one way,
rbn -> models -> service (rbn never imports the service). numpy and Pillow only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image, ImageOps

_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_BACKGROUND = (255, 255, 255, 255)  # transparent pixels become white, then 'auto' inverts like a product photo
_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# Image.resize first shrinks by a whole factor with Image.reduce (a box filter, cheap) while the image
# stays at least this many times the target, then applies the filter: the cost of a large PNG's
# resize no longer grows with its pixels, at a difference of about one grey level.
REDUCING_GAP = 3.0
# shorter_side_crop resizes the whole image, then crops (torchvision's Resize + CenterCrop, to the pixel),
# while its longer side stays within this many times resize_size (a 16:1 panorama: 4096 x 256 pixels);
# beyond, it resamples only the crop's region, so memory and time stay bounded for any aspect ratio.
MAX_ASPECT = 16


class MeanStd(Protocol):
    """Per-channel statistics on [0, 1], as a bundle's input spec (``rbn.contract.bundle.InputSpec``) holds them."""

    mean: list[float]
    std: list[float]


class Spec(MeanStd, Protocol):
    """The parts of ``InputSpec`` that ``prepare`` reads."""

    channels: int
    height: int
    width: int
    resize: str
    resize_size: int | None
    interpolation: str
    invert: str


class Normalizer:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, as one multiply-add."""

    def __init__(self, spec: MeanStd) -> None:
        std = np.asarray(spec.std, np.float64).reshape(-1, 1, 1)
        mean = np.asarray(spec.mean, np.float64).reshape(-1, 1, 1)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.bias = (-mean / std).astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)
        x *= self.scale
        x += self.bias
        return x


def draft_size(spec: Spec) -> tuple[int, int]:
    """The smallest (width, height) the decoded image needs: libjpeg may decode at 1/2, 1/4 or 1/8
    scale as long as both sides stay at least this large. For ``shorter_side_crop`` the shorter side
    must stay >= ``resize_size``; for ``fit``/``stretch`` both sides >= the larger input side."""
    side = spec.resize_size if spec.resize == "shorter_side_crop" else max(spec.height, spec.width)
    return side, side


def prepare(image: Image.Image, spec: Spec) -> np.ndarray:
    """An opened (not yet decoded) image -> uint8 (C, H, W) for ``spec``: first frame, JPEG decoded at
    the smallest DCT scale that still covers ``draft_size``, EXIF orientation, mode, geometry, inversion.

    Decoding errors propagate as Pillow raises them (the service maps them to its answers)."""
    if image.format in ("JPEG", "MPO"):
        # DCT-domain downscale: a 4000x3000 photo for a 256 shorter side decodes at 1/8 (500x375)
        image.draft("L" if spec.channels == 1 and image.mode == "RGB" else None, draft_size(spec))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    image = to_mode(image, spec.channels)
    pixels = resize(image, spec)
    if spec.invert == "always" or spec.invert == "auto" and _border_mean(pixels) > 127.5:
        pixels = 255 - pixels
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def to_mode(image: Image.Image, channels: int) -> Image.Image:
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


def crop_geometry(width: int, height: int, resize_size: int, crop: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``shorter_side_crop`` as torchvision's ``Resize(resize_size)`` then ``CenterCrop((h, w))``:
    ((resized width, resized height), (left, top) of the crop). The shorter side becomes
    ``resize_size``, the longer ``int(resize_size * long / short)``; the crop is centred with
    ``int(round((resized - crop) / 2))``."""
    crop_w, crop_h = crop
    if width <= height:
        size = (resize_size, int(resize_size * height / width))
    else:
        size = (int(resize_size * width / height), resize_size)
    return size, (int(round((size[0] - crop_w) / 2.0)), int(round((size[1] - crop_h) / 2.0)))


def resize(image: Image.Image, spec: Spec) -> np.ndarray:
    """Resize to the input size: 'stretch' ignores the aspect ratio; 'fit' keeps it and pads with the
    border colour; 'shorter_side_crop' scales the shorter side to ``resize_size`` and crops the centre."""
    size = (spec.width, spec.height)
    flt = _FILTERS[spec.interpolation]
    if spec.resize == "shorter_side_crop":
        scaled, (left, top) = crop_geometry(image.width, image.height, spec.resize_size, size)
        if max(scaled) > MAX_ASPECT * spec.resize_size:
            # An extreme strip (a 1x16 000 000 image passes the pixel limit) would be resized to 256 wide and
            # millions high first: resample only the crop's region instead (the same sample positions and
            # filter; Pillow's coefficients differ from a full resize's by a grey level or two at most).
            sx, sy = image.width / scaled[0], image.height / scaled[1]
            box = (left * sx, top * sy, (left + spec.width) * sx, (top + spec.height) * sy)
            return np.asarray(image.resize(size, flt, box=box, reducing_gap=REDUCING_GAP))
        if image.size != scaled:
            image = image.resize(scaled, flt, reducing_gap=REDUCING_GAP)
        return np.asarray(image)[top : top + spec.height, left : left + spec.width]
    if image.size == size:
        return np.asarray(image)
    if spec.resize == "stretch":
        return np.asarray(image.resize(size, flt, reducing_gap=REDUCING_GAP))
    width, height = image.size
    scale = min(spec.width / width, spec.height / height)
    inner = (min(spec.width, max(1, round(width * scale))), min(spec.height, max(1, round(height * scale))))
    pixels = np.asarray(image.resize(inner, flt, reducing_gap=REDUCING_GAP))
    if inner == size:
        return pixels
    fill = np.rint(border_values(pixels).mean(axis=0)).astype(np.uint8)
    canvas = np.empty((spec.height, spec.width, *pixels.shape[2:]), np.uint8)
    canvas[...] = fill
    top, left = (spec.height - inner[1]) // 2, (spec.width - inner[0]) // 2
    canvas[top : top + inner[1], left : left + inner[0]] = pixels
    return canvas


def border_values(pixels: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels, (n,) or (n, C)."""
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]]).astype(np.float32)


def _border_mean(pixels: np.ndarray) -> float:
    return float(border_values(pixels).mean())
