"""Write the shipped sample images: Fashion-MNIST test images plus photo-like variants.

    python -m rbn.experiments.sample [OUT_DIR]        # default: samples

``OUT_DIR/fashion-mnist/`` holds the first ``per_class`` test images of every class as 28x28
grayscale PNGs named ``<test index>_<label slug>.png``. ``OUT_DIR/photos/`` holds a few of them
made to look like product photos, to exercise the service's preprocessing: RGB JPEGs at 224x224
with a dark object on a light background, an RGBA PNG (dark object on a transparent background)
and a 16-bit grayscale PNG. Each folder has a ``labels.json``: a list of
``{"file", "label", "label_name", "index"}`` with ``file`` relative to that folder and ``index``
the position in the Fashion-MNIST test split. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from rbn.experiments.data import LABELS, load_split

PHOTO_SIZE = 224
PHOTO_CLASSES = (1, 7, 8)  # Trouser, Sneaker, Bag: the first test image of each gets photo variants
PHOTO_TINT = (1.0, 0.96, 0.90)  # warm paper-white background, so R, G and B differ
JPEG_QUALITY = 90


def slug(label_name: str) -> str:
    """'T-shirt/top' -> 't-shirt-top'."""
    return re.sub(r"[^a-z0-9]+", "-", label_name.lower()).strip("-")


def first_per_class(labels: np.ndarray, per_class: int) -> list[int]:
    """Test indices of the first ``per_class`` images of every class, in index order."""
    picked = [int(i) for c in range(len(LABELS)) for i in np.flatnonzero(labels == c)[:per_class]]
    return sorted(picked)


def _entry(file: str, index: int, label: int) -> dict:
    return {"file": file, "label": label, "label_name": LABELS[label], "index": index}


def _write_labels(folder: Path, entries: list[dict]) -> None:
    (folder / "labels.json").write_text(json.dumps(entries, indent=1) + "\n")


def photo_rgb(image: np.ndarray, size: int = PHOTO_SIZE) -> Image.Image:
    """Product-photo look: upscale, invert to a dark object on a light background, tint to RGB."""
    big = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    inverted = 255.0 - big
    rgb = np.stack([inverted * t for t in PHOTO_TINT], axis=-1)
    return Image.fromarray(np.rint(np.clip(rgb, 0, 255)).astype(np.uint8))


def photo_rgba(image: np.ndarray, size: int = PHOTO_SIZE // 2) -> Image.Image:
    """Dark object on a transparent background: alpha is the ink, colour a dark gray; white where transparent."""
    alpha = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    rgb = np.where(alpha[..., None] > 0, np.uint8(40), np.uint8(255)) * np.ones(3, dtype=np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8))


def gray16(image: np.ndarray) -> Image.Image:
    """The image itself as 16-bit grayscale (value * 257, so 255 -> 65535)."""
    return Image.fromarray(image.astype(np.uint16) * 257)


def write_sample(out_dir: str | os.PathLike, per_class: int = 10) -> list[Path]:
    """Write the sample under ``out_dir`` (see the module docstring); returns the files written."""
    out = Path(out_dir)
    split = load_split("test")
    written: list[Path] = []

    folder = out / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in first_per_class(split.labels, per_class):
        label = int(split.labels[index])
        name = f"{index}_{slug(LABELS[label])}.png"
        Image.fromarray(split.images[index]).save(folder / name, optimize=True)
        entries.append(_entry(name, index, label))
        written.append(folder / name)
    _write_labels(folder, entries)

    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    picks = [int(np.flatnonzero(split.labels == c)[0]) for c in PHOTO_CLASSES]
    variants = [(i, "photo.jpg", photo_rgb) for i in picks] + [
        (picks[0], "alpha.png", photo_rgba),
        (picks[1], "gray16.png", gray16),
    ]
    entries = []
    for index, suffix, make in variants:
        label = int(split.labels[index])
        name = f"{index}_{slug(LABELS[label])}_{suffix}"
        options = {"quality": JPEG_QUALITY} if suffix.endswith(".jpg") else {"optimize": True}
        make(split.images[index]).save(folder / name, **options)
        entries.append(_entry(name, index, label))
        written.append(folder / name)
    _write_labels(folder, entries)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: write the sample to OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="samples", help="output folder (default: samples)")
    parser.add_argument("--per-class", type=int, default=10, help="test images per class (default: 10)")
    args = parser.parse_args(argv)
    files = write_sample(args.out_dir, args.per_class)
    print(f"wrote {len(files)} images under {args.out_dir}")


if __name__ == "__main__":
    main()
