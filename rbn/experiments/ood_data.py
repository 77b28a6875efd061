"""Out-of-distribution image sets, uint8 (N, 28, 28), light-on-dark as the service would feed them.

Two groups, kept apart on purpose (pre-registration, RESULTS.md):

- ``validation_sets``: OOD we generate to *choose* the served score -- i.i.d. noise, synthetic
  shapes, scrambled and heavily corrupted *training* images. Never used to report results.
- ``far_ood_sets``: far-OOD data from installed packages to *report* -- scikit-learn's handwritten
  digits, scikit-image's face subset, its texture images and crops of its photographs, uniform
  noise and constant images. Never used to choose anything.

Images are brought to 28x28 the way the service does for an upload (Lanczos resize of a square
crop, then 'auto' inversion when the border is brighter than mid-grey), so a set measures what a
user sending such pictures would see. Everything is seeded and deterministic. Torch-free;
scikit-learn and scikit-image (training extra) are imported inside the loaders.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from rbn.contract.corruptions import corrupt
from rbn.experiments.data import DatasetError

SIZE = 28


def as_served(images: np.ndarray) -> np.ndarray:
    """uint8 (N, h, w) square images -> (N, 28, 28): Lanczos resize, then invert a light-bordered image."""
    out = np.empty((len(images), SIZE, SIZE), np.uint8)
    for i, image in enumerate(images):
        pixels = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0))
        border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
        out[i] = 255 - pixels if border.mean() > 127.5 else pixels
    return out


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


# ---------------------------------------------------------------- validation (generated)


def gaussian_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """i.i.d. Gaussian pixels around a random mean and spread per image."""
    mean = rng.uniform(0.1, 0.6, (n, 1, 1))
    std = rng.uniform(0.1, 0.4, (n, 1, 1))
    return _to_u8(mean + std * rng.standard_normal((n, SIZE, SIZE)))


def salt_and_pepper(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random binary pixels at a random density per image."""
    density = rng.uniform(0.05, 0.5, (n, 1, 1))
    return ((rng.random((n, SIZE, SIZE)) < density) * 255).astype(np.uint8)


def shapes(n: int, rng: np.random.Generator) -> np.ndarray:
    """1-4 random ellipses, rectangles, polygons or thick lines, light on dark."""
    out = np.empty((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        image = Image.new("L", (SIZE, SIZE), int(rng.integers(0, 40)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = rng.integers(0, SIZE - 4, 2)
            x1, y1 = x0 + rng.integers(4, SIZE), y0 + rng.integers(4, SIZE)
            fill = int(rng.integers(80, 256))
            kind = rng.integers(0, 4)
            if kind == 0:
                draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=fill)
            elif kind == 1:
                draw.rectangle((int(x0), int(y0), int(x1), int(y1)), fill=fill)
            elif kind == 2:
                points = [tuple(int(v) for v in rng.integers(0, SIZE, 2)) for _ in range(int(rng.integers(3, 7)))]
                draw.polygon(points, fill=fill)
            else:
                draw.line((int(x0), int(y0), int(x1), int(y1)), fill=fill, width=int(rng.integers(1, 5)))
        out[i] = np.asarray(image)
    return out


def jigsaw(images: np.ndarray, rng: np.random.Generator, tiles: int = 4) -> np.ndarray:
    """Training images cut into a tiles x tiles grid (7-pixel squares) and shuffled."""
    side = SIZE // tiles
    out = images.copy()
    for i, image in enumerate(images):
        blocks = [image[r * side:(r + 1) * side, c * side:(c + 1) * side] for r in range(tiles) for c in range(tiles)]
        order = rng.permutation(len(blocks))
        for k, j in enumerate(order):
            r, c = divmod(k, tiles)
            out[i, r * side:(r + 1) * side, c * side:(c + 1) * side] = blocks[j]
    return out


def rotated_blend(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each training image rotated by 90 degrees and averaged with another one rotated the other way."""
    partner = images[rng.permutation(len(images))]
    return ((np.rot90(images, 1, axes=(1, 2)).astype(np.uint16) + np.rot90(partner, -1, axes=(1, 2))) // 2).astype(np.uint8)


HEAVY_CORRUPTIONS = ("gaussian_noise", "impulse_noise", "fog", "contrast", "pixelate", "zoom_blur")


def heavy_corruption(images: np.ndarray, seed: int) -> np.ndarray:
    """Training images at severity 5 of a few corruption families, an equal share each."""
    parts = np.array_split(images, len(HEAVY_CORRUPTIONS))
    return np.concatenate([corrupt(p, name, 5, seed=seed) for p, name in zip(parts, HEAVY_CORRUPTIONS, strict=True)])


def validation_sets(train_images: np.ndarray, n: int = 1000, seed: int = 1) -> dict[str, np.ndarray]:
    """Generated OOD for choosing the score. ``train_images`` must be images the fits do not use."""
    rng = np.random.default_rng(seed)
    source = train_images[rng.choice(len(train_images), size=min(n, len(train_images)), replace=False)]
    return {
        "val_gaussian_noise": gaussian_noise(n, rng),
        "val_salt_and_pepper": salt_and_pepper(n, rng),
        "val_shapes": shapes(n, rng),
        "val_jigsaw": jigsaw(source, rng),
        "val_rotated_blend": rotated_blend(source, rng),
        "val_heavy_corruption": heavy_corruption(source, seed),
    }


# ---------------------------------------------------------------- test (from packages)


def _need(package: str) -> DatasetError:
    return DatasetError(f"far-OOD test sets need {package}, which is in the training extra: pip install 'rbn-serve[train]'")


def digits() -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits (8x8, 0..16), light ink on dark."""
    from rbn.experiments.far_ood import load_digits_28

    return load_digits_28()


def faces() -> np.ndarray:
    """scikit-image's 200-face subset of Labeled Faces in the Wild (25x25 grey)."""
    try:
        from skimage.data import lfw_subset
    except ImportError as exc:
        raise _need("scikit-image") from exc
    return as_served(_to_u8(lfw_subset()))


def _grey(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3:
        rgb = image[..., :3].astype(np.float64)
        image = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return image


def _crops(images: list[np.ndarray], n: int, rng: np.random.Generator, sides: tuple[int, int]) -> np.ndarray:
    """``n`` random square crops, sides drawn in ``sides``, spread evenly over ``images``."""
    out = []
    for i in range(n):
        image = images[i % len(images)]
        side = int(rng.integers(sides[0], min(sides[1], *image.shape[:2]) + 1))
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        out.append(as_served(image[None, top:top + side, left:left + side])[0])
    return np.stack(out)


def _skimage(names: tuple[str, ...]) -> list[np.ndarray]:
    try:
        import skimage.data as data
    except ImportError as exc:
        raise _need("scikit-image") from exc
    return [_grey(getattr(data, name)()) for name in names]


TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "clock", "cell", "immunohistochemistry")


def textures(n: int = 1000, seed: int = 2) -> np.ndarray:
    """Random crops (28 to 112 pixels a side) of scikit-image's brick, grass and gravel textures."""
    return _crops(_skimage(TEXTURES), n, np.random.default_rng(seed), (28, 112))


def photos(n: int = 1000, seed: int = 3) -> np.ndarray:
    """Random crops (40 to 200 pixels a side) of ten of scikit-image's photographs, in grey."""
    return _crops(_skimage(PHOTOS), n, np.random.default_rng(seed), (40, 200))


def uniform_noise(n: int = 1000, seed: int = 4) -> np.ndarray:
    """i.i.d. uniform pixels over 0..255."""
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)


def constant(n: int = 256) -> np.ndarray:
    """Blank images at every grey level (after the service's 'auto' inversion: 0..127)."""
    levels = np.linspace(0, 255, n).round().astype(np.uint8)
    return as_served(np.broadcast_to(levels[:, None, None], (n, SIZE, SIZE)).copy())


FAR_OOD_SETS: dict[str, Callable[[], np.ndarray]] = {
    "far_ood_digits": digits,
    "far_ood_faces": faces,
    "far_ood_textures": textures,
    "far_ood_photos": photos,
    "far_ood_uniform_noise": uniform_noise,
    "far_ood_constant": constant,
}


def far_ood_sets() -> dict[str, np.ndarray]:
    """Every far-OOD test set, by name."""
    return {name: load() for name, load in FAR_OOD_SETS.items()}
