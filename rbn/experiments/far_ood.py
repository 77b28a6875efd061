"""Far out-of-distribution data: scikit-learn's bundled handwritten digits, shaped like Fashion-MNIST.

Torch-free. scikit-learn is only in the training extra, so it is imported inside the function.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from rbn.experiments.data import DatasetError

SIZE = 28
DIGITS_MAX = 16  # load_digits pixel values are 0..16, ink high: already light on dark


def upscale(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Resize uint8 images (N, h, w) to (N, size, size) with Pillow's bilinear filter."""
    resized = [np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)) for image in images]
    return np.stack(resized) if resized else np.empty((0, size, size), dtype=np.uint8)


def load_digits_28() -> np.ndarray:
    """The 1,797 sklearn digits (8x8, 0..16) as uint8 (N, 28, 28), light ink on a dark background.

    Raises DatasetError when scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError(
            "far-OOD digits need scikit-learn, which is in the training extra: "
            "pip install 'rbn-serve[train]' (or pip install scikit-learn)"
        ) from exc
    digits = load_digits().images  # (1797, 8, 8) float64, 0..16
    images = np.rint(np.clip(digits, 0, DIGITS_MAX) * (255.0 / DIGITS_MAX)).astype(np.uint8)
    return upscale(images)
