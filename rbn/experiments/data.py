"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (IDX files, read with numpy).

Torch-free, so the service and tests can use it without the training extra.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rbn.contract.bundle import InputSpec
from rbn.contract.preprocess import Normalizer

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "RBN_FASHION_MNIST_DIR"
DEBIAN_PACKAGE = "dataset-fashion-mnist"

LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# Per-pixel statistics of the 60k training images on [0, 1] (tests/rbn/experiments/test_data.py checks them).
MEAN = 0.2860
STD = 0.3530
# The input of every Fashion-MNIST model, as a bundle's model.json declares it.
INPUT = InputSpec(channels=1, height=28, width=28, mean=[MEAN], std=[STD])
_NORMALIZE = Normalizer(INPUT)

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(Exception):
    """The data set is missing or unreadable; the message says what to do."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip or plain) into an array of its declared dtype and shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX payload is {len(raw) - header} bytes, header promises {expected} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8, light object on dark background
    labels: np.ndarray  # (N,) int64


def data_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(DATA_DIR_ENV) or DEFAULT_DIR)


def load_split(split: str, path: str | os.PathLike | None = None) -> Split:
    """Load 'train' (60k) or 't10k'/'test' (10k)."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    root = data_dir(path)
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise DatasetError(
            f"Fashion-MNIST not found in {root}: install Debian's package "
            f"'{DEBIAN_PACKAGE}' (apt-get install {DEBIAN_PACKAGE}) or set {DATA_DIR_ENV}"
        )
    images = read_idx(images_path)
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DatasetError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    return Split(images, labels)


def normalize(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), the models' input: the service's own normalisation
    (rbn.contract.preprocess.Normalizer) with the input spec every Fashion-MNIST bundle declares (``INPUT``)."""
    return _NORMALIZE(images_u8[:, None])
