"""Out-of-distribution corruptions for grayscale images, in the spirit of ImageNet-C and MNIST-C.

Torch-free (numpy + Pillow): the service imports this module to corrupt requests on demand.

Every family takes a float32 batch ``(N, H, W)`` in [0, 1] (light object on dark background),
a severity 1..5 and the batch's random ``Streams``, and returns a float32 batch of the same shape.
``corrupt`` wraps them for uint8 images and batches.

Conventions
- Spatial parameters are given for a 28x28 image and scale with ``min(H, W) / 28`` (blur radii,
  motion length) or are fractions of the image size (translation, pixelation), so a corruption
  looks the same at any resolution >= 8 pixels.
- Randomness is per image: image ``i`` of a batch draws from
  ``SeedSequence([seed, crc32(family), part, first_index + i])`` (see ``Streams``), so results do not
  depend on batch size or chunking, and a single image equals batch entry 0.
- Severities share their random draws (common random numbers): severity 4 uses the same noise
  field, direction or angle sign as severity 2, only scaled up. This makes severity monotone per
  image for most families, not just on average.
- Pixels outside the frame after a geometric transform are black (the background).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 28  # spatial parameters below are in pixels of a 28x28 image
MIN_SIZE = 8
_CHUNK = 512  # images per internal chunk: bounds memory, keeps temporaries in cache

# --- severity tables: entry s-1 is severity s ---------------------------------------------
GAUSSIAN_NOISE_SIGMA = (0.06, 0.10, 0.15, 0.22, 0.32)  # std of additive noise on [0, 1]
SHOT_NOISE_PHOTONS = (60.0, 25.0, 12.0, 6.0, 3.0)  # Poisson rate at intensity 1 (fewer = noisier)
IMPULSE_NOISE_AMOUNT = (0.03, 0.06, 0.10, 0.17, 0.27)  # fraction of pixels set to 0 or 1
DEFOCUS_BLUR_RADIUS = (0.6, 0.9, 1.2, 1.6, 2.1)  # disk radius, pixels at 28x28
MOTION_BLUR_LENGTH = (2.0, 3.0, 4.0, 5.5, 7.0)  # streak length, pixels at 28x28; random angle
ZOOM_BLUR_MAX = (1.06, 1.11, 1.16, 1.22, 1.30)  # average of zooms 1..max about the centre
CONTRAST_FACTOR = (0.5, 0.4, 0.3, 0.2, 0.1)  # deviation from the image mean is multiplied by this
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to every pixel, then clipped
PIXELATE_FRACTION = (0.7, 0.5, 0.4, 0.3, 0.2)  # box-downsample to this fraction, nearest-upsample
JPEG_QUALITY = (30, 20, 12, 8, 4)  # Pillow JPEG quality
FOG_STRENGTH_DECAY = ((0.3, 2.0), (0.5, 2.0), (0.7, 1.7), (0.9, 1.5), (1.2, 1.4))  # (strength, octave decay)
ROTATE_DEGREES = (8.0, 16.0, 24.0, 32.0, 42.0)  # magnitude; sign random per image
SHEAR_FACTOR = (0.1, 0.2, 0.3, 0.4, 0.55)  # horizontal shear magnitude; sign random per image
TRANSLATE_FRACTION = (0.05, 0.10, 0.15, 0.20, 0.25)  # shift as fraction of size; direction random

SEVERITY_PARAMS: dict[str, tuple] = {
    "gaussian_noise": GAUSSIAN_NOISE_SIGMA,
    "shot_noise": SHOT_NOISE_PHOTONS,
    "impulse_noise": IMPULSE_NOISE_AMOUNT,
    "defocus_blur": DEFOCUS_BLUR_RADIUS,
    "motion_blur": MOTION_BLUR_LENGTH,
    "zoom_blur": ZOOM_BLUR_MAX,
    "contrast": CONTRAST_FACTOR,
    "brightness": BRIGHTNESS_SHIFT,
    "pixelate": PIXELATE_FRACTION,
    "jpeg_compression": JPEG_QUALITY,
    "fog": FOG_STRENGTH_DECAY,
    "rotate": ROTATE_DEGREES,
    "shear": SHEAR_FACTOR,
    "translate": TRANSLATE_FRACTION,
}


@dataclass(frozen=True)
class Streams:
    """Per-image random streams of one batch: image i uses ``SeedSequence([seed, key, part, first_index + i])``."""

    seed: int
    key: int
    first_index: int
    n: int

    def rngs(self, part: int) -> list[np.random.Generator]:
        """One generator per image; each ``part`` is an independent stream for the same image."""
        return [np.random.default_rng([self.seed, self.key, part, self.first_index + i]) for i in range(self.n)]

    def draw(self, part: int, fn: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
        """Stack ``fn(rng)`` over the batch's images."""
        return np.stack([np.asarray(fn(rng)) for rng in self.rngs(part)])


Corruption = Callable[[np.ndarray, int, Streams], np.ndarray]


# --- helpers ----------------------------------------------------------------------------------
def _scale(x: np.ndarray) -> float:
    """Size factor of a batch relative to the 28x28 reference."""
    return min(x.shape[1:]) / REFERENCE_SIZE


def _separable(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``rows @ x[n] @ cols.T`` for every image (rows: (H', H), cols: (W', W))."""
    return np.matmul(np.matmul(rows.astype(np.float32), x), cols.T.astype(np.float32))


def _interp_matrix(n_out: int, src: np.ndarray, n_in: int) -> np.ndarray:
    """Linear-interpolation matrix (n_out, n_in) sampling input positions ``src``; outside is zero."""
    m = np.zeros((n_out, n_in + 2), dtype=np.float64)  # one zero column either side
    pos = np.clip(src + 1.0, 0.0, n_in + 1.0)
    lo = np.minimum(np.floor(pos).astype(int), n_in)
    frac = pos - lo
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m[:, 1:-1]


def _convolve(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Convolve with an odd (K, K) kernel or per-image (N, K, K) kernels; edges replicated."""
    kernels = kernels.reshape((-1,) + kernels.shape[-2:]).astype(np.float32)
    k = kernels.shape[-1]
    p = k // 2
    h, w = x.shape[1:]
    padded = np.pad(x, ((0, 0), (p, p), (p, p)), mode="edge")
    out = np.zeros_like(x)
    for i, j in zip(*np.nonzero(np.any(kernels != 0, axis=0))):
        out += kernels[:, i, j, None, None] * padded[:, i : i + h, j : j + w]
    return out


def _warp_affine(x: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Bilinear warp; ``inverse`` (N, 2, 3) maps output (col, row, 1) to input (col, row), centred."""
    n, h, w = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    rows, cols = rows - cy, cols - cx
    a = inverse.astype(np.float32)[:, :, :, None, None]
    src_c = a[:, 0, 0] * cols + a[:, 0, 1] * rows + a[:, 0, 2] + cx + 1.0  # +1: the padded copy below
    src_r = a[:, 1, 0] * cols + a[:, 1, 1] * rows + a[:, 1, 2] + cy + 1.0
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    hp, wp = h + 2, w + 2
    src_c = np.clip(src_c, 0.0, wp - 1.001)
    src_r = np.clip(src_r, 0.0, hp - 1.001)
    c0, r0 = np.floor(src_c), np.floor(src_r)
    fc, fr = src_c - c0, src_r - r0
    idx = (np.arange(n)[:, None, None] * (hp * wp) + r0.astype(np.int64) * wp + c0.astype(np.int64)).ravel()
    flat = padded.ravel()
    top = flat[idx].reshape(n, h, w) * (1 - fc) + flat[idx + 1].reshape(n, h, w) * fc
    bottom = flat[idx + wp].reshape(n, h, w) * (1 - fc) + flat[idx + wp + 1].reshape(n, h, w) * fc
    return top * (1 - fr) + bottom * fr


def _random_signs(streams: Streams, part: int = 0) -> np.ndarray:
    """One random +-1 per image."""
    return np.where(streams.draw(part, lambda r: r.random()) < 0.5, -1.0, 1.0)


# --- noise ------------------------------------------------------------------------------------
def gaussian_noise(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Additive Gaussian noise."""
    z = streams.draw(0, lambda r: r.standard_normal(x.shape[1:], dtype=np.float32))
    return x + GAUSSIAN_NOISE_SIGMA[severity - 1] * z


def shot_noise(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Poisson (photon) noise: fewer photons per unit intensity at higher severity."""
    lam = SHOT_NOISE_PHOTONS[severity - 1]
    counts = np.stack([rng.poisson(image * lam) for rng, image in zip(streams.rngs(0), x)])
    return counts.astype(np.float32) / lam


def impulse_noise(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Salt-and-pepper noise; the hit pixels of a lower severity are a subset of a higher one's."""
    u = streams.draw(0, lambda r: r.random((2,) + x.shape[1:], dtype=np.float32))  # (N, 2, H, W)
    hit = u[:, 0] < IMPULSE_NOISE_AMOUNT[severity - 1]
    return np.where(hit, (u[:, 1] < 0.5).astype(np.float32), x)


# --- blur -------------------------------------------------------------------------------------
def _disk(radius: float) -> np.ndarray:
    """Anti-aliased, normalised disk kernel."""
    half = int(np.ceil(radius))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    k = np.clip(radius + 0.5 - np.hypot(yy, xx), 0.0, 1.0)
    return k / k.sum()


def defocus_blur(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Convolution with a disk (out-of-focus lens)."""
    return _convolve(x, _disk(DEFOCUS_BLUR_RADIUS[severity - 1] * _scale(x)))


def _segments(length: float, angles: np.ndarray) -> np.ndarray:
    """Per-angle normalised kernels (N, K, K) of a centred line segment, anti-aliased by distance."""
    half = max(1, int(np.ceil(length / 2)))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    dx, dy = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    t = np.clip(xx * dx + yy * dy, -length / 2, length / 2)  # projection onto the segment
    dist = np.hypot(xx - t * dx, yy - t * dy)
    k = np.clip(1.0 - dist, 0.0, 1.0)
    return k / k.sum(axis=(1, 2), keepdims=True)


def motion_blur(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Blur along a line segment with a random direction per image (camera shake)."""
    angles = streams.draw(0, lambda r: r.uniform(0.0, np.pi))
    return _convolve(x, _segments(MOTION_BLUR_LENGTH[severity - 1] * _scale(x), angles))


def _zoom_matrix(n: int, factor: float) -> np.ndarray:
    """1-D interpolation matrix that magnifies by ``factor`` about the centre."""
    c = (n - 1) / 2
    return _interp_matrix(n, c + (np.arange(n) - c) / factor, n)


def zoom_blur(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Average of the image and copies magnified up to the severity's factor (zooming during exposure)."""
    h, w = x.shape[1:]
    factors = np.linspace(1.0, ZOOM_BLUR_MAX[severity - 1], 7)[1:]
    out = x.copy()
    for f in factors:
        out += _separable(x, _zoom_matrix(h, f), _zoom_matrix(w, f))
    return out / (len(factors) + 1)


# --- photometric ------------------------------------------------------------------------------
def contrast(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Pull every pixel towards the image mean."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * CONTRAST_FACTOR[severity - 1] + mean


def brightness(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Add a constant (the V channel of HSV for a gray image), clipped at white."""
    return x + BRIGHTNESS_SHIFT[severity - 1]


def _fractal(shape: tuple[int, int], decay: float, streams: Streams) -> np.ndarray:
    """Per-image smooth fractal field in [0, 1]: octaves of upsampled value noise, amplitude / decay each."""
    h, w = shape
    octaves = []
    cells = 2
    while cells <= max(2, min(h, w) // 2):
        octaves.append(cells)
        cells *= 2
    grids = [
        [rng.random((g + 1, g + 1), dtype=np.float32) for g in octaves] for rng in streams.rngs(0)
    ]  # all octaves from one stream per image, the same for every severity
    field = np.zeros((streams.n, h, w), dtype=np.float32)
    for octave, g in enumerate(octaves):
        rows = _interp_matrix(h, np.linspace(0, g, h), g + 1)
        cols = _interp_matrix(w, np.linspace(0, g, w), g + 1)
        grid = np.stack([per_image[octave] for per_image in grids])
        field += decay**-octave * _separable(grid, rows, cols)
    lo = field.min(axis=(1, 2), keepdims=True)
    hi = field.max(axis=(1, 2), keepdims=True)
    return (field - lo) / np.maximum(hi - lo, 1e-6)


def fog(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Add a bright fractal haze and renormalise, lowering contrast unevenly (ImageNet-C fog)."""
    strength, decay = FOG_STRENGTH_DECAY[severity - 1]
    peak = x.max(axis=(1, 2), keepdims=True)
    peak = np.where(peak > 0, peak, 1.0)
    return (x + strength * _fractal(x.shape[1:], decay, streams)) * peak / (peak + strength)


# --- digital ----------------------------------------------------------------------------------
def _box_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) area-average matrix: output cell j averages input span [j*n/m, (j+1)*n/m)."""
    edges = np.arange(m + 1) * n / m
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _pixelate_matrix(n: int, fraction: float) -> np.ndarray:
    """(n, n) box-downsample to ``fraction`` of n, then nearest-neighbour back up."""
    m = max(1, int(round(n * fraction)))
    up = np.zeros((n, m))
    up[np.arange(n), np.minimum((2 * np.arange(n) + 1) * m // (2 * n), m - 1)] = 1.0  # cell holding the pixel centre
    return up @ _box_matrix(n, m)


def pixelate(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Reduce resolution and blow back up with square pixels."""
    fraction = PIXELATE_FRACTION[severity - 1]
    h, w = x.shape[1:]
    return _separable(x, _pixelate_matrix(h, fraction), _pixelate_matrix(w, fraction))


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode one uint8 (H, W) image as JPEG and decode it again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"))


def jpeg_compression(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """JPEG artefacts (block edges, ringing) from a lossy encode at low quality."""
    quality = JPEG_QUALITY[severity - 1]
    images = _to_uint8(x)
    return np.stack([_jpeg_roundtrip(image, quality) for image in images]).astype(np.float32) / 255.0


# --- geometric --------------------------------------------------------------------------------
def _affine_batch(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, tx=0.0, ty=0.0) -> np.ndarray:
    """Stack per-image inverse affine matrices [[a, b, tx], [c, d, ty]] into (N, 2, 3)."""
    a, b, c, d, tx, ty = np.broadcast_arrays(a, b, c, d, tx, ty)
    return np.stack([np.stack([a, b, tx], -1), np.stack([c, d, ty], -1)], 1).astype(np.float64)


def rotate(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Rotate about the centre by the severity's angle, clockwise or anticlockwise at random."""
    theta = np.deg2rad(ROTATE_DEGREES[severity - 1]) * _random_signs(streams)
    cos, sin = np.cos(theta), np.sin(theta)
    return _warp_affine(x, _affine_batch(cos, sin, -sin, cos))  # inverse rotation


def shear(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Horizontal shear about the centre, leaning left or right at random."""
    s = SHEAR_FACTOR[severity - 1] * _random_signs(streams)
    return _warp_affine(x, _affine_batch(np.ones_like(s), -s, np.zeros_like(s), np.ones_like(s)))


def translate(x: np.ndarray, severity: int, streams: Streams) -> np.ndarray:
    """Shift by a fraction of the image size in a random direction; uncovered pixels are black."""
    angle = streams.draw(0, lambda r: r.uniform(0.0, 2 * np.pi))
    h, w = x.shape[1:]
    fraction = TRANSLATE_FRACTION[severity - 1]
    shift_x, shift_y = fraction * w * np.cos(angle), fraction * h * np.sin(angle)
    ones, zeros = np.ones_like(angle), np.zeros_like(angle)
    return _warp_affine(x, _affine_batch(ones, zeros, zeros, ones, -shift_x, -shift_y))


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "contrast": contrast,
    "brightness": brightness,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "fog": fog,
    "rotate": rotate,
    "shear": shear,
    "translate": translate,
}
CORRUPTION_NAMES: tuple[str, ...] = tuple(sorted(CORRUPTIONS))


# --- public entry point -----------------------------------------------------------------------
def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8, clipped and rounded."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _family_key(name: str) -> int:
    """Stable per-family stream key, so families do not share noise."""
    return zlib.crc32(name.encode())


def _check(name: str, severity: int, seed: int) -> Corruption:
    """Validate the arguments of ``corrupt`` and return the family function."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTION_NAMES)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return CORRUPTIONS[name]


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0, *, first_index: int = 0) -> np.ndarray:
    """Corrupt a uint8 image (H, W) or batch (N, H, W); returns uint8 of the same shape.

    Deterministic for ``seed``: batch entry i uses the stream of image ``first_index + i``, so
    corrupting a data set in chunks (passing each chunk's offset) gives the same result as in one go.
    """
    fn = _check(name, severity, seed)
    x = np.asarray(image)
    if x.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {x.dtype}")
    if x.ndim not in (2, 3) or min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"expected shape (H, W) or (N, H, W) with H, W >= {MIN_SIZE}, got {x.shape}")
    batch = x[None] if x.ndim == 2 else x
    out = np.empty_like(batch)
    key = _family_key(name)
    for start in range(0, len(batch), _CHUNK):
        chunk = batch[start : start + _CHUNK].astype(np.float32) / 255.0
        streams = Streams(int(seed), key, first_index + start, len(chunk))
        out[start : start + len(chunk)] = _to_uint8(fn(chunk, severity, streams))
    return out[0] if x.ndim == 2 else out
