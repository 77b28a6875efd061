"""/ab's server-side corruption of decoded images: rbn's corruption suite (``rbn.contract.corruptions``)
applied per image and channel, each image's random draws keyed by its own pixels."""

from __future__ import annotations

import hashlib

import numpy as np

from rbn.contract.corruptions import corrupt


def content_key(image: np.ndarray) -> int:
    """A 64-bit key of an image's pixels and shape: the same image gives the same key wherever it comes."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=8, person=b"rbn-ab")
    digest.update(repr(image.shape).encode())
    return int.from_bytes(digest.digest(), "little")


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt uint8 (N, C, H, W) images; every channel of an image gets the same random draws.

    An image's random draws come from ``seed`` and its own pixels (``content_key``), never its position
    in the request: the same image gets the same corruption alone, at any index and in any batch size,
    so /ab and ab-eval answer the same for the same image."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        key = content_key(image)
        for c, channel in enumerate(image):
            out[i, c] = corrupt(channel, name, severity, seed, first_index=key)
    return out
