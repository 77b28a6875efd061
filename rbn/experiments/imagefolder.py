"""ImageFolder data: one sub-folder per class (torchvision's layout), read with the bundle's input spec.

``root/<class>/<image>`` is one folder of labelled images; ``root/train/<class>/...`` plus
``root/val/<class>/...`` (or ``test``) is an explicit split. Images go through
``rbn.contract.preprocess.prepare`` -- the service's own steps (JPEG draft decoding, EXIF, RGB,
shorter side, centre crop) -- into uint8 (N, C, H, W), so fitting and evaluating see exactly the
tensors the server feeds the graph. Torch-free (numpy and Pillow).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rbn.contract.bundle import InputSpec
from rbn.contract.preprocess import Normalizer, prepare

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VALIDATION_NAMES = ("val", "validation", "test")


class ImageFolderError(ValueError):
    """The folder is not an ImageFolder or an image cannot be read; the message names it."""


@dataclass
class Images:
    """uint8 (N, C, H, W) images, their class indices and the class names (sorted folder names)."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Images:
        return Images(self.images[index], self.labels[index], self.classes, self.source)

    def normalized(self, spec: InputSpec) -> np.ndarray:
        return Normalizer(spec)(self.images)


def classes_of(root: Path) -> list[str]:
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def files_of(root: Path) -> list[tuple[Path, int]]:
    """(path, class index) for every image file, classes and files in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"{root}: no such folder")
    classes = classes_of(root)
    if len(classes) < 1:
        raise ImageFolderError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    found = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*")) if p.suffix.lower() in EXTENSIONS]
    if not found:
        raise ImageFolderError(f"{root}: no images ({', '.join(EXTENSIONS)}) under its class folders")
    return found


def load(root: str | Path, spec: InputSpec, limit: int | None = None, seed: int = 0) -> Images:
    """Every image under ``root`` (or ``limit`` of them, drawn with ``seed``) prepared for ``spec``."""
    root = Path(root)
    found = files_of(root)
    if limit is not None and limit < len(found):
        pick = np.sort(np.random.default_rng(seed).permutation(len(found))[:limit])
        found = [found[i] for i in pick]
    images = np.empty((len(found), spec.channels, spec.height, spec.width), np.uint8)
    for k, (path, _) in enumerate(found):
        try:
            with Image.open(path) as image:
                images[k] = prepare(image, spec)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise ImageFolderError(f"{path}: cannot read the image ({exc})") from None
    return Images(images, np.array([i for _, i in found], np.int64), classes_of(root), str(root))


def split_folders(root: str | Path) -> tuple[Path, Path] | None:
    """(train, validation) sub-folders when ``root`` holds an explicit split, else None."""
    root = Path(root)
    val = next((root / n for n in VALIDATION_NAMES if (root / n).is_dir()), None)
    return (root / "train", val) if (root / "train").is_dir() and val is not None else None


def load_split(root: str | Path, spec: InputSpec, val_fraction: float = 0.2, seed: int = 0,
               val_root: str | Path | None = None) -> tuple[Images, Images]:
    """(train, validation): ``val_root`` when given, else ``root``'s train/ and val/ sub-folders,
    else a seeded, per-class ``val_fraction`` split of ``root``."""
    if val_root is not None:
        train, val = load(root, spec), load(val_root, spec)
    elif (folders := split_folders(root)) is not None:
        train, val = load(folders[0], spec), load(folders[1], spec)
    else:
        every = load(root, spec)
        rng = np.random.default_rng(seed)
        val_index = np.concatenate([
            rng.permutation(np.flatnonzero(every.labels == c))[: max(1, round(val_fraction * (every.labels == c).sum()))]
            for c in np.unique(every.labels)
        ])
        mask = np.zeros(len(every), bool)
        mask[val_index] = True
        return every.take(np.flatnonzero(~mask)), every.take(np.flatnonzero(mask))
    if train.classes != val.classes:
        raise ImageFolderError(f"{train.source} and {val.source} have different class folders")
    return train, val
